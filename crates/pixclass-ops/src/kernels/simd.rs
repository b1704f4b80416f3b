//! Vectorisation helpers for the CPU kernels: [`vectorized`] runs a closure
//! compiled for the best instruction set this CPU has (AVX-512 or AVX2+FMA
//! on x86-64, detected at run time through `pulp`, the crate `gemm` uses), and
//! [`Real::exp_fast`] is an `exp` written so that loops over it vectorise.
//!
//! The closure and everything it calls must be inlined for the wider
//! instructions to be used, so the kernels mark the closure itself
//! `#[inline(always)]` (otherwise it may be compiled on its own, for the
//! baseline instruction set) and keep their hot loops inside it or in
//! `#[inline(always)]` helpers.

use candle_core::WithDType;

/// Runs `f` with the widest SIMD instruction set the CPU supports enabled.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Runs `op` compiled for AVX2+FMA where the CPU has it, even when it also
/// has AVX-512 (elsewhere: the best instruction set, as [`vectorized`]).
/// For loops that AVX-512 would compile into a scatter: `vscatterqps` is
/// microcoded on Zen 4, and col2im's stride-2 scatter-add spent 22 % of a
/// stride-2 layer's three passes in it; AVX2 has no scatter, so the loop
/// stays plain loads and stores.
#[inline(always)]
pub(crate) fn dispatch_without_scatter<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return pulp::Simd::vectorize(simd, op);
    }
    pulp::Arch::new().dispatch(op)
}

/// Independent accumulators of [`lane_sums2`]: 16 f64,
/// four AVX2 vectors or two AVX-512 ones (enough to hide the latency of the
/// additions).
const LANES: usize = 16;

/// `(Σ f(a_i, b_i).0, Σ f(a_i, b_i).1)` over zipped slices (the shorter
/// length) in f64, over [`LANES`] interleaved accumulators that are added
/// in a fixed order at the end. A plain sequential sum cannot be reordered
/// by the compiler and runs one element per add latency; here the lanes'
/// additions overlap, and the loop (compiled for the CPU's widest
/// instruction set) vectorises where `f` has no branch. The order of
/// additions does not depend on the instruction set or the number of
/// threads, so neither does the result.
#[inline(always)]
pub(crate) fn lane_sums2<A: Copy, B: Copy, F: Fn(A, B) -> (f64, f64)>(
    a: &[A],
    b: &[B],
    f: F,
) -> (f64, f64) {
    pulp::Arch::new().dispatch(LaneSums { a, b, f })
}

/// The loop of [`lane_sums2`]. Its `with_simd` is always inlined into pulp's
/// dispatch, which compiles it for the detected instruction set (a closure
/// passed to [`vectorized`] is inlined only when the compiler chooses to).
struct LaneSums<'a, A, B, F> {
    a: &'a [A],
    b: &'a [B],
    f: F,
}

impl<A: Copy, B: Copy, F: Fn(A, B) -> (f64, f64)> pulp::WithSimd for LaneSums<'_, A, B, F> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> (f64, f64) {
        let Self { a, b, f } = self;
        let len = a.len().min(b.len());
        let (a, b) = (&a[..len], &b[..len]);
        let (mut s0, mut s1) = ([0f64; LANES], [0f64; LANES]);
        for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
            for j in 0..LANES {
                let (u, v) = f(ca[j], cb[j]);
                s0[j] += u;
                s1[j] += v;
            }
        }
        let tail = len - len % LANES;
        for (j, (&x, &y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
            let (u, v) = f(x, y);
            s0[j] += u;
            s1[j] += v;
        }
        let total = |s: [f64; LANES]| s.iter().fold(0.0, |acc, v| acc + v);
        (total(s0), total(s1))
    }
}

/// Vectors per f32 partial sum of [`MaskedSumsF32`] (128 values with AVX2,
/// 256 with AVX-512):
/// each vector lane adds 16 values in f32 before the block's sum goes into
/// an f64 total, which keeps the rounding error near f32's own (~1e-7).
const BLOCK: usize = 16;

/// [`Real::relu_masked_sums`] for f32 with explicit SIMD: the ReLU mask is a
/// vector select. Written as plain code, the compiler turns the mask into
/// a branch per value, mispredicted half the time (~4 ns per value, measured
/// as 8 % of a colourization training step).
struct MaskedSumsF32<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    a: f32,
    b: f32,
    relu: bool,
    center: f64,
}

impl pulp::WithSimd for MaskedSumsF32<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> (f64, f64) {
        let len = self.x.len().min(self.dy.len());
        let (xs, x_tail) = S::as_simd_f32s(&self.x[..len]);
        let (ds, d_tail) = S::as_simd_f32s(&self.dy[..len]);
        let zero = simd.splat_f32s(0.0);
        let (a, b) = (simd.splat_f32s(self.a), simd.splat_f32s(self.b));
        let c32 = self.center as f32;
        let c = simd.splat_f32s(c32);
        let (mut s, mut sx) = (0f64, 0f64);
        for (bx, bd) in xs.chunks(BLOCK).zip(ds.chunks(BLOCK)) {
            let (mut bs, mut bsx) = (zero, zero);
            for (&xv, &dv) in bx.iter().zip(bd) {
                let d = if self.relu {
                    let y = simd.add_f32s(simd.mul_f32s(xv, a), b);
                    simd.select_f32s(simd.greater_than_f32s(y, zero), dv, zero)
                } else {
                    dv
                };
                bs = simd.add_f32s(bs, d);
                bsx = simd.add_f32s(bsx, simd.mul_f32s(d, simd.sub_f32s(xv, c)));
            }
            s += f64::from(simd.reduce_sum_f32s(bs));
            sx += f64::from(simd.reduce_sum_f32s(bsx));
        }
        for (&xv, &dv) in x_tail.iter().zip(d_tail) {
            let d = if !self.relu || xv * self.a + self.b > 0.0 {
                dv
            } else {
                0.0
            };
            s += f64::from(d);
            sx += f64::from(d * (xv - c32));
        }
        (s, sx)
    }
}

/// [`Real::shifted_sums`] for f32 with explicit SIMD.
struct ShiftedSumsF32<'a> {
    x: &'a [f32],
    center: f64,
}

impl pulp::WithSimd for ShiftedSumsF32<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> (f64, f64) {
        let (xs, tail) = S::as_simd_f32s(self.x);
        let c32 = self.center as f32;
        let c = simd.splat_f32s(c32);
        let zero = simd.splat_f32s(0.0);
        let (mut s, mut s2) = (0f64, 0f64);
        for block in xs.chunks(BLOCK) {
            let (mut bs, mut bs2) = (zero, zero);
            for &xv in block {
                let d = simd.sub_f32s(xv, c);
                bs = simd.add_f32s(bs, d);
                bs2 = simd.mul_add_f32s(d, d, bs2);
            }
            s += f64::from(simd.reduce_sum_f32s(bs));
            s2 += f64::from(simd.reduce_sum_f32s(bs2));
        }
        for &xv in tail {
            let d = xv - c32;
            s += f64::from(d);
            s2 += f64::from(d * d);
        }
        (s, s2)
    }
}

/// `first[j] = src[2j]` and `second[j] = src[2j + 1]` for every `j` below
/// `first.len()` (`second` as long, `src` at least twice as long): a row's
/// even and odd values. Fixed chunks of 16 pairs, then of 8, which the
/// compiler turns into vector shuffles; a loop over pairs runs one value at
/// a time on the rows here (16 or 32 values: too short for the vectorised
/// body of a variable-length loop).
#[inline(always)]
pub(crate) fn deinterleave<T: Copy>(src: &[T], first: &mut [T], second: &mut [T]) {
    let n = first.len();
    let (src, second) = (&src[..2 * n], &mut second[..n]);
    let mut done = deinterleave_chunks::<T, 16, 32>(src, first, second);
    done +=
        deinterleave_chunks::<T, 8, 16>(&src[2 * done..], &mut first[done..], &mut second[done..]);
    for j in done..n {
        first[j] = src[2 * j];
        second[j] = src[2 * j + 1];
    }
}

/// [`deinterleave`] over the whole chunks of `B` pairs (`B2 = 2·B` values);
/// the pairs done.
#[inline(always)]
fn deinterleave_chunks<T: Copy, const B: usize, const B2: usize>(
    src: &[T],
    first: &mut [T],
    second: &mut [T],
) -> usize {
    const { assert!(B2 == 2 * B) };
    let chunks = first.len() / B;
    for ((s, a), b) in src[..chunks * B2]
        .chunks_exact(B2)
        .zip(first.chunks_exact_mut(B))
        .zip(second.chunks_exact_mut(B))
    {
        let s: &[T; B2] = s.try_into().expect("chunks of B2 values");
        // Split into local arrays, then stored whole (see
        // `interleave_chunks`).
        let (mut even, mut odd) = ([s[0]; B], [s[0]; B]);
        for j in 0..B {
            even[j] = s[2 * j];
            odd[j] = s[2 * j + 1];
        }
        a.copy_from_slice(&even);
        b.copy_from_slice(&odd);
    }
    chunks * B
}

/// `dst[2j] = f(first[j])` and `dst[2j + 1] = f(second[j])` for every `j`
/// below `first.len()` (`second` as long, `dst` at least twice as long):
/// the inverse of [`deinterleave`], in the same chunks.
#[inline(always)]
pub(crate) fn interleave<T: Copy>(dst: &mut [T], first: &[T], second: &[T], f: impl Fn(T) -> T) {
    let n = first.len();
    let (dst, second) = (&mut dst[..2 * n], &second[..n]);
    let mut done = interleave_chunks::<T, 16, 32>(dst, first, second, &f);
    done +=
        interleave_chunks::<T, 8, 16>(&mut dst[2 * done..], &first[done..], &second[done..], &f);
    for j in done..n {
        dst[2 * j] = f(first[j]);
        dst[2 * j + 1] = f(second[j]);
    }
}

/// [`interleave`] over the whole chunks of `B` pairs; the pairs done.
#[inline(always)]
fn interleave_chunks<T: Copy, const B: usize, const B2: usize>(
    dst: &mut [T],
    first: &[T],
    second: &[T],
    f: &impl Fn(T) -> T,
) -> usize {
    const { assert!(B2 == 2 * B) };
    let chunks = first.len() / B;
    for ((d, a), b) in dst[..chunks * B2]
        .chunks_exact_mut(B2)
        .zip(first.chunks_exact(B))
        .zip(second.chunks_exact(B))
    {
        let a: &[T; B] = a.try_into().expect("chunks of B values");
        let b: &[T; B] = b.try_into().expect("chunks of B values");
        // Built in a local array, then stored whole: interleaving straight
        // into `d` compiled to one scalar load and store per value inside
        // the large kernels that call this (col2im's merge, the Winograd
        // transforms); the local array compiles to vector code (shuffles,
        // or AVX-512 gathers in the Winograd output transform, where `f`
        // adds the bias: measured no slower than the shuffle variants).
        let mut pairs = [a[0]; B2];
        for j in 0..B {
            pairs[2 * j] = f(a[j]);
            pairs[2 * j + 1] = f(b[j]);
        }
        d.copy_from_slice(&pairs);
    }
    chunks * B
}

/// The floating-point element types the kernels work in (f32, f64).
pub(crate) trait Real: WithDType {
    /// `exp(self)`: f64 uses the standard library; f32 a branch-free
    /// polynomial (Cephes `expf`, relative error below 2e-7) that vectorises.
    /// NaN stays NaN; results below ~1e-38 are not denormal-exact.
    fn exp_fast(self) -> Self;

    /// Whether `self` is NaN.
    fn is_nan_(self) -> bool;

    /// `ln(1 + self)` for `self` in `[0, 1]` (a softplus's tail, `self =
    /// exp(-|x|)`): f64 uses the standard library's `ln_1p`; f32 the series
    /// `2·atanh(s)`, `s = self / (2 + self)` in `[0, 1/3]`, to `s¹³` (the
    /// terms left out are below 1.5e-8 of the sum; a few ulp in all), branch
    /// free so that it vectorises.
    fn ln_1p_unit(self) -> Self;

    /// `(Σ (x_i - center), Σ (x_i - center)²)`, accumulated in f64 (f32:
    /// in f32 vectors over blocks of [`BLOCK`] vectors, each block's sums
    /// added in f64, as [`Real::relu_masked_sums`]; converting every value
    /// to f64 cost twice as much). The per-channel sums and statistics.
    fn shifted_sums(x: &[Self], center: f64) -> (f64, f64);

    /// The 4x4 dot products `Σ_t a[r][t] · b[s][t]` (row-major) of
    /// [`super::gemm::gemm_abt`]; all rows have the same length.
    fn dot_block(a: [&[Self]; 4], b: [&[Self]; 4]) -> [Self; 16];

    /// `(Σ d_i, Σ d_i·(x_i - center))` over zipped slices, where `d_i` is
    /// `dy_i` masked by a ReLU: `dy_i` where `!relu` or `x_i·a + b > 0`
    /// (computed as a product and a sum in the element type, exactly like
    /// the forward's output), else 0. The BatchNorm backward sums.
    fn relu_masked_sums(
        x: &[Self],
        dy: &[Self],
        a: Self,
        b: Self,
        relu: bool,
        center: f64,
    ) -> (f64, f64);
}

impl Real for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    #[inline(always)]
    fn ln_1p_unit(self) -> f64 {
        self.ln_1p()
    }

    #[inline(always)]
    fn is_nan_(self) -> bool {
        self.is_nan()
    }

    fn shifted_sums(x: &[f64], center: f64) -> (f64, f64) {
        lane_sums2(x, x, |v, _| {
            let d = v - center;
            (d, d * d)
        })
    }

    fn dot_block(a: [&[f64]; 4], b: [&[f64]; 4]) -> [f64; 16] {
        super::gemm::dot_block(a, b)
    }

    fn relu_masked_sums(
        x: &[f64],
        dy: &[f64],
        a: f64,
        b: f64,
        relu: bool,
        center: f64,
    ) -> (f64, f64) {
        lane_sums2(x, dy, |xv, dv| {
            let d = if !relu || xv * a + b > 0.0 { dv } else { 0.0 };
            (d, d * (xv - center))
        })
    }
}

impl Real for f32 {
    fn relu_masked_sums(
        x: &[f32],
        dy: &[f32],
        a: f32,
        b: f32,
        relu: bool,
        center: f64,
    ) -> (f64, f64) {
        pulp::Arch::new().dispatch(MaskedSumsF32 {
            x,
            dy,
            a,
            b,
            relu,
            center,
        })
    }

    #[inline(always)]
    fn is_nan_(self) -> bool {
        self.is_nan()
    }

    fn shifted_sums(x: &[f32], center: f64) -> (f64, f64) {
        pulp::Arch::new().dispatch(ShiftedSumsF32 { x, center })
    }

    fn dot_block(a: [&[f32]; 4], b: [&[f32]; 4]) -> [f32; 16] {
        pulp::Arch::new().dispatch(super::gemm::DotBlockF32 { a, b })
    }

    #[inline(always)]
    fn ln_1p_unit(self) -> f32 {
        let s = self / (2.0 + self);
        let s2 = s * s;
        let p = 1.0 / 13.0;
        let p = p * s2 + 1.0 / 11.0;
        let p = p * s2 + 1.0 / 9.0;
        let p = p * s2 + 1.0 / 7.0;
        let p = p * s2 + 1.0 / 5.0;
        let p = p * s2 + 1.0 / 3.0;
        let p = p * s2 + 1.0;
        2.0 * s * p
    }

    #[inline(always)]
    fn exp_fast(self) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        // ln 2 split in a part exact in f32 and the remainder (Cody-Waite).
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Round-to-nearest through the 1.5·2^23 magic number (no libm call).
        const MAGIC: f32 = 12_582_912.0;
        // Comparisons keep NaN (they are false for it).
        let x = if self > 88.722_83 { 88.722_83 } else { self };
        let x = if x < -87.336_55 { -87.336_55 } else { x };
        // t = n + MAGIC exactly: every t lies in [2^23, 2^24), where the
        // low mantissa bits count n up from MAGIC's, so n is an integer
        // difference of bit patterns (no float-to-int conversion, whose
        // saturating semantics keep the loop from vectorising).
        let t = x * LOG2E + MAGIC;
        let n = t - MAGIC;
        let r = x - n * LN2_HI - n * LN2_LO;
        let r2 = r * r;
        let p = 1.987_569_1e-4_f32;
        let p = p * r + 1.398_2e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 0.5;
        let y = p * r2 + r + 1.0;
        // 2^n through the exponent bits; n is in [-126, 128] after clamping,
        // and 2^128 is split so that the bit pattern stays finite.
        let n = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
        let half = n >> 1;
        let s1 = f32::from_bits(((half + 127) as u32) << 23);
        let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
        y * s1 * s2
    }
}

/// Independent multiply-add chains of [`peak_gflops`]: enough to cover the
/// FMA latency on two pipes (4 cycles x 2), few enough to stay in registers.
const CHAINS: usize = 12;

/// The f32 multiply-add throughput of this machine on all the kernels'
/// threads, measured, in GFLOP/s: every thread runs [`CHAINS`] independent
/// FMA chains in registers, in the widest instruction set the kernels use,
/// for about 50 ms; the best of three tries. This is the ceiling the
/// convolution kernels are measured against: the clock the CPU really runs
/// at (turbo included) rather than its nominal one.
pub(crate) fn peak_gflops() -> f64 {
    const ROUNDS: usize = 1 << 22;
    let mut best = 0f64;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let per_thread =
            rayon::broadcast(|_| pulp::Arch::new().dispatch(FmaChains { rounds: ROUNDS }));
        let secs = t.elapsed().as_secs_f64();
        let flop: f64 = per_thread.iter().map(|&(flop, _)| flop).sum();
        // Use the chains' values so the loop cannot be left out.
        assert!(per_thread.iter().all(|&(_, v)| v.is_finite()));
        best = best.max(flop / secs / 1e9);
    }
    best
}

/// The loop of [`peak_gflops`]: (FLOP done, a value computed from them).
struct FmaChains {
    rounds: usize,
}

impl pulp::WithSimd for FmaChains {
    type Output = (f64, f32);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) -> (f64, f32) {
        let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
        let (a, b) = (s.splat_f32s(0.999_999), s.splat_f32s(1e-7));
        let mut acc = [s.splat_f32s(1.0); CHAINS];
        for _ in 0..self.rounds {
            for x in &mut acc {
                *x = s.mul_add_f32s(*x, a, b);
            }
        }
        let value = acc.iter().map(|&x| s.reduce_sum_f32s(x)).sum();
        ((2 * CHAINS * lanes * self.rounds) as f64, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_splits_and_joins_every_length() {
        for n in 0..=40usize {
            let src: Vec<f64> = (0..2 * n + 1).map(|i| i as f64).collect();
            let (mut first, mut second) = (vec![-1.0; n], vec![-1.0; n]);
            deinterleave(&src, &mut first, &mut second);
            let want_first: Vec<f64> = (0..n).map(|j| (2 * j) as f64).collect();
            let want_second: Vec<f64> = (0..n).map(|j| (2 * j + 1) as f64).collect();
            assert_eq!((&first, &second), (&want_first, &want_second), "{n} pairs");
            let mut joined = vec![-1.0; 2 * n + 1];
            interleave(&mut joined, &first, &second, |v| v + 0.5);
            let want: Vec<f64> = (0..2 * n).map(|i| i as f64 + 0.5).chain([-1.0]).collect();
            assert_eq!(joined, want, "{n} pairs joined");
        }
    }

    #[test]
    fn exp_fast_matches_std_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (x.exp_fast() as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(0f32.exp_fast(), 1.0);
        assert!(f32::NAN.exp_fast().is_nan());
        assert!(f32::NEG_INFINITY.exp_fast() < 1e-37);
        assert!((1f32.exp_fast() - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn ln_1p_unit_matches_std_ln_1p() {
        let mut worst = 0f64;
        // A dense grid of [0, 1], and e = exp(-|x|) of large margins.
        let grid = (0..=100_000).map(|i| i as f32 / 100_000.0);
        let tiny = (1..=80).map(|k| (-(k as f32)).exp());
        for e in grid.chain(tiny) {
            let (got, want) = (f64::from(e.ln_1p_unit()), f64::from(e).ln_1p());
            if want > 0.0 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(0f32.ln_1p_unit(), 0.0);
        assert!((1f32.ln_1p_unit() - std::f32::consts::LN_2).abs() < 1e-7);
        assert!(f32::NAN.ln_1p_unit().is_nan());
        assert_eq!(0.25f64.ln_1p_unit(), 0.25f64.ln_1p());
    }

    #[test]
    fn lane_sums_match_sequential_sums() {
        // Lengths around multiples of the lane count, integer-valued data
        // (exact in f64 whatever the order of additions).
        for len in [0, 1, 15, 16, 17, 100, 1024, 1031] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 5) % 11) as f32).collect();
            let want0: f64 = a.iter().map(|&x| f64::from(x)).sum();
            let want1: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x * y)).sum();
            let got = lane_sums2(&a, &b, |x, y| (f64::from(x), f64::from(x * y)));
            assert_eq!(got, (want0, want1), "len {len}");
        }
        // Rounding: the lanes keep more precision than one running f32-like
        // sum would, and stay close to the exact sum of non-integer data.
        let v: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.37).sin()).collect();
        let exact: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let got = f64::shifted_sums(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), 0.0).0;
        assert!((got - exact).abs() < 1e-9, "{got} vs {exact}");
    }

    #[test]
    fn shifted_sums_agree_between_f32_and_f64() {
        // Lengths that leave SIMD tails and span several blocks; data with a
        // large mean (1000 + noise), where a shift far from it would lose
        // the spread: the sums of (x - c) and (x - c)² for c a sample.
        for len in [0usize, 1, 7, 16, 17, 257, 1000, 4099] {
            let x: Vec<f32> = (0..len)
                .map(|i| 1000.0 + ((i as f32) * 0.731).sin())
                .collect();
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            for center in [0.0, 1000.25] {
                let got = f32::shifted_sums(&x, center);
                let want = f64::shifted_sums(&x64, center);
                let exact = x64.iter().fold((0.0, 0.0), |acc, &v| {
                    (acc.0 + (v - center), acc.1 + (v - center) * (v - center))
                });
                for (g, w, e, what) in [
                    (got.0, want.0, exact.0, "sum"),
                    (got.1, want.1, exact.1, "squares"),
                ] {
                    let scale = e.abs().max(1.0);
                    assert!(
                        (w - e).abs() < 1e-12 * scale,
                        "f64 {what} len {len} c {center}"
                    );
                    assert!(
                        (g - e).abs() < 2e-6 * scale,
                        "f32 {what} len {len} c {center}: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn relu_masked_sums_agree_between_f32_and_f64() {
        // Lengths that leave SIMD tails and span several blocks; a mask that
        // changes from value to value.
        for len in [0usize, 7, 8, 9, 129, 1000, 4099] {
            let x: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.731).sin() + 0.3).collect();
            let dy: Vec<f32> = (0..len).map(|i| ((i as f32) * 1.37).cos()).collect();
            let (a, b, center) = (1.7f32, -0.4f32, 0.25);
            for relu in [false, true] {
                let got = f32::relu_masked_sums(&x, &dy, a, b, relu, center);
                // Reference in f64 with the mask computed in f32 like the kernel.
                let (mut s, mut sx) = (0f64, 0f64);
                for (&xv, &dv) in x.iter().zip(&dy) {
                    if !relu || xv * a + b > 0.0 {
                        s += f64::from(dv);
                        sx += f64::from(dv) * (f64::from(xv) - center);
                    }
                }
                let scale: f64 = dy.iter().map(|d| f64::from(d.abs())).sum::<f64>() + 1.0;
                assert!(
                    (got.0 - s).abs() < 1e-6 * scale,
                    "len {len} relu {relu}: {got:?} vs {s}"
                );
                assert!(
                    (got.1 - sx).abs() < 1e-6 * scale,
                    "len {len} relu {relu}: {got:?} vs {sx}"
                );
                let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                let d64: Vec<f64> = dy.iter().map(|&v| f64::from(v)).collect();
                let r64 = f64::relu_masked_sums(&x64, &d64, 1.7, -0.4, relu, center);
                if !relu {
                    assert!((r64.0 - s).abs() < 1e-9 * scale && (r64.1 - sx).abs() < 1e-9 * scale);
                }
            }
        }
        // The mask really masks: every value dead gives zeros.
        let x = vec![-1f32; 100];
        let dy = vec![3f32; 100];
        assert_eq!(
            f32::relu_masked_sums(&x, &dy, 1.0, 0.0, true, 0.0),
            (0.0, 0.0)
        );
        assert_eq!(
            f32::relu_masked_sums(&x, &dy, 1.0, 0.0, false, 0.0),
            (300.0, -300.0)
        );
    }

    #[test]
    fn vectorized_runs_the_closure() {
        let input: Vec<f32> = (0..1000).map(|i| i as f32 * -0.01).collect();
        let mut v = input.clone();
        vectorized(|| v.iter_mut().for_each(|x| *x = x.exp_fast()));
        for (i, x) in v.iter().enumerate() {
            let want = f64::from(input[i]).exp();
            assert!(
                ((*x as f64 - want) / want).abs() < 3e-7,
                "{i}: {x} vs {want}"
            );
        }
    }
}
