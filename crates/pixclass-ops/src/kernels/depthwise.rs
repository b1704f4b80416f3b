//! Depthwise convolution (one 2-D filter per channel): direct loops over
//! the taps, each inner loop a contiguous run of output columns when the
//! stride is 1. Backward: the input gradient scatters through the same
//! taps, the filter gradient sums per channel over the batch in a fixed
//! order.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::elementwise::{bias_gradient, clamp_gradient, clamp_value};
use super::scratch::Scratch;
use super::simd::deinterleave;
use super::{contiguous_slice, dispatch, zeros, Geometry};

/// Depthwise convolution of `[N, C, H, W]` with `[C, 1, KH, KW]`, zero
/// padding `pad_top`/`pad_left` (and what `ho`/`wo` imply after).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depthwise(pub Geometry);

/// [`Depthwise`] plus a per-channel bias and a clamp to `bounds` (ReLU6 in
/// MobileNetV2), applied to each output plane while it is in cache: inputs
/// (x, w, bias). The gradient passes where `lo < y < hi`; the bias gradient
/// is its per-channel sum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DepthwiseBias {
    pub g: Geometry,
    /// `(-inf, inf)` for no clamp.
    pub bounds: (f64, f64),
}

#[derive(Debug, Clone, Copy)]
struct DepthwiseBwdInput(Geometry);

#[derive(Debug, Clone, Copy)]
struct DepthwiseBwdFilter(Geometry);

/// Calls `f(out_index, in_index)` for every output position of tap (i, j)
/// whose input lies inside the image.
#[inline]
fn for_tap(g: &Geometry, i: usize, j: usize, mut f: impl FnMut(usize, usize)) {
    let (y0, y1) = g.valid_range(i, g.pad_top, g.ho, g.h);
    let (x0, x1) = g.valid_range(j, g.pad_left, g.wo, g.w);
    for oy in y0..y1 {
        let iy = oy * g.stride + i * g.dilation - g.pad_top;
        for ox in x0..x1 {
            let ix = ox * g.stride + j * g.dilation - g.pad_left;
            f(oy * g.wo + ox, iy * g.w + ix);
        }
    }
}

/// `o[oy, x0..x1] += k · plane[iy, ix0..]` for every output row of tap
/// `(i, j)` of a stride-1 convolution: contiguous runs that vectorise.
#[inline(always)]
fn tap_rows_stride1<T: WithDType>(
    g: &Geometry,
    i: usize,
    j: usize,
    k: T,
    plane: &[T],
    o: &mut [T],
) {
    let (y0, y1) = g.valid_range(i, g.pad_top, g.ho, g.h);
    let (x0, x1) = g.valid_range(j, g.pad_left, g.wo, g.w);
    if x0 >= x1 {
        return;
    }
    let ix0 = x0 + j * g.dilation - g.pad_left;
    for oy in y0..y1 {
        let iy = oy + i * g.dilation - g.pad_top;
        let orow = &mut o[oy * g.wo + x0..oy * g.wo + x1];
        let irow = &plane[iy * g.w + ix0..iy * g.w + ix0 + (x1 - x0)];
        for (a, &b) in orow.iter_mut().zip(irow) {
            *a += k * b;
        }
    }
}

/// The plane's even columns, then its odd ones, each as `h` rows of
/// `half = ⌈w/2⌉` values (the odd rows' last value unused when `w` is
/// odd), into `cols`: a stride-2 tap then reads a contiguous run of one of
/// them per output row.
#[inline(always)]
fn split_columns<'s, T: WithDType>(
    plane: &[T],
    g: &Geometry,
    half: usize,
    cols: &'s mut Scratch<T>,
) -> &'s [T] {
    let cols = cols.values(2 * g.h * half);
    let (even, odd) = cols.split_at_mut(g.h * half);
    for ((src, e), o) in plane
        .chunks_exact(g.w)
        .zip(even.chunks_exact_mut(half))
        .zip(odd.chunks_exact_mut(half))
    {
        let pairs = g.w / 2;
        deinterleave(src, &mut e[..pairs], &mut o[..pairs]);
        if g.w % 2 == 1 {
            e[pairs] = src[g.w - 1];
        }
    }
    cols
}

/// [`tap_rows_stride1`] for stride 2 from [`split_columns`]' planes: output
/// column `ox` of tap `(i, j)` reads input column `2·ox + j·d - pad_left`,
/// all of one parity, so each output row's run is contiguous in one plane.
/// The same products added in the same order as the general loop.
#[inline(always)]
fn tap_rows_stride2<T: WithDType>(
    g: &Geometry,
    (i, j): (usize, usize),
    k: T,
    (cols, half): (&[T], usize),
    o: &mut [T],
) {
    let (y0, y1) = g.valid_range(i, g.pad_top, g.ho, g.h);
    let (x0, x1) = g.valid_range(j, g.pad_left, g.wo, g.w);
    if x0 >= x1 {
        return;
    }
    let ix0 = 2 * x0 + j * g.dilation - g.pad_left;
    let plane = &cols[(ix0 % 2) * g.h * half..][..g.h * half];
    for oy in y0..y1 {
        let iy = 2 * oy + i * g.dilation - g.pad_top;
        let orow = &mut o[oy * g.wo + x0..oy * g.wo + x1];
        let irow = &plane[iy * half + ix0 / 2..][..x1 - x0];
        for (a, &b) in orow.iter_mut().zip(irow) {
            *a += k * b;
        }
    }
}

/// The depthwise convolution, then per output plane `clamp(o + bias[c])`
/// when `epilogue` is (bias, bounds).
fn depthwise_fwd<T: WithDType>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    epilogue: Option<(&[T], (f64, f64))>,
) -> Vec<T> {
    let (hw, ohw, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mut out = zeros(g.n * g.c * ohw);
    let half = g.w.div_ceil(2);
    out.par_chunks_mut(ohw)
        .enumerate()
        .for_each_init(Scratch::take, |cols, (p, o)| {
            let c = p % g.c;
            let plane = &x[p * hw..(p + 1) * hw];
            super::simd::vectorized(
                #[inline(always)]
                || {
                    let cols = (g.stride == 2).then(|| split_columns(plane, g, half, cols));
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let k = w[c * taps + i * g.kw + j];
                            match cols {
                                _ if g.stride == 1 => tap_rows_stride1(g, i, j, k, plane, o),
                                Some(cols) => tap_rows_stride2(g, (i, j), k, (cols, half), o),
                                None => for_tap(g, i, j, |oi, ii| o[oi] += k * plane[ii]),
                            }
                        }
                    }
                    if let Some((bias, bounds)) = epilogue {
                        // After the taps, as an unfused bias would be added (no
                        // clamp leaves the sum exactly as it is).
                        let (b, lo, hi) = (bias[c], T::from_f64(bounds.0), T::from_f64(bounds.1));
                        o.iter_mut().for_each(|v| *v = clamp_value(*v + b, lo, hi));
                    }
                },
            );
        });
    out
}

fn depthwise_bwd_input<T: WithDType>(g: &Geometry, grad: &[T], w: &[T]) -> Vec<T> {
    let (hw, ohw, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mut dx = zeros(g.n * g.c * hw);
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, d)| {
        let c = p % g.c;
        let gp = &grad[p * ohw..(p + 1) * ohw];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let k = w[c * taps + i * g.kw + j];
                for_tap(g, i, j, |oi, ii| d[ii] += k * gp[oi]);
            }
        }
    });
    dx
}

fn depthwise_bwd_filter<T: WithDType>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    let (hw, ohw, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mut dw = vec![T::zero(); g.c * taps];
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, d)| {
        for n in 0..g.n {
            let p = n * g.c + c;
            let plane = &x[p * hw..(p + 1) * hw];
            let gp = &grad[p * ohw..(p + 1) * ohw];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let mut s = 0f64;
                    for_tap(g, i, j, |oi, ii| s += (gp[oi] * plane[ii]).to_f64());
                    d[i * g.kw + j] += T::from_f64(s);
                }
            }
        }
    });
    dw
}

impl candle_core::CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "pixclass-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let g = self.0;
        let out = dispatch!((s1, l1) => x, (s2, l2) => w; depthwise_fwd(&g, x, w, None));
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        depthwise_bwd(self.0, x, w, grad)
    }
}

/// The input and filter gradients of a depthwise convolution, only those
/// autograd will use (see the convolution kernels' backward).
fn depthwise_bwd(
    g: Geometry,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let dx = x
        .track_op()
        .then(|| grad.apply_op2_no_bwd(w, &DepthwiseBwdInput(g)))
        .transpose()?;
    let dw = w
        .track_op()
        .then(|| x.apply_op2_no_bwd(&grad, &DepthwiseBwdFilter(g)))
        .transpose()?;
    Ok((dx, dw))
}

impl candle_core::CustomOp3 for DepthwiseBias {
    fn name(&self) -> &'static str {
        "pixclass-depthwise-bias-clamp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let g = self.g;
        if l3.shape().elem_count() != g.c {
            candle_core::bail!(
                "{}: bias {:?} must have {} values",
                self.name(),
                l3.shape().dims(),
                g.c
            );
        }
        let out = dispatch!((s1, l1) => x, (s2, l2) => w, (s3, l3) => b;
            depthwise_fwd(&g, x, w, Some((b, self.bounds))));
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !w.track_op() && !b.track_op() {
            return Ok((None, None, None));
        }
        let grad = clamp_gradient(res, grad, self.bounds)?;
        let (dx, dw) = depthwise_bwd(self.g, x, w, &grad)?;
        let db = bias_gradient(b, &grad)?;
        Ok((dx, dw, db))
    }
}

impl candle_core::CustomOp2 for DepthwiseBwdInput {
    fn name(&self) -> &'static str {
        "pixclass-depthwise-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let g = self.0;
        let out = dispatch!((s1, l1) => grad, (s2, l2) => w; depthwise_bwd_input(&g, grad, w));
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl candle_core::CustomOp2 for DepthwiseBwdFilter {
    fn name(&self) -> &'static str {
        "pixclass-depthwise-bwd-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let g = self.0;
        let out = dispatch!((s1, l1) => x, (s2, l2) => grad; depthwise_bwd_filter(&g, x, grad));
        Ok((out, Shape::from((g.c, 1, g.kh, g.kw))))
    }
}

// ---------------------------------------------------------------------------
