//! Max-pooling (window = stride, and strided/padded windows) and nearest
//! upsampling, with exact gradients: the pooling gradient goes to the first
//! maximum of each window like PyTorch's; the upsampling gradient sums each
//! block and accumulates with other uses of its input.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::simd::{deinterleave, interleave, vectorized};
use super::{contiguous_slice, dims4, dispatch, zeros};

/// Max pooling with window and stride `k`; the gradient goes to the first
/// maximum of each window (row-major), like PyTorch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool(pub usize);

fn argmax_window<T: WithDType>(plane: &[T], w: usize, k: usize, oy: usize, ox: usize) -> usize {
    let mut best = oy * k * w + ox * k;
    for dy in 0..k {
        for dx in 0..k {
            let i = (oy * k + dy) * w + ox * k + dx;
            if plane[i] > plane[best] {
                best = i;
            }
        }
    }
    best
}

/// Position (0..4, row-major) and value of the first maximum of a 2x2
/// window `[a, b; c, d]`: the same comparisons, in the same order, as
/// [`argmax_window`].
#[inline(always)]
fn argmax2x2<T: WithDType>(a: T, b: T, c: T, d: T) -> (usize, T) {
    let (mut best, mut m) = (0, a);
    if b > m {
        (best, m) = (1, b);
    }
    if c > m {
        (best, m) = (2, c);
    }
    if d > m {
        (best, m) = (3, d);
    }
    (best, m)
}

fn maxpool_fwd<T: WithDType>(x: &[T], h: usize, w: usize, k: usize) -> Vec<T> {
    let (ho, wo) = (h / k, w / k);
    let planes = x.len() / (h * w);
    let mut out = zeros(planes * ho * wo);
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        if k == 2 {
            // The colourization nets' pooling: two input rows per output row.
            for (orow, rows) in o.chunks_exact_mut(wo).zip(plane.chunks_exact(2 * w)) {
                let (r0, r1) = rows.split_at(w);
                for ((v, p0), p1) in orow
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *v = argmax2x2(p0[0], p0[1], p1[0], p1[1]).1;
                }
            }
            return;
        }
        for oy in 0..ho {
            for ox in 0..wo {
                o[oy * wo + ox] = plane[argmax_window(plane, w, k, oy, ox)];
            }
        }
    });
    out
}

/// Windows of 2x2 pooling whose gradients [`window_grads_2x2`] computes
/// together: a chunk of their two input rows is [`deinterleave`]d into the
/// windows' four corners, one vector each.
const WINDOWS: usize = 16;

/// The gradient of one row of 2x2 windows: input rows `x0`, `x1` into
/// output rows `o0`, `o1` (a last odd column is left as it is), window
/// gradients `g`. Windows do not overlap: each input gets `0 + g` or `0`,
/// exactly what the general loop's `+=` gives, at the first maximum of its
/// window. [`WINDOWS`] windows at a time, branch-free: their corners split
/// into four arrays, the comparisons of [`argmax2x2`] as masks, the four
/// gradient arrays joined back into the rows (one window at a time, the
/// first maximum chose one of four stores, a branch that mispredicted on
/// half the windows; selects over a window's own array did not vectorise).
#[inline(always)]
fn window_grads_2x2<T: WithDType>(x0: &[T], x1: &[T], o0: &mut [T], o1: &mut [T], g: &[T]) {
    let zero = T::zero();
    let full = g.len() / WINDOWS * WINDOWS;
    for (j0, gs) in (0..full).step_by(WINDOWS).zip(g.chunks_exact(WINDOWS)) {
        let span = j0 * 2..(j0 + WINDOWS) * 2;
        let ([mut a, mut b, mut c, mut d], mut out) = ([[zero; WINDOWS]; 4], [[zero; WINDOWS]; 4]);
        deinterleave(&x0[span.clone()], &mut a, &mut b);
        deinterleave(&x1[span.clone()], &mut c, &mut d);
        for j in 0..WINDOWS {
            let to_b = b[j] > a[j];
            let m = if to_b { b[j] } else { a[j] };
            let to_c = c[j] > m;
            let m = if to_c { c[j] } else { m };
            let to_d = d[j] > m;
            let gv = zero + gs[j];
            let pick = |here: bool| if here { gv } else { zero };
            out[3][j] = pick(to_d);
            out[2][j] = pick(to_c && !to_d);
            out[1][j] = pick(to_b && !to_c && !to_d);
            out[0][j] = pick(!to_b && !to_c && !to_d);
        }
        interleave(&mut o0[span.clone()], &out[0], &out[1], |v| v);
        interleave(&mut o1[span], &out[2], &out[3], |v| v);
    }
    for (j, &gv) in g.iter().enumerate().skip(full) {
        let (best, _) = argmax2x2(x0[2 * j], x0[2 * j + 1], x1[2 * j], x1[2 * j + 1]);
        let mut v = [zero; 4];
        v[best] = zero + gv;
        o0[2 * j..2 * j + 2].copy_from_slice(&v[..2]);
        o1[2 * j..2 * j + 2].copy_from_slice(&v[2..]);
    }
}

fn maxpool_bwd<T: WithDType>(x: &[T], g: &[T], h: usize, w: usize, k: usize) -> Vec<T> {
    let (ho, wo) = (h / k, w / k);
    let mut out = zeros(x.len());
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        let gp = &g[p * ho * wo..(p + 1) * ho * wo];
        if k == 2 {
            let rows = plane.chunks_exact(2 * w).zip(o.chunks_exact_mut(2 * w));
            for ((xrows, orows), grow) in rows.zip(gp.chunks_exact(wo)) {
                let (x0, x1) = xrows.split_at(w);
                let (o0, o1) = orows.split_at_mut(w);
                vectorized(
                    #[inline(always)]
                    || window_grads_2x2(x0, x1, o0, o1, grow),
                );
            }
            return;
        }
        for oy in 0..ho {
            for ox in 0..wo {
                o[argmax_window(plane, w, k, oy, ox)] += gp[oy * wo + ox];
            }
        }
    });
    out
}

#[derive(Debug, Clone, Copy)]
struct MaxPoolBwd(usize);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "pixclass-maxpool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l)?;
        let k = self.0;
        let out = dispatch!((s, l) => x; maxpool_fwd(x, h, w, k));
        Ok((out, Shape::from((n, c, h / k, w / k))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolBwd(self.0),
        )?))
    }
}

impl candle_core::CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "pixclass-maxpool-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (_, _, h, w) = dims4(l1)?;
        let k = self.0;
        let out = dispatch!((s1, l1) => x, (s2, l2) => g; maxpool_bwd(x, g, h, w, k));
        Ok((out, l1.shape().clone()))
    }
}

/// Max pooling on the CPU (window = stride = `k`; trailing rows and columns
/// that do not fill a window are dropped).
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, H / k, W / k]`.
pub(crate) fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if h % k != 0 || w % k != 0 {
        x.narrow(2, 0, h / k * k)?.narrow(3, 0, w / k * k)?
    } else {
        x.clone()
    };
    x.contiguous()?.apply_op1(MaxPool(k))
}

/// Nearest upsampling by an integer factor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upsample(pub usize);

/// Its adjoint: sums each `f x f` block.
#[derive(Debug, Clone, Copy)]
struct BlockSum(usize);

fn upsample_fwd<T: WithDType>(x: &[T], h: usize, w: usize, f: usize) -> Vec<T> {
    let (oh, ow) = (h * f, w * f);
    let mut out = zeros(x.len() * f * f);
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        if f == 2 {
            // The colourization nets' upsampling: each value twice, each row twice.
            for (orows, src) in o.chunks_exact_mut(2 * ow).zip(plane.chunks_exact(w)) {
                let (o0, o1) = orows.split_at_mut(ow);
                for (pair, &v) in o0.chunks_exact_mut(2).zip(src) {
                    pair[0] = v;
                    pair[1] = v;
                }
                o1.copy_from_slice(o0);
            }
            return;
        }
        for y in 0..oh {
            let src = &plane[(y / f) * w..(y / f + 1) * w];
            for (xo, v) in o[y * ow..(y + 1) * ow].iter_mut().enumerate() {
                *v = src[xo / f];
            }
        }
    });
    out
}

fn block_sum<T: WithDType>(g: &[T], h: usize, w: usize, f: usize) -> Vec<T> {
    // g is [.., h*f, w*f]; the result [.., h, w].
    let (gh, gw) = (h * f, w * f);
    let mut out = zeros(g.len() / (f * f));
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let plane = &g[p * gh * gw..(p + 1) * gh * gw];
        if f == 2 {
            // The general loop's additions in its order: 0 + g00 + g01 + g10 + g11.
            for (orow, rows) in o.chunks_exact_mut(w).zip(plane.chunks_exact(2 * gw)) {
                let (r0, r1) = rows.split_at(gw);
                for ((v, p0), p1) in orow
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *v = T::zero() + p0[0] + p0[1] + p1[0] + p1[1];
                }
            }
            return;
        }
        for y in 0..gh {
            let row = &plane[y * gw..(y + 1) * gw];
            let orow = &mut o[(y / f) * w..(y / f + 1) * w];
            for (xg, v) in row.iter().enumerate() {
                orow[xg / f] += *v;
            }
        }
    });
    out
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "pixclass-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l)?;
        let f = self.0;
        let out = dispatch!((s, l) => x; upsample_fwd(x, h, w, f));
        Ok((out, Shape::from((n, c, h * f, w * f))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&BlockSum(self.0))?,
        ))
    }
}

impl CustomOp1 for BlockSum {
    fn name(&self) -> &'static str {
        "pixclass-block-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, gh, gw) = dims4(l)?;
        let f = self.0;
        let (h, w) = (gh / f, gw / f);
        let out = dispatch!((s, l) => g; block_sum(g, h, w, f));
        Ok((out, Shape::from((n, c, h, w))))
    }
}

/// `how.apply(x)` without an autograd node (`x` contiguous; a pooling
/// window that tiles it: [`crate::Resample::out_size`]).
pub(crate) fn resample_no_bwd(how: crate::Resample, x: &Tensor) -> Result<Tensor> {
    match how {
        crate::Resample::MaxPool(k) => x.apply_op1_no_bwd(&MaxPool(k)),
        crate::Resample::Upsample(f) => x.apply_op1_no_bwd(&Upsample(f)),
    }
}

/// The gradient of `x` from that of `resample_no_bwd(how, x)`.
pub(crate) fn resample_backward(how: crate::Resample, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    match how {
        crate::Resample::MaxPool(k) => x.contiguous()?.apply_op2_no_bwd(&grad, &MaxPoolBwd(k)),
        crate::Resample::Upsample(f) => grad.apply_op1_no_bwd(&BlockSum(f)),
    }
}

/// Nearest upsampling on the CPU.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, f·H, f·W]`.
pub(crate) fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample(f))
}

/// Max pooling with any window, stride and zero-free padding (padded
/// positions never win, like PyTorch's `MaxPool2d(k, s, p)`); the gradient
/// goes to the first maximum of each window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPoolStrided {
    /// Window.
    pub k: usize,
    /// Stride.
    pub s: usize,
    /// Padding on every side.
    pub p: usize,
}

impl MaxPoolStrided {
    fn out(&self, n: usize) -> usize {
        (n + 2 * self.p - self.k) / self.s + 1
    }

    /// Index (within the plane) of the first maximum of window (oy, ox).
    fn arg<T: WithDType>(&self, plane: &[T], h: usize, w: usize, oy: usize, ox: usize) -> usize {
        let mut best: Option<usize> = None;
        for dy in 0..self.k {
            let iy = (oy * self.s + dy) as isize - self.p as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for dx in 0..self.k {
                let ix = (ox * self.s + dx) as isize - self.p as isize;
                if ix < 0 || ix >= w as isize {
                    continue;
                }
                let i = iy as usize * w + ix as usize;
                if best.is_none_or(|b| plane[i] > plane[b]) {
                    best = Some(i);
                }
            }
        }
        best.unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct MaxPoolStridedBwd(MaxPoolStrided);

impl CustomOp1 for MaxPoolStrided {
    fn name(&self) -> &'static str {
        "pixclass-maxpool-strided"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l)?;
        if h + 2 * self.p < self.k || w + 2 * self.p < self.k || self.p * 2 > self.k {
            candle_core::bail!("max-pool {:?} does not fit a {h}x{w} input", self);
        }
        let (ho, wo) = (self.out(h), self.out(w));
        let op = *self;
        let out = dispatch!((s, l) => x; {
            let mut o = vec![x[0]; n * c * ho * wo];
            o.par_chunks_mut(ho * wo)
                .enumerate()
                .for_each(|(p, op_out)| {
                    let plane = &x[p * h * w..(p + 1) * h * w];
                    for oy in 0..ho {
                        for ox in 0..wo {
                            op_out[oy * wo + ox] = plane[op.arg(plane, h, w, oy, ox)];
                        }
                    }
                });
            o
        });
        Ok((out, Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolStridedBwd(*self),
        )?))
    }
}

fn maxpool_strided_bwd<T: WithDType>(
    op: &MaxPoolStrided,
    x: &[T],
    g: &[T],
    h: usize,
    w: usize,
) -> Vec<T> {
    let (ho, wo) = (op.out(h), op.out(w));
    let mut out = zeros(x.len());
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        let gp = &g[p * ho * wo..(p + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                o[op.arg(plane, h, w, oy, ox)] += gp[oy * wo + ox];
            }
        }
    });
    out
}

impl candle_core::CustomOp2 for MaxPoolStridedBwd {
    fn name(&self) -> &'static str {
        "pixclass-maxpool-strided-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (_, _, h, w) = dims4(l1)?;
        let out = dispatch!((s1, l1) => x, (s2, l2) => g; maxpool_strided_bwd(&self.0, x, g, h, w));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2x2 gradient (chunks of windows and the rest) against the general
    /// window loop, with many ties and NaNs, odd and even sides, rows of up
    /// to 70 columns.
    #[test]
    fn two_by_two_gradient_matches_the_general_windows() {
        for (h, w) in [(2, 2), (3, 5), (4, 32), (5, 33), (2, 64), (6, 70), (16, 16)] {
            let x: Vec<f32> = (0..2 * h * w)
                .map(|i| match (i * 7919) % 13 {
                    0 => f32::NAN,
                    r => (r % 4) as f32,
                })
                .collect();
            let (ho, wo) = (h / 2, w / 2);
            let g: Vec<f32> = (0..2 * ho * wo).map(|i| i as f32 + 1.0).collect();
            let got = maxpool_bwd(&x, &g, h, w, 2);
            let mut want = vec![0f32; x.len()];
            for p in 0..2 {
                let plane = &x[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        want[p * h * w + argmax_window(plane, w, 2, oy, ox)] +=
                            g[(p * ho + oy) * wo + ox];
                    }
                }
            }
            assert_eq!(got, want, "{h}x{w}");
        }
    }

    /// The 2x2 pooling and block sums of the colourization nets against the
    /// general loops, bit for bit (NaNs compared as bits), odd and even
    /// sides.
    #[test]
    fn two_by_two_windows_match_the_general_loops() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (h, w) in [(2, 2), (3, 5), (4, 32), (5, 33), (2, 64), (6, 70), (16, 16)] {
            let x: Vec<f32> = (0..2 * h * w)
                .map(|i| match (i * 7919) % 13 {
                    0 => f32::NAN,
                    r => (r % 4) as f32 - 1.5 + (i as f32) * 1e-3,
                })
                .collect();
            let (ho, wo) = (h / 2, w / 2);
            let mut want_max = Vec::new();
            for p in 0..2 {
                let plane = &x[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        want_max.push(plane[argmax_window(plane, w, 2, oy, ox)]);
                    }
                }
            }
            assert_eq!(
                bits(&maxpool_fwd(&x, h, w, 2)),
                bits(&want_max),
                "max {h}x{w}"
            );
            if h % 2 == 0 && w % 2 == 0 {
                let sums = block_sum(&x, ho, wo, 2);
                let mut want = vec![0f32; sums.len()];
                for p in 0..2 {
                    for y in 0..h {
                        for xg in 0..w {
                            want[(p * ho + y / 2) * wo + xg / 2] += x[(p * h + y) * w + xg];
                        }
                    }
                }
                assert_eq!(bits(&sums), bits(&want), "sums {h}x{w}");
            }
        }
    }
}
