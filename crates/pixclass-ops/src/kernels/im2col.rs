//! Column matrices of convolutions: im2col (one image's patches as rows
//! `(channel, tap)`, restricted to the taps that read image pixels) and its
//! adjoint col2im, compiled for the CPU's SIMD instruction set.

use candle_core::WithDType;
use rayon::prelude::*;

use super::Geometry;

/// Every kernel tap `(ky, kx)` in row order.
pub(crate) fn all_taps(g: &Geometry) -> Vec<(usize, usize)> {
    (0..g.kh)
        .flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx)))
        .collect()
}

/// The column matrix of one image restricted to the kernel taps `taps`
/// (rows `(c, tap)` in that order): `[C·taps, ho·wo]`, rows `ld` apart; with
/// `parallel`, the channels are split across threads (for a batch of one
/// image).
pub(crate) fn im2col_taps<T: WithDType>(
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
pub(crate) fn live_taps(g: &Geometry) -> Vec<(usize, usize)> {
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
pub(crate) fn col2im_image<T: WithDType>(cols: &[T], g: &Geometry, ld: usize, out: &mut [T]) {
    // Strided adds: no AVX-512 scatter.
    super::simd::dispatch_without_scatter(Col2im { cols, g, ld, out })
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

/// Adds `bias[c]` to plane `c` of one image (`[C, hw]`), while it is in
/// cache; on `threads > 1` (a batch smaller than the thread pool, whose
/// images are not processed in parallel) the planes are shared out over
/// the threads, so that a single image's bias is not one thread's work.
pub(crate) fn add_bias<T: WithDType>(img: &mut [T], bias: Option<&[T]>, hw: usize, threads: usize) {
    let Some(bias) = bias else { return };
    let add = |(plane, &b): (&mut [T], &T)| plane.iter_mut().for_each(|v| *v += b);
    if threads > 1 {
        img.par_chunks_exact_mut(hw).zip(bias).for_each(add);
    } else {
        img.chunks_exact_mut(hw).zip(bias).for_each(add);
    }
}
