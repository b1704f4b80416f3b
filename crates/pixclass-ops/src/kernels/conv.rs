//! Convolution and transposed convolution on the CPU as per-image GEMMs,
//! parallel over the images of a batch. Three kernels cover both layers and
//! both gradients:
//! - forward: `Y_n = W · im2col(X_n)`;
//! - backward-data: `dX_n = col2im(Wᵀ · dY_n)` (also the forward of a
//!   transposed convolution);
//! - backward-filter: `dW = Σ_n dY_n · im2col(X_n)ᵀ`.
//!
//! A transposed convolution's backward needs the forward and backward-filter
//! kernels over the same column matrix (that of its output gradient): where
//! both take the column path, [`ConvTransposeGrads`] builds each image's
//! columns once and computes both gradients from them.
//!
//! Working per image keeps the column matrix small (it stays in cache) and
//! writes outputs in `[N, C, H, W]` order with no transposes. Stride-1 3x3
//! convolutions take the Winograd kernels instead (all three passes;
//! [`super::winograd`]), and so do the dilated ones with "same" padding,
//! split into their undilated phase images ([`super::dilated`]); forwards
//! whose taps read padding over much of the output skip those products
//! ([`super::bands`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::elementwise::{bias_gradient, clamp_gradient, clamp_in_place, clamps};
use super::gemm::{col_ld, gemm_into, gemm_overwrite, inner_threads};
use super::im2col::{add_bias, all_taps, col2im_image, im2col_taps, live_taps};
use super::output::{output, par_output};
use super::simd::Real;
use super::winograd::{self, Filters};
use super::{bands, dilated};
use super::{contiguous_slice, dispatch, with_cpu_storage, Geometry};

/// `Y[n] = W · im2col(X[n]) (+ bias)`: x `[N, C, H, W]`, w `[O, C, kh, kw]`,
/// bias `[O]` -> `[N, O, ho, wo]`.
fn fwd<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geometry, o: usize) -> Vec<T> {
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    if winograd::applies(g, g.c, o) {
        return winograd::conv3x3(x, w, bias, Filters::Forward, (g.n, g.c, o), (g.h, g.w));
    }
    if dilated::applies(g, g.c, o) {
        let (n, c, h, wd) = (g.n, g.c, g.h, g.w);
        return dilated::conv3x3(x, w, bias, Filters::Forward, (n, c, o), (h, wd), g.dilation);
    }
    if let Some(rects) = bands::plan(g) {
        return bands::conv(x, w, bias, g, o, &rects);
    }
    let threads = inner_threads(g.n);
    if g.is_pointwise() {
        return output(g.n * o * ohw, o * ohw, |images| {
            images.enumerate().for_each(|(n, yn)| {
                let xn = &x[n * chw..(n + 1) * chw];
                let yn = gemm_overwrite((o, ohw, ckk), yn, (w, ckk, 1), (xn, ohw, 1), threads);
                add_bias(yn, bias, ohw, threads);
            })
        });
    }
    // Taps that only read padding contribute exact zeros: leave them out of
    // both the column matrix and the weights.
    let taps = live_taps(g);
    let reduced: Vec<T>;
    let (w, k) = if taps.len() == g.kh * g.kw {
        (w, ckk)
    } else {
        let kk = g.kh * g.kw;
        reduced = w
            .chunks_exact(kk)
            .flat_map(|filter| taps.iter().map(move |&(ky, kx)| filter[ky * g.kw + kx]))
            .collect();
        (reduced.as_slice(), g.c * taps.len())
    };
    // One image: the column matrix is built by all threads.
    let parallel_cols = threads > 1;
    let ld = col_ld(ohw);
    output(g.n * o * ohw, o * ohw, |images| {
        images.enumerate().for_each_init(
            || vec![T::zero(); k * ld],
            |cols, (n, yn)| {
                im2col_taps(
                    &x[n * chw..(n + 1) * chw],
                    g,
                    &taps,
                    cols,
                    ld,
                    parallel_cols,
                );
                let yn = gemm_overwrite((o, ohw, k), yn, (w, k, 1), (cols, ld, 1), threads);
                add_bias(yn, bias, ohw, threads);
            },
        )
    })
}

/// `dX[n] = col2im(Wᵀ · dY[n]) (+ bias)`: dy `[N, O, ho, wo]`, w `[O, C, kh, kw]`,
/// bias `[C]` (a transposed convolution's) -> `[N, C, H, W]`.
fn bwd_data<T: WithDType>(dy: &[T], w: &[T], bias: Option<&[T]>, g: &Geometry, o: usize) -> Vec<T> {
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    if winograd::applies(g, o, g.c) {
        return winograd::conv3x3(
            dy,
            w,
            bias,
            Filters::BackwardData,
            (g.n, o, g.c),
            (g.h, g.w),
        );
    }
    if dilated::applies(g, o, g.c) {
        let (n, c, h, wd) = (g.n, g.c, g.h, g.w);
        return dilated::conv3x3(
            dy,
            w,
            bias,
            Filters::BackwardData,
            (n, o, c),
            (h, wd),
            g.dilation,
        );
    }
    let threads = inner_threads(g.n);
    if g.is_pointwise() {
        // col2im is the identity: the GEMM writes the image directly.
        return output(g.n * chw, chw, |images| {
            images.enumerate().for_each(|(n, dxn)| {
                let dyn_ = &dy[n * o * ohw..(n + 1) * o * ohw];
                let dxn = gemm_overwrite((ckk, ohw, o), dxn, (w, 1, ckk), (dyn_, ohw, 1), threads);
                add_bias(dxn, bias, g.h * g.w, threads);
            })
        });
    }
    let ld = col_ld(ohw);
    output(g.n * chw, chw, |images| {
        images.enumerate().for_each_init(
            || vec![T::zero(); ckk * ld],
            |cols, (n, dxn)| {
                // Wᵀ is W read with swapped strides: (row stride 1, column stride ckk).
                gemm_into(
                    ckk,
                    ohw,
                    o,
                    (cols, ld),
                    (w, 1, ckk),
                    (&dy[n * o * ohw..(n + 1) * o * ohw], ohw, 1),
                    false,
                    threads,
                );
                let dxn = dxn.zeroed();
                col2im_image(cols, g, ld, dxn);
                add_bias(dxn, bias, g.h * g.w, threads);
            },
        )
    })
}

/// Images per partial sum of [`bwd_filter`]: a fixed partition, so the
/// summation order (and the result, bit for bit) never depends on thread
/// scheduling or the number of threads.
const FILTER_CHUNK: usize = 8;

/// `dW = Σ_n dY[n] · im2col(X[n])ᵀ`: x `[N, C, H, W]`, dy `[N, O, ho, wo]` -> `[O, C, kh, kw]`.
fn bwd_filter<T: Real>(x: &[T], dy: &[T], g: &Geometry, o: usize) -> Vec<T> {
    if winograd::applies(g, g.c, o) {
        return winograd::filter_grad3x3(x, dy, (g.n, g.c, o), (g.h, g.w));
    }
    if dilated::applies(g, g.c, o) {
        return dilated::filter_grad3x3(x, dy, (g.n, g.c, o), (g.h, g.w), g.dilation);
    }
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    let chunks = g.n.div_ceil(FILTER_CHUNK);
    let threads = inner_threads(chunks);
    let taps = all_taps(g);
    // One partial dW per fixed chunk of images, computed in parallel...
    let partials: Vec<Vec<T>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![T::zero(); o * ckk];
            let pointwise = g.is_pointwise();
            let ld = if pointwise { ohw } else { col_ld(ohw) };
            let mut cols = vec![T::zero(); if pointwise { 0 } else { ckk * ld }];
            for n in chunk * FILTER_CHUNK..((chunk + 1) * FILTER_CHUNK).min(g.n) {
                let xn = &x[n * chw..(n + 1) * chw];
                let cols: &[T] = if pointwise {
                    xn
                } else {
                    im2col_taps(xn, g, &taps, &mut cols, ld, false);
                    &cols
                };
                // colsᵀ: (row stride 1, column stride ld).
                gemm_into(
                    o,
                    ckk,
                    ohw,
                    (&mut dw, ckk),
                    (&dy[n * o * ohw..(n + 1) * o * ohw], ohw, 1),
                    (cols, 1, ld),
                    true,
                    threads,
                );
            }
            dw
        })
        .collect();
    // ...then summed in chunk order.
    sum_in_order(&partials, o * ckk)
}

/// The sum of equal-length partial results, added in their order (the
/// fixed order that makes [`bwd_filter`] independent of thread scheduling).
fn sum_in_order<T: Real>(partials: &[Vec<T>], len: usize) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    for p in partials {
        for (a, b) in out.iter_mut().zip(p) {
            *a += *b;
        }
    }
    out
}

/// Whether [`fwd`] and [`bwd_filter`] of `g` both take the column path with
/// every tap (no Winograd, phase, band or pointwise kernel, no tap that only
/// reads padding): then they build the same column matrices, and
/// [`fwd_and_filter`] can share them.
fn shares_columns(g: &Geometry, o: usize) -> bool {
    !winograd::applies(g, g.c, o)
        && !dilated::applies(g, g.c, o)
        && !g.is_pointwise()
        && g.n * g.ho * g.wo * o > 0
        && bands::plan(g).is_none()
        && live_taps(g).len() == g.kh * g.kw
}

/// [`fwd`] and [`bwd_filter`] over one column matrix per image (the backward
/// of a transposed convolution, whose input gradient is the convolution of
/// its output gradient `img` and whose filter gradient pairs the same
/// columns with its input `dy`): `Y[n] = W · im2col(img[n])` and
/// `dW = Σ_n dy[n] · im2col(img[n])ᵀ`, img `[N, C, H, W]`, w and dW
/// `[O, C, kh, kw]`, y and dy `[N, O, ho, wo]`; returns `y` followed by `dW`
/// in one buffer. Each value is summed exactly as the two kernels sum it
/// (the same GEMM calls, the same fixed chunks of [`FILTER_CHUNK`] images
/// for the partial filter gradients), so the results are theirs bit for
/// bit. Only where [`shares_columns`] holds.
fn fwd_and_filter<T: Real>(img: &[T], w: &[T], dy: &[T], g: &Geometry, o: usize) -> Vec<T> {
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    let chunks = g.n.div_ceil(FILTER_CHUNK);
    let threads = inner_threads(chunks);
    let taps = all_taps(g);
    let ld = col_ld(ohw);
    let per_image = o * ohw;
    let (mut out, partials) = par_output(
        g.n * per_image,
        FILTER_CHUNK * per_image,
        o * ckk,
        |images| -> Vec<Vec<T>> {
            images
                .enumerate()
                .map_init(
                    || vec![T::zero(); ckk * ld],
                    |cols, (chunk, slots)| {
                        let mut dw = vec![T::zero(); o * ckk];
                        for (i, yn) in slots.split(per_image).enumerate() {
                            let n = chunk * FILTER_CHUNK + i;
                            let imn = &img[n * chw..(n + 1) * chw];
                            im2col_taps(imn, g, &taps, cols, ld, threads > 1);
                            gemm_overwrite((o, ohw, ckk), yn, (w, ckk, 1), (cols, ld, 1), threads);
                            gemm_into(
                                o,
                                ckk,
                                ohw,
                                (&mut dw, ckk),
                                (&dy[n * per_image..(n + 1) * per_image], ohw, 1),
                                (cols, 1, ld),
                                true,
                                threads,
                            );
                        }
                        dw
                    },
                )
                .collect()
        },
    );
    out.extend(sum_in_order(&partials, o * ckk));
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// (x, w) -> y.
    Fwd,
    /// (dy, w) -> dx.
    BwdData,
    /// (x, dy) -> dw.
    BwdFilter,
}

/// One of the three kernels for a geometry `g` and `o` output channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvKernel {
    g: Geometry,
    o: usize,
    kind: Kind,
}

impl ConvKernel {
    fn run<T: Real>(&self, a: &[T], b: &[T], bias: Option<&[T]>) -> Vec<T> {
        match self.kind {
            Kind::Fwd => fwd(a, b, bias, &self.g, self.o),
            Kind::BwdData => bwd_data(a, b, bias, &self.g, self.o),
            Kind::BwdFilter => bwd_filter(a, b, &self.g, self.o),
        }
    }

    /// Channels of the output (the length a bias must have).
    fn out_channels(&self) -> usize {
        match self.kind {
            Kind::Fwd => self.o,
            Kind::BwdData => self.g.c,
            Kind::BwdFilter => 0,
        }
    }

    /// The shape of the kernel's output.
    pub(crate) fn shape(&self) -> Shape {
        let g = &self.g;
        match self.kind {
            Kind::Fwd => Shape::from((g.n, self.o, g.ho, g.wo)),
            Kind::BwdData => Shape::from((g.n, g.c, g.h, g.w)),
            Kind::BwdFilter => Shape::from((self.o, g.c, g.kh, g.kw)),
        }
    }

    fn with(&self, kind: Kind) -> Self {
        Self { kind, ..*self }
    }
}

impl CustomOp2 for ConvKernel {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Fwd => "pixclass-conv2d",
            Kind::BwdData => "pixclass-conv2d-bwd-data",
            Kind::BwdFilter => "pixclass-conv2d-bwd-filter",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let out = dispatch!((s1, l1) => a, (s2, l2) => b; self.run(a, b, None));
        Ok((out, self.shape()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // Only the gradients autograd will use: the input of a frozen
        // network's head (or an image) needs none, and computing it would
        // cost as much as the rest of the step.
        let (need_a, need_b) = (a.track_op(), b.track_op());
        let run = |need: bool, x: &Tensor, y: &Tensor, kind: Kind| -> Result<Option<Tensor>> {
            if need {
                Ok(Some(x.apply_op2_no_bwd(y, &self.with(kind))?))
            } else {
                Ok(None)
            }
        };
        match self.kind {
            // y = conv(x, w): dx = bwd_data(dy, w), dw = bwd_filter(x, dy).
            Kind::Fwd => Ok((
                run(need_a, &grad, b, Kind::BwdData)?,
                run(need_b, a, &grad, Kind::BwdFilter)?,
            )),
            // y = conv_transpose(x, w) = bwd_data(x, w): dx = conv(dy, w), dw = bwd_filter(dy, x),
            // both over im2col(dy): built once where both kernels use it.
            Kind::BwdData
                if need_a
                    && need_b
                    && grad.device().is_cpu()
                    && shares_columns(&self.g, self.o) =>
            {
                let conv = self.with(Kind::Fwd);
                let both = grad.apply_op3_no_bwd(
                    &a.contiguous()?,
                    &b.contiguous()?,
                    &ConvTransposeGrads { conv },
                )?;
                let nx = a.elem_count();
                let dx = both.narrow(0, 0, nx)?.reshape(a.shape())?;
                let dw = both.narrow(0, nx, b.elem_count())?.reshape(b.shape())?;
                Ok((Some(dx), Some(dw)))
            }
            Kind::BwdData => Ok((
                run(need_a, &grad, b, Kind::Fwd)?,
                run(need_b, &grad, a, Kind::BwdFilter)?,
            )),
            Kind::BwdFilter => candle_core::bail!("no second-order gradient for {}", self.name()),
        }
    }
}

/// Both gradients of a transposed convolution from one column matrix per
/// image ([`fwd_and_filter`]): inputs (its output gradient, its input, its
/// filters) -> its input gradient's values followed by its filter
/// gradient's, one flat tensor.
#[derive(Debug, Clone, Copy)]
struct ConvTransposeGrads {
    /// The convolution of the output gradient with the filters (the input
    /// gradient's kernel).
    conv: ConvKernel,
}

impl CustomOp3 for ConvTransposeGrads {
    fn name(&self) -> &'static str {
        "pixclass-conv-transpose2d-bwd"
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
        let (g, o) = (&self.conv.g, self.conv.o);
        let (nx, nw) = (g.n * o * g.ho * g.wo, o * g.rows());
        let expect = [g.n * g.c * g.h * g.w, nx, nw];
        let got = [l1, l2, l3].map(|l| l.shape().elem_count());
        if got != expect {
            candle_core::bail!(
                "{}: inputs of {got:?} values, the geometry needs {expect:?}",
                self.name()
            );
        }
        let out = dispatch!((s1, l1) => img, (s2, l2) => dy, (s3, l3) => w;
            fwd_and_filter(img, w, dy, g, o));
        Ok((out, Shape::from(nx + nw)))
    }
}

/// A forward kernel (convolution or transposed convolution) with the layer's
/// bias added per output channel in the same pass, then optionally clamped
/// to `bounds` (its activation, ReLU or ReLU6: one more pass, in place):
/// inputs (x, w, bias). The gradient passes where `lo < y < hi`; the bias
/// gradient is its per-channel sum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBias {
    pub kernel: ConvKernel,
    /// `(-inf, inf)` for no clamp.
    pub bounds: (f64, f64),
}

impl ConvBias {
    fn run<T: Real>(&self, a: &[T], b: &[T], bias: &[T]) -> Vec<T> {
        let mut y = self.kernel.run(a, b, Some(bias));
        clamp_in_place(&mut y, self.bounds);
        y
    }
}

impl CustomOp3 for ConvBias {
    fn name(&self) -> &'static str {
        match (self.kernel.kind, clamps(self.bounds)) {
            (Kind::Fwd, false) => "pixclass-conv2d-bias",
            (Kind::Fwd, true) => "pixclass-conv2d-bias-clamp",
            (_, false) => "pixclass-conv-transpose2d-bias",
            (_, true) => "pixclass-conv-transpose2d-bias-clamp",
        }
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
        let c = self.kernel.out_channels();
        if l3.shape().elem_count() != c {
            candle_core::bail!(
                "{}: bias {:?} must have {c} values",
                self.name(),
                l3.shape().dims()
            );
        }
        let out = dispatch!((s1, l1) => a, (s2, l2) => b, (s3, l3) => bias; self.run(a, b, bias));
        Ok((out, self.kernel.shape()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = &clamp_gradient(res, grad, self.bounds)?;
        let (da, db) = CustomOp2::bwd(&self.kernel, a, b, res, grad)?;
        let dbias = bias_gradient(bias, grad)?;
        Ok((da, db, dbias))
    }
}

/// The forward kernel over the channel concatenation of a tracked input `a`
/// and a constant `tail` (one that needs no gradient: an image), with the
/// layer's bias and clamp: inputs (a, w, bias), `w` covering both parts'
/// channels. `clamp(conv(a, w_a) + bias + conv(tail, w_tail))`, summed in
/// that order, in one op: the sum of two convolution ops would add two
/// output-sized tensors, and autograd would zero and accumulate a gradient
/// for each of them. The backward gives `a` its gradient through `w_a` only,
/// and `w` the concatenation of both parts' filter gradients.
#[derive(Debug, Clone)]
struct ConvBiasTail {
    /// The convolution of `a` (its channels, `o` outputs).
    head: ConvKernel,
    /// The convolution of the tail (its channels, the same outputs).
    tail_kernel: ConvKernel,
    /// `[N, C_tail, H, W]`, contiguous, not tracked.
    tail: Tensor,
    /// `(-inf, inf)` for no clamp.
    bounds: (f64, f64),
}

/// Splits `[O, C_a + C_t, kh, kw]` filters into `[O, C_a, ..]` and `[O, C_t, ..]`.
fn split_filters<T: Copy>(w: &[T], o: usize, ca: usize, kk: usize) -> (Vec<T>, Vec<T>) {
    let per_out = w.len() / o.max(1);
    let (mut wa, mut wt) = (Vec::with_capacity(o * ca * kk), Vec::new());
    for filter in w.chunks_exact(per_out) {
        wa.extend_from_slice(&filter[..ca * kk]);
        wt.extend_from_slice(&filter[ca * kk..]);
    }
    (wa, wt)
}

impl ConvBiasTail {
    fn run<T: Real>(&self, a: &[T], w: &[T], bias: &[T], tail: &[T]) -> Vec<T> {
        let g = &self.head.g;
        let (wa, wt) = split_filters(w, self.head.o, g.c, g.kh * g.kw);
        let mut y = self.head.run(a, &wa, Some(bias));
        let yt = self.tail_kernel.run(tail, &wt, None);
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(yt.par_chunks(CHUNK))
            .for_each(|(y, t)| {
                super::simd::vectorized(
                    #[inline(always)]
                    || y.iter_mut().zip(t).for_each(|(y, t)| *y += *t),
                )
            });
        clamp_in_place(&mut y, self.bounds);
        y
    }
}

impl CustomOp3 for ConvBiasTail {
    fn name(&self) -> &'static str {
        "pixclass-conv2d-bias-tail"
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
        let out = with_cpu_storage(&self.tail, self.name(), |st, tail_layout| {
            Ok(dispatch!(
                (s1, l1) => a, (s2, l2) => w, (s3, l3) => bias, (st, tail_layout) => tail;
                self.run(a, w, bias, tail)
            ))
        })?;
        Ok((out, self.head.shape()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = clamp_gradient(res, grad, self.bounds)?.contiguous()?;
        let ca = self.head.g.c;
        let da = if a.track_op() {
            let wa = w.narrow(1, 0, ca)?.contiguous()?;
            Some(grad.apply_op2_no_bwd(&wa, &self.head.with(Kind::BwdData))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let dwa = a.apply_op2_no_bwd(&grad, &self.head.with(Kind::BwdFilter))?;
            let filter = self.tail_kernel.with(Kind::BwdFilter);
            let dwt = self.tail.apply_op2_no_bwd(&grad, &filter)?;
            Some(Tensor::cat(&[dwa, dwt], 1)?)
        } else {
            None
        };
        Ok((da, dw, bias_gradient(bias, &grad)?))
    }
}

/// [`ConvBiasTail`] on `x` and the constant `tail`: `weight` `[O, C_x +
/// C_tail, kh, kw]`, the bias clamped to `bounds`. The caller has checked
/// the shapes (the tail's batch and size equal `x`'s) and that the tail is
/// not tracked.
pub(crate) fn conv2d_bias_tail(
    (x, tail): (&Tensor, &Tensor),
    weight: &Tensor,
    bias: &Tensor,
    pad: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
    bounds: (f64, f64),
) -> Result<Tensor> {
    // The weight's input channels are both parts'; the geometry takes x's.
    let head = conv2d_kernel(x, weight, pad, stride, dilation)?;
    let tail_kernel = ConvKernel {
        g: Geometry {
            c: tail.dim(1)?,
            ..head.g
        },
        ..head
    };
    let op = ConvBiasTail {
        head,
        tail_kernel,
        tail: tail.contiguous()?,
        bounds,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// The geometry of a convolution of an `[N, C, H, W]` input with a `kh x kw`
/// kernel.
fn geometry(
    (n, c, h, w): (usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    ((pt, pb), (pl, pr)): ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
) -> Geometry {
    let ho = (h + pt + pb - (dilation * (kh - 1) + 1)) / stride + 1;
    let wo = (w + pl + pr - (dilation * (kw - 1) + 1)) / stride + 1;
    Geometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        stride,
        dilation,
        pad_top: pt,
        pad_left: pl,
        ho,
        wo,
    }
}

/// Convolution (groups 1) on the CPU, with an optional per-output-channel
/// bias added in the same pass, clamped to its bounds (`(-inf, inf)`: none).
///
/// # Shapes
/// `x` `[N, C, H, W]`, `weight` `[O, C, kh, kw]`, `bias` `[O]` -> `[N, O, ho, wo]`.
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<(&Tensor, (f64, f64))>,
    pad: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    apply(
        x,
        weight,
        bias,
        conv2d_kernel(x, weight, pad, stride, dilation)?,
    )
}

/// The forward kernel of a convolution of `x` with `weight`.
pub(crate) fn conv2d_kernel(
    x: &Tensor,
    weight: &Tensor,
    pad: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
) -> Result<ConvKernel> {
    let (o, _, kh, kw) = weight.dims4()?;
    let g = geometry(x.dims4()?, (kh, kw), pad, stride, dilation);
    Ok(ConvKernel {
        g,
        o,
        kind: Kind::Fwd,
    })
}

/// Runs `kernel` on (x, w), with the bias (and its clamp) fused in when
/// there is one.
fn apply(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<(&Tensor, (f64, f64))>,
    kernel: ConvKernel,
) -> Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some((b, bounds)) => x.apply_op3(&weight, &b.contiguous()?, ConvBias { kernel, bounds }),
        None => x.apply_op2(&weight, kernel),
    }
}

/// Transposed convolution (groups 1) on the CPU: the backward-data kernel of
/// the convolution that maps its output back to its input.
///
/// # Shapes
/// `x` `[N, Cin, H, W]`, `weight` `[Cin, Cout, k, k]`, `bias` `[Cout]` ->
/// `[N, Cout, (H-1)·s - 2p + d·(k-1) + op + 1, ...]`.
pub(crate) fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let kernel = conv_transpose2d_kernel(x, weight, padding, output_padding, stride, dilation)?;
    apply(x, weight, bias.map(|b| (b, crate::NO_CLAMP)), kernel)
}

/// The kernel of a transposed convolution of `x` with `weight` (the
/// backward-data kernel of the convolution it transposes).
pub(crate) fn conv_transpose2d_kernel(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<ConvKernel> {
    let (n, cin, h, w) = x.dims4()?;
    let (_, cout, kh, kw) = weight.dims4()?;
    let oh = (h - 1) * stride + dilation * (kh - 1) + output_padding + 1 - 2 * padding;
    let ow = (w - 1) * stride + dilation * (kw - 1) + output_padding + 1 - 2 * padding;
    let g = Geometry {
        n,
        c: cout,
        h: oh,
        w: ow,
        kh,
        kw,
        stride,
        dilation,
        pad_top: padding,
        pad_left: padding,
        ho: h,
        wo: w,
    };
    Ok(ConvKernel {
        g,
        o: cin,
        kind: Kind::BwdData,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::values;
    use super::*;

    /// The colourization nets' transposed convolutions seen from their
    /// backward: the stride-2 3x3 convolution of the output gradient.
    fn transposed_layer(n: usize, c: usize, side: usize) -> Geometry {
        geometry((n, c, side, side), (3, 3), ((1, 1), (1, 1)), 2, 1)
    }

    #[test]
    fn shared_columns_give_both_kernels_results_bit_for_bit() {
        let (c, o) = (5, 7);
        for n in [1, 3, FILTER_CHUNK, FILTER_CHUNK + 1, 3 * FILTER_CHUNK + 2] {
            for side in [8, 9] {
                let g = transposed_layer(n, c, side);
                assert!(shares_columns(&g, o), "{g:?}");
                let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                let img = to_f32(values(n * c * side * side, 1));
                let w = to_f32(values(o * c * 9, 2));
                let dy = to_f32(values(n * o * g.ho * g.wo, 3));
                let both = fwd_and_filter(&img, &w, &dy, &g, o);
                let y = fwd(&img, &w, None, &g, o);
                let dw = bwd_filter(&img, &dy, &g, o);
                assert_eq!(both.len(), y.len() + dw.len());
                assert!(
                    both[..y.len()] == y[..],
                    "forward differs, n {n}, side {side}"
                );
                assert!(
                    both[y.len()..] == dw[..],
                    "filter gradient differs, n {n}, side {side}"
                );
            }
        }
    }

    #[test]
    fn columns_are_shared_only_where_both_kernels_build_them() {
        assert!(!shares_columns(
            &super::super::testing::same3x3(4, 16, (8, 8), 1),
            16
        ));
        let pointwise = geometry((4, 8, 8, 8), (1, 1), ((0, 0), (0, 0)), 1, 1);
        assert!(!shares_columns(&pointwise, 8));
        // Stride 3 over a padded 3x3 image: one output, whose first row and
        // column of taps read only padding; the forward leaves those taps
        // out of its columns and the filter gradient keeps them.
        let dead_taps = geometry((4, 8, 3, 3), (3, 3), ((1, 1), (1, 1)), 3, 1);
        assert_eq!(live_taps(&dead_taps).len(), 4);
        assert!(!shares_columns(&dead_taps, 8));
        let empty = transposed_layer(0, 8, 8);
        assert!(!shares_columns(&empty, 8));
    }
}
