//! The GEMM behind every convolution kernel (`gemm`, the crate candle
//! uses), with its bounds checked before the crate's `unsafe` calls, and
//! the threading and layout rules the convolution kernels share.

use candle_core::WithDType;

use super::output::Slots;
use super::simd::Real;

/// Columns per thread below which a GEMM on several threads is left to the
/// `gemm` crate's own threading, which splits rows too (for 64x256 blocks of
/// 216 it was the faster one, `gemm_split` example). Blocks this wide
/// (less a cache line) also keep every block off the crate's paths for
/// small products (at most 64 rows and 64 columns, or 256 elements), which
/// block the sum over `k` differently.
const MIN_SPLIT_COLUMNS: usize = 256;

/// Rows below which a GEMM is not split into column blocks (see
/// [`MIN_SPLIT_COLUMNS`]).
const MIN_SPLIT_ROWS: usize = 16;

/// `c[m×n] = (accumulate ? c : 0) + a·b` with `c` given by (slice, row
/// stride; columns contiguous) and `a` `m×k`, `b` `k×n` by (slice, row
/// stride, column stride). Bounds are checked before the calls, which makes
/// the unsafe GEMM calls sound.
///
/// On several threads the columns are split into one contiguous block per
/// thread, each a single-threaded GEMM (every block packs `a` itself). For
/// the one-image GEMMs of a batch-1 forward (ResNet-101 at 224: 256-1024
/// rows, 784 columns) that was 5-25 % faster on 2 cores than the crate's
/// own threading, which synchronises its threads at every block of `k`
/// (alternating rounds of the `gemm_split` example).
/// The result is bit for bit the same: `gemm` sums over `k` in blocks that
/// depend on `k` only, so a column's dot products do not depend on which
/// block it is in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    c: (&mut [T], usize),
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (c, c_rs) = c;
    assert!(
        c_rs >= n && c.len() >= (m - 1) * c_rs + n,
        "gemm: output too small"
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(c_rs)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    run_checked((m, n, k), (c.as_mut_ptr(), c_rs), a, b, accumulate, threads);
}

/// `c = a·b` into a chunk of a kernel's output not yet written, `m×n` with
/// rows contiguous (`c.len() == m·n`), which comes back written; `a`, `b` and
/// `threads` as in [`gemm_into`]. The GEMM writes every value of `c` without
/// reading it: no zero-fill first.
pub(crate) fn gemm_overwrite<'c, T: WithDType>(
    (m, n, k): (usize, usize, usize),
    mut c: Slots<'c, T>,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    threads: usize,
) -> &'c mut [T] {
    assert_eq!(c.len(), m * n, "gemm: output of another size");
    if m == 0 || n == 0 || k == 0 {
        return c.zeroed();
    }
    run_checked((m, n, k), (c.as_mut_ptr(), n), a, b, false, threads);
    // SAFETY: with `accumulate` false the GEMM writes every value of the
    // `m×n` output, rows `n` apart, which is all of `c` (its length is
    // `m·n`, checked above), and reads none of them (`read_dst` false).
    #[allow(unsafe_code)]
    unsafe {
        c.assume_written()
    }
}

/// Checks the operands of a GEMM whose `m×n` output at `c` (row stride
/// `c_rs`) the caller has checked, and runs it, split over `threads`.
fn run_checked<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    (c, c_rs): (*mut T, usize),
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    let (a, a_rs, a_cs) = a;
    let (b, b_rs, b_cs) = b;
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm: rhs out of bounds"
    );
    let raw = RawGemm {
        m,
        k,
        c,
        c_rs,
        a: (a.as_ptr(), a_rs, a_cs),
        b: (b.as_ptr(), b_rs, b_cs),
        accumulate,
    };
    if threads > 1 && n >= MIN_SPLIT_COLUMNS * threads && m >= MIN_SPLIT_ROWS {
        // One block per thread, a whole number of cache lines wide (the last
        // one takes the rest): disjoint parts of `c`.
        let width = n / threads / 16 * 16;
        rayon::scope(|s| {
            for t in 1..threads {
                let cols = t * width..if t + 1 == threads { n } else { (t + 1) * width };
                s.spawn(move |_| raw.run(cols, gemm::Parallelism::None));
            }
            raw.run(0..width, gemm::Parallelism::None);
        });
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        raw.run(0..n, par);
    }
}

/// One GEMM whose operands [`run_checked`] has checked, run over a block of
/// its columns.
#[derive(Clone, Copy)]
struct RawGemm<T> {
    m: usize,
    k: usize,
    c: *mut T,
    c_rs: usize,
    a: (*const T, usize, usize),
    b: (*const T, usize, usize),
    accumulate: bool,
}

// SAFETY: the pointers come from slices (or an output chunk) borrowed for
// the whole of `gemm_into` or `gemm_overwrite` (shared for `a` and `b`,
// exclusive for `c`), and the threads
// that share a `RawGemm` write disjoint column blocks of `c` (`run`).
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for RawGemm<T> {}
#[allow(unsafe_code)]
unsafe impl<T: Sync> Sync for RawGemm<T> {}

impl<T: WithDType> RawGemm<T> {
    /// `c[.., cols] = (accumulate ? c : 0) + a · b[.., cols]`.
    #[allow(unsafe_code)]
    fn run(&self, cols: std::ops::Range<usize>, par: gemm::Parallelism) {
        let (a, a_rs, a_cs) = self.a;
        let (b, b_rs, b_cs) = self.b;
        // SAFETY: `gemm_into` / `gemm_overwrite` checked that the `m×n`
        // output, and `run_checked` that the `m×k` lhs
        // and the `k×n` rhs lie inside their slices; `cols` is inside
        // `0..n`, so the offset pointers and the `cols.len()` columns from
        // them do too. Concurrent calls get disjoint column ranges, so no
        // element of `c` is written by two threads; T is f32 or f64 (checked
        // by the callers).
        unsafe {
            gemm::gemm(
                self.m,
                cols.len(),
                self.k,
                self.c.add(cols.start),
                1,
                self.c_rs as isize,
                self.accumulate,
                a,
                a_cs as isize,
                a_rs as isize,
                b.add(cols.start * b_cs),
                b_cs as isize,
                b_rs as isize,
                T::one(),
                T::one(),
                false,
                false,
                false,
                par,
            )
        }
    }
}

/// Rows of each operand in one register block of [`gemm_abt`]: 4x4 sums,
/// 16 accumulator vectors and 8 operand vectors, within AVX-512's 32
/// registers.
const ABT_ROWS: usize = 4;

/// `c[i][j] += Σ_t a[i][t] · b[j][t]` for `i < m`, `j < n`, `t < k`, with
/// `c`, `a` and `b` given by (slice, row stride) and rows contiguous: the
/// product `A·Bᵀ` of two matrices stored with the summed index contiguous.
///
/// For small outputs with a long sum (the Winograd weight gradient: 24x24
/// per transformed position, summed over ~1000 tiles), where the `gemm`
/// crate ran at ~40 % of the forward GEMMs' speed: its register kernels are
/// 64 rows tall, and 24 rows leave lanes empty in a narrower one that loads
/// more per multiply-add. Here (f32) every multiply-add is a full vector whatever
/// `m` and `n` are: 4x4 sums are accumulated in vector lanes along `t`,
/// then added across lanes.
pub(crate) fn gemm_abt<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    c: (&mut [T], usize),
    a: (&[T], usize),
    b: (&[T], usize),
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let ((c, c_rs), (a, a_rs), (b, b_rs)) = (c, a, b);
    assert!(
        c_rs >= n && c.len() >= (m - 1) * c_rs + n,
        "gemm_abt: output too small"
    );
    assert!(
        a_rs >= k && a.len() >= (m - 1) * a_rs + k,
        "gemm_abt: lhs too small"
    );
    assert!(
        b_rs >= k && b.len() >= (n - 1) * b_rs + k,
        "gemm_abt: rhs too small"
    );
    for i0 in (0..m).step_by(ABT_ROWS) {
        // Past the last row, a block repeats it (sums not written back).
        let ra: [&[T]; ABT_ROWS] = std::array::from_fn(|r| &a[(i0 + r).min(m - 1) * a_rs..][..k]);
        for j0 in (0..n).step_by(ABT_ROWS) {
            let rb: [&[T]; ABT_ROWS] =
                std::array::from_fn(|s| &b[(j0 + s).min(n - 1) * b_rs..][..k]);
            let sums = T::dot_block(ra, rb);
            for r in 0..ABT_ROWS.min(m - i0) {
                for s in 0..ABT_ROWS.min(n - j0) {
                    c[(i0 + r) * c_rs + j0 + s] += sums[r * ABT_ROWS + s];
                }
            }
        }
    }
}

/// The 4x4 dot products `Σ_t a[r][t] · b[s][t]` of [`gemm_abt`], row-major,
/// in plain code: f64's (the tests' type, never timed).
pub(crate) fn dot_block<T: WithDType>(
    a: [&[T]; ABT_ROWS],
    b: [&[T]; ABT_ROWS],
) -> [T; ABT_ROWS * ABT_ROWS] {
    std::array::from_fn(|i| {
        let (r, s) = (i / ABT_ROWS, i % ABT_ROWS);
        a[r].iter()
            .zip(b[s])
            .fold(T::zero(), |acc, (&x, &y)| acc + x * y)
    })
}

/// [`dot_block`] for f32 with explicit SIMD: 16 accumulator vectors in
/// registers, fused multiply-adds. (Written with arrays indexed in loops,
/// the compiler kept the sums in memory, stored at every step.)
pub(crate) struct DotBlockF32<'a> {
    pub(crate) a: [&'a [f32]; ABT_ROWS],
    pub(crate) b: [&'a [f32]; ABT_ROWS],
}

impl pulp::WithSimd for DotBlockF32<'_> {
    type Output = [f32; ABT_ROWS * ABT_ROWS];

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
        // No closures here (`map`, `from_fn`): they are compiled apart,
        // without the instruction set, and the SIMD calls in them are not
        // inlined (the lane sums cost as much as the products).
        let [a0, a1, a2, a3] = self.a;
        let [b0, b1, b2, b3] = self.b;
        let (a0, a0t) = S::as_simd_f32s(a0);
        let len = a0.len();
        let (a1, a1t) = S::as_simd_f32s(a1);
        let (a2, a2t) = S::as_simd_f32s(a2);
        let (a3, a3t) = S::as_simd_f32s(a3);
        let (b0, b0t) = S::as_simd_f32s(b0);
        let (b1, b1t) = S::as_simd_f32s(b1);
        let (b2, b2t) = S::as_simd_f32s(b2);
        let (b3, b3t) = S::as_simd_f32s(b3);
        let (a1, a2, a3) = (&a1[..len], &a2[..len], &a3[..len]);
        let (b0, b1, b2, b3) = (&b0[..len], &b1[..len], &b2[..len], &b3[..len]);
        let mut acc = [simd.splat_f32s(0.0); ABT_ROWS * ABT_ROWS];
        for t in 0..len {
            let x = [a0[t], a1[t], a2[t], a3[t]];
            let y = [b0[t], b1[t], b2[t], b3[t]];
            fma4x4(simd, &mut acc, x, y);
        }
        if !a0t.is_empty() {
            // The last partial vector, zero-padded.
            let x = [
                simd.partial_load_f32s(a0t),
                simd.partial_load_f32s(a1t),
                simd.partial_load_f32s(a2t),
                simd.partial_load_f32s(a3t),
            ];
            let y = [
                simd.partial_load_f32s(b0t),
                simd.partial_load_f32s(b1t),
                simd.partial_load_f32s(b2t),
                simd.partial_load_f32s(b3t),
            ];
            fma4x4(simd, &mut acc, x, y);
        }
        let mut sums = [0f32; ABT_ROWS * ABT_ROWS];
        for (sum, v) in sums.iter_mut().zip(acc) {
            *sum = simd.reduce_sum_f32s(v);
        }
        sums
    }
}

/// `acc[4r + s] += x[r] ⊙ y[s]`.
#[inline(always)]
fn fma4x4<S: pulp::Simd>(
    simd: S,
    acc: &mut [S::f32s; ABT_ROWS * ABT_ROWS],
    x: [S::f32s; ABT_ROWS],
    y: [S::f32s; ABT_ROWS],
) {
    for r in 0..ABT_ROWS {
        for s in 0..ABT_ROWS {
            acc[r * ABT_ROWS + s] = simd.mul_add_f32s(x[r], y[s], acc[r * ABT_ROWS + s]);
        }
    }
}

/// Threads for GEMMs inside one image: all of them when the batch is too
/// small to keep every core busy, else one (images run in parallel).
pub(crate) fn inner_threads(images: usize) -> usize {
    let t = rayon::current_num_threads();
    if images >= t {
        1
    } else {
        t
    }
}

/// Row stride of a column matrix with `ohw` columns: rounded up to a cache
/// line, plus one line. With rows exactly `ohw` long, a 32x32 image's rows
/// are 4 KiB apart and every element of a column (what the GEMM kernels and
/// their packing read together) falls into the same few cache sets; the
/// padding (never read) spreads them. Only the layout changes: the results
/// are bit for bit those of unpadded rows.
pub(crate) fn col_ld(ohw: usize) -> usize {
    ohw.next_multiple_of(16) + 16
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    /// Column blocks on several threads give the single-threaded result bit
    /// for bit, with strided operands, a partial last block and accumulation.
    #[test]
    fn column_blocks_match_one_thread_bit_for_bit() {
        let (m, n, k) = (37, 4 * MIN_SPLIT_COLUMNS + 45, 530);
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        // `a` stored column-major (row stride 1, column stride m).
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n + 7).map(|i| val(i + 3)).collect();
        let ldc = n + 5;
        let start: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
        let run = |threads: usize, accumulate: bool| {
            let mut c = start.clone();
            gemm_into(
                m,
                n,
                k,
                (&mut c, ldc),
                (&a, 1, m),
                (&b, n, 1),
                accumulate,
                threads,
            );
            c
        };
        for accumulate in [false, true] {
            let one = run(1, accumulate);
            for threads in [2, 3, 4] {
                let many = run(threads, accumulate);
                assert!(
                    one.iter()
                        .zip(&many)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{threads} threads, accumulate {accumulate}"
                );
            }
            // Untouched padding between rows.
            assert_eq!(one[n..ldc], start[n..ldc]);
        }
    }

    /// `gemm_overwrite` into unwritten output chunks gives `gemm_into`'s
    /// result bit for bit (one and several threads, column splits), and
    /// zeros when the sum is empty.
    #[test]
    fn overwriting_unwritten_chunks_matches_gemm_into() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        for (m, n, k, threads) in [
            (5, 7, 3, 1),
            (37, 2 * MIN_SPLIT_COLUMNS + 45, 70, 2),
            (16, 300, 24, 2),
            (3, 4, 0, 1),
        ] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 3)).collect();
            let mut want = vec![f32::NAN; 2 * m * n];
            for c in want.chunks_exact_mut(m * n) {
                gemm_into(m, n, k, (c, n), (&a, k, 1), (&b, n, 1), false, threads);
            }
            let got = super::super::output::output::<f32>(2 * m * n, m * n, |chunks| {
                chunks.for_each(|c| {
                    gemm_overwrite((m, n, k), c, (&a, k, 1), (&b, n, 1), threads);
                })
            });
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{n}x{k} on {threads} threads"
            );
        }
    }

    /// `gemm_abt` adds `A·Bᵀ` to `c` within f32 rounding of an f64 sum, for
    /// shapes that leave partial register blocks and a partial last vector,
    /// with row strides longer than the rows; f64 goes through the plain
    /// loop and must agree closely. Padding between rows is untouched.
    #[test]
    fn abt_matches_a_naive_product() {
        let val = |i: usize| ((i * 7919) % 1013) as f64 / 1013.0 - 0.5;
        for (m, n, k) in [(1, 1, 1), (4, 4, 16), (24, 24, 816), (5, 7, 37), (3, 9, 15)] {
            let (a_rs, b_rs, c_rs) = (k + 3, k + 1, n + 2);
            let a: Vec<f64> = (0..m * a_rs).map(val).collect();
            let b: Vec<f64> = (0..n * b_rs).map(|i| val(i + 5)).collect();
            let c0: Vec<f64> = (0..m * c_rs).map(|i| val(i + 9)).collect();
            let mut want = c0.clone();
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|t| a[i * a_rs + t] * b[j * b_rs + t]).sum();
                    want[i * c_rs + j] += dot;
                }
            }
            let mut c = c0.clone();
            gemm_abt(m, n, k, (&mut c, c_rs), (&a, a_rs), (&b, b_rs));
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (a32, b32) = (f(&a), f(&b));
            let mut c32 = f(&c0);
            gemm_abt(m, n, k, (&mut c32, c_rs), (&a32, a_rs), (&b32, b_rs));
            for i in 0..m {
                for j in 0..c_rs {
                    let at = i * c_rs + j;
                    if j >= n {
                        assert_eq!(c[at], c0[at], "f64 padding at ({i}, {j})");
                        assert_eq!(c32[at], c0[at] as f32, "f32 padding at ({i}, {j})");
                        continue;
                    }
                    let scale = 1.0 + (k as f64).sqrt();
                    assert!(
                        (c[at] - want[at]).abs() < 1e-12 * scale,
                        "f64 {m}x{n}x{k} ({i}, {j})"
                    );
                    assert!(
                        (c32[at] as f64 - want[at]).abs() < 1e-5 * scale,
                        "f32 {m}x{n}x{k} ({i}, {j}): {} vs {}",
                        c32[at],
                        want[at]
                    );
                }
            }
        }
    }
}
