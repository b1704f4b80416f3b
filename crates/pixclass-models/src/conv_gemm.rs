//! Convolution and transposed convolution on the CPU as per-image GEMMs
//! (`gemm` crate, the one candle uses), parallel over the images of a batch.
//!
//! Three kernels cover both layers and both gradients:
//! - forward: `Y_n = W · im2col(X_n)`;
//! - backward-data: `dX_n = col2im(Wᵀ · dY_n)` (also the forward of a
//!   transposed convolution);
//! - backward-filter: `dW = Σ_n dY_n · im2col(X_n)ᵀ`.
//!
//! Working per image keeps the column matrix small (it stays in cache) and
//! writes outputs in `[N, C, H, W]` order with no transposes.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu_kernels::{contiguous_slice, dispatch, Geometry};

/// `c[m×n] = (accumulate ? c : 0) + a·b` with `c` given by (slice, row
/// stride; columns contiguous) and `a` `m×k`, `b` `k×n` by (slice, row
/// stride, column stride). Bounds are checked before the call, which makes
/// the unsafe GEMM call sound.
#[allow(unsafe_code, clippy::too_many_arguments)]
fn gemm_into<T: WithDType>(
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
    let (a, a_rs, a_cs) = a;
    let (b, b_rs, b_cs) = b;
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
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm: rhs out of bounds"
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three matrices lie inside their slices (checked above); `c`
    // is exclusively borrowed; T is f32 or f64 (checked by the callers).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
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

/// Threads for GEMMs inside one image: all of them when the batch is too
/// small to keep every core busy, else one (images run in parallel).
fn inner_threads(images: usize) -> usize {
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
fn col_ld(ohw: usize) -> usize {
    ohw.next_multiple_of(16) + 16
}

/// Every kernel tap `(ky, kx)` in row order.
fn all_taps(g: &Geometry) -> Vec<(usize, usize)> {
    (0..g.kh)
        .flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx)))
        .collect()
}

/// The column matrix of one image restricted to the kernel taps `taps`
/// (rows `(c, tap)` in that order): `[C·taps, ho·wo]`, rows `ld` apart; with
/// `parallel`, the channels are split across threads (for a batch of one
/// image).
fn im2col_taps<T: WithDType>(
    x: &[T],
    g: &Geometry,
    taps: &[(usize, usize)],
    out: &mut [T],
    ld: usize,
    parallel: bool,
) {
    let channel = |c: usize, rows: &mut [T]| {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        pulp::Arch::new().dispatch(Im2colChannel {
            plane,
            g,
            taps,
            rows,
            ld,
        })
    };
    let per_channel = taps.len() * ld;
    if per_channel == 0 {
        return; // no live tap: an empty column matrix
    }
    if parallel {
        out.par_chunks_mut(per_channel)
            .enumerate()
            .for_each(|(c, rows)| channel(c, rows));
    } else {
        for (c, rows) in out.chunks_mut(per_channel).enumerate() {
            channel(c, rows);
        }
    }
}

/// The column-matrix rows of one channel, compiled for the SIMD instruction
/// set the CPU has (`with_simd` is always inlined into pulp's dispatch; a
/// closure there is not, and would be left at the baseline SSE2).
struct Im2colChannel<'a, T> {
    plane: &'a [T],
    g: &'a Geometry,
    taps: &'a [(usize, usize)],
    rows: &'a mut [T],
    ld: usize,
}

impl<T: WithDType> pulp::WithSimd for Im2colChannel<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let ohw = self.g.ho * self.g.wo;
        for (&(ky, kx), dst) in self.taps.iter().zip(self.rows.chunks_mut(self.ld)) {
            im2col_row(self.plane, self.g, ky, kx, &mut dst[..ohw]);
        }
    }
}

/// One row of a column matrix: kernel tap `(ky, kx)` of one channel's plane.
#[inline(always)]
fn im2col_row<T: WithDType>(plane: &[T], g: &Geometry, ky: usize, kx: usize, dst: &mut [T]) {
    let (ylo, yhi) = g.valid_range(ky, g.pad_top, g.ho, g.h);
    let (xlo, xhi) = g.valid_range(kx, g.pad_left, g.wo, g.w);
    if xlo >= xhi || ylo >= yhi {
        dst.fill(T::zero()); // this kernel tap only ever reads padding
        return;
    }
    // Output rows whose input row is padding are zero...
    dst[..ylo * g.wo].fill(T::zero());
    dst[yhi * g.wo..].fill(T::zero());
    let ix0 = xlo * g.stride + kx * g.dilation - g.pad_left;
    for oy in ylo..yhi {
        let iy = oy * g.stride + ky * g.dilation - g.pad_top;
        let src = &plane[iy * g.w + ix0..(iy + 1) * g.w];
        let drow = &mut dst[oy * g.wo..(oy + 1) * g.wo];
        // ...and so are the columns left and right of the valid ones.
        drow[..xlo].fill(T::zero());
        drow[xhi..].fill(T::zero());
        strided_copy(&mut drow[xlo..xhi], src, g.stride);
    }
}

/// `dst[i] = src[i·stride]`. Stride 2 (every strided layer of the
/// colourization nets) is written so that it vectorises (two loads and a
/// shuffle per 8 values with AVX2).
#[inline(always)]
fn strided_copy<T: Copy>(dst: &mut [T], src: &[T], stride: usize) {
    match (stride, dst.split_last_mut()) {
        (_, None) => {}
        (1, _) => dst.copy_from_slice(&src[..dst.len()]),
        (2, Some((last, head))) => {
            // Pairs for all but the last value (which may end the row).
            for (d, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            *last = src[2 * head.len()];
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *d = *s;
            }
        }
    }
}

/// `dst[i·stride] += src[i]`, the adjoint of [`strided_copy`].
#[inline(always)]
fn strided_add<T: WithDType>(dst: &mut [T], src: &[T], stride: usize) {
    match (stride, src.split_last()) {
        (_, None) => {}
        (1, _) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += *s;
            }
        }
        (2, Some((last, head))) => {
            for (pair, s) in dst.chunks_exact_mut(2).zip(head) {
                pair[0] += *s;
            }
            dst[2 * head.len()] += *last;
        }
        _ => {
            for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
                *d += *s;
            }
        }
    }
}

/// The kernel taps that read at least one image pixel. With a dilation as
/// large as the image (DeepLab's atrous rates 24 and 36 on a 28x28 map)
/// most taps only ever read padding: their column-matrix rows are zero and
/// the forward GEMM can leave them out.
fn live_taps(g: &Geometry) -> Vec<(usize, usize)> {
    let live = |k: usize, pad: usize, out: usize, size: usize| {
        let (lo, hi) = g.valid_range(k, pad, out, size);
        lo < hi
    };
    (0..g.kh)
        .filter(|&ky| live(ky, g.pad_top, g.ho, g.h))
        .flat_map(|ky| {
            (0..g.kw)
                .filter(|&kx| live(kx, g.pad_left, g.wo, g.w))
                .map(move |kx| (ky, kx))
        })
        .collect()
}

/// Adds one image's column matrix (rows `ld` apart) back into the image
/// (overlaps summed).
fn col2im_image<T: WithDType>(cols: &[T], g: &Geometry, ld: usize, out: &mut [T]) {
    pulp::Arch::new().dispatch(Col2im { cols, g, ld, out })
}

/// [`col2im_image`] compiled for the CPU's SIMD instruction set (see
/// [`Im2colChannel`]).
struct Col2im<'a, T> {
    cols: &'a [T],
    g: &'a Geometry,
    ld: usize,
    out: &'a mut [T],
}

impl<T: WithDType> pulp::WithSimd for Col2im<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        col2im_image_impl(self.cols, self.g, self.ld, self.out)
    }
}

#[inline(always)]
fn col2im_image_impl<T: WithDType>(cols: &[T], g: &Geometry, ld: usize, out: &mut [T]) {
    out.fill(T::zero());
    for (row, src) in cols.chunks(ld).take(g.rows()).enumerate() {
        let c = row / (g.kh * g.kw);
        let ky = (row / g.kw) % g.kh;
        let kx = row % g.kw;
        let plane = &mut out[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (ylo, yhi) = g.valid_range(ky, g.pad_top, g.ho, g.h);
        let (xlo, xhi) = g.valid_range(kx, g.pad_left, g.wo, g.w);
        if xlo >= xhi {
            continue;
        }
        for oy in ylo..yhi {
            let iy = oy * g.stride + ky * g.dilation - g.pad_top;
            let prow = &mut plane[iy * g.w..(iy + 1) * g.w];
            let srow = &src[oy * g.wo..(oy + 1) * g.wo];
            let ix0 = xlo * g.stride + kx * g.dilation - g.pad_left;
            strided_add(&mut prow[ix0..], &srow[xlo..xhi], g.stride);
        }
    }
}

/// Adds `bias[c]` to plane `c` of one image (`[C, hw]`), while it is in cache.
fn add_bias<T: WithDType>(img: &mut [T], bias: Option<&[T]>, hw: usize) {
    if let Some(bias) = bias {
        for (plane, &b) in img.chunks_exact_mut(hw).zip(bias) {
            plane.iter_mut().for_each(|v| *v += b);
        }
    }
}

/// `Y[n] = W · im2col(X[n]) (+ bias)`: x `[N, C, H, W]`, w `[O, C, kh, kw]`,
/// bias `[O]` -> `[N, O, ho, wo]`.
fn fwd<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geometry, o: usize) -> Vec<T> {
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    let mut y = vec![T::zero(); g.n * o * ohw];
    let threads = inner_threads(g.n);
    if g.is_pointwise() {
        y.par_chunks_mut(o * ohw).enumerate().for_each(|(n, yn)| {
            let xn = &x[n * chw..(n + 1) * chw];
            gemm_into(
                o,
                ohw,
                ckk,
                (yn, ohw),
                (w, ckk, 1),
                (xn, ohw, 1),
                false,
                threads,
            );
            add_bias(yn, bias, ohw);
        });
        return y;
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
    y.par_chunks_mut(o * ohw).enumerate().for_each_init(
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
            gemm_into(
                o,
                ohw,
                k,
                (yn, ohw),
                (w, k, 1),
                (cols, ld, 1),
                false,
                threads,
            );
            add_bias(yn, bias, ohw);
        },
    );
    y
}

/// `dX[n] = col2im(Wᵀ · dY[n]) (+ bias)`: dy `[N, O, ho, wo]`, w `[O, C, kh, kw]`,
/// bias `[C]` (a transposed convolution's) -> `[N, C, H, W]`.
fn bwd_data<T: WithDType>(dy: &[T], w: &[T], bias: Option<&[T]>, g: &Geometry, o: usize) -> Vec<T> {
    let (ckk, ohw, chw) = (g.rows(), g.ho * g.wo, g.c * g.h * g.w);
    let mut dx = vec![T::zero(); g.n * chw];
    let threads = inner_threads(g.n);
    if g.is_pointwise() {
        // col2im is the identity: the GEMM writes the image directly.
        dx.par_chunks_mut(chw).enumerate().for_each(|(n, dxn)| {
            let dyn_ = &dy[n * o * ohw..(n + 1) * o * ohw];
            gemm_into(
                ckk,
                ohw,
                o,
                (dxn, ohw),
                (w, 1, ckk),
                (dyn_, ohw, 1),
                false,
                threads,
            );
            add_bias(dxn, bias, g.h * g.w);
        });
        return dx;
    }
    let ld = col_ld(ohw);
    dx.par_chunks_mut(chw).enumerate().for_each_init(
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
            col2im_image(cols, g, ld, dxn);
            add_bias(dxn, bias, g.h * g.w);
        },
    );
    dx
}

/// Images per partial sum of [`bwd_filter`]: a fixed partition, so the
/// summation order (and the result, bit for bit) never depends on thread
/// scheduling or the number of threads.
const FILTER_CHUNK: usize = 8;

/// `dW = Σ_n dY[n] · im2col(X[n])ᵀ`: x `[N, C, H, W]`, dy `[N, O, ho, wo]` -> `[O, C, kh, kw]`.
fn bwd_filter<T: WithDType>(x: &[T], dy: &[T], g: &Geometry, o: usize) -> Vec<T> {
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
    let mut out = vec![T::zero(); o * ckk];
    for p in &partials {
        for (a, b) in out.iter_mut().zip(p) {
            *a += *b;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// (x, w) -> y.
    Fwd,
    /// (dy, w) -> dx.
    BwdData,
    /// (x, dy) -> dw.
    BwdFilter,
}

/// One of the three kernels for a geometry `g` and `o` output channels.
#[derive(Debug, Clone, Copy)]
struct ConvKernel {
    g: Geometry,
    o: usize,
    kind: Kind,
}

impl ConvKernel {
    fn run<T: WithDType>(&self, a: &[T], b: &[T], bias: Option<&[T]>) -> Vec<T> {
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

    fn shape(&self) -> Shape {
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
            // y = conv_transpose(x, w) = bwd_data(x, w): dx = conv(dy, w), dw = bwd_filter(dy, x).
            Kind::BwdData => Ok((
                run(need_a, &grad, b, Kind::Fwd)?,
                run(need_b, &grad, a, Kind::BwdFilter)?,
            )),
            Kind::BwdFilter => candle_core::bail!("no second-order gradient for {}", self.name()),
        }
    }
}

/// A forward kernel (convolution or transposed convolution) with the layer's
/// bias added per output channel in the same pass: inputs (x, w, bias).
/// Its bias gradient is the per-channel sum of the output gradient.
#[derive(Debug, Clone, Copy)]
struct ConvBias(ConvKernel);

impl CustomOp3 for ConvBias {
    fn name(&self) -> &'static str {
        match self.0.kind {
            Kind::Fwd => "pixclass-conv2d-bias",
            _ => "pixclass-conv-transpose2d-bias",
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
        let c = self.0.out_channels();
        if l3.shape().elem_count() != c {
            candle_core::bail!(
                "{}: bias {:?} must have {c} values",
                self.name(),
                l3.shape().dims()
            );
        }
        let out =
            dispatch!((s1, l1) => a, (s2, l2) => b, (s3, l3) => bias; self.0.run(a, b, Some(bias)));
        Ok((out, self.0.shape()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (da, db) = CustomOp2::bwd(&self.0, a, b, res, grad)?;
        let dbias = bias
            .track_op()
            .then(|| {
                grad.contiguous()?
                    .apply_op1_no_bwd(&crate::cpu_kernels::ChannelSum)?
                    .reshape(bias.shape())
            })
            .transpose()?;
        Ok((da, db, dbias))
    }
}

/// Convolution (groups 1) on the CPU, with an optional per-output-channel
/// bias added in the same pass.
///
/// # Shapes
/// `x` `[N, C, H, W]`, `weight` `[O, C, kh, kw]`, `bias` `[O]` -> `[N, O, ho, wo]`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    pad: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (o, _, kh, kw) = weight.dims4()?;
    let ((pt, pb), (pl, pr)) = pad;
    let ho = (h + pt + pb - (dilation * (kh - 1) + 1)) / stride + 1;
    let wo = (w + pl + pr - (dilation * (kw - 1) + 1)) / stride + 1;
    let g = Geometry {
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
    };
    apply(
        x,
        weight,
        bias,
        ConvKernel {
            g,
            o,
            kind: Kind::Fwd,
        },
    )
}

/// Runs `kernel` on (x, w), with the bias fused in when there is one.
fn apply(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, kernel: ConvKernel) -> Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, ConvBias(kernel)),
        None => x.apply_op2(&weight, kernel),
    }
}

/// Transposed convolution (groups 1) on the CPU: the backward-data kernel of
/// the convolution that maps its output back to its input.
///
/// # Shapes
/// `x` `[N, Cin, H, W]`, `weight` `[Cin, Cout, k, k]`, `bias` `[Cout]` ->
/// `[N, Cout, (H-1)·s - 2p + d·(k-1) + op + 1, ...]`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
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
    apply(
        x,
        weight,
        bias,
        ConvKernel {
            g,
            o: cin,
            kind: Kind::BwdData,
        },
    )
}
