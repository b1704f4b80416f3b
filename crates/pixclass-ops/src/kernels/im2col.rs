//! Column matrices of convolutions: im2col (one image's patches as rows
//! `(channel, tap)`, restricted to the taps that read image pixels) and its
//! adjoint col2im, compiled for the CPU's SIMD instruction set. Stride-2
//! convolutions go through the image's four parity planes ([`Parity`]), so
//! that every copy and every addition is a contiguous run.

use candle_core::WithDType;
use rayon::prelude::*;

use super::simd::{deinterleave, interleave};
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
    let channel = |c: usize, rows: &mut [T], parity: &mut Vec<T>| {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        pulp::Arch::new().dispatch(Im2colChannel {
            plane,
            g,
            taps,
            rows,
            ld,
            parity,
        })
    };
    let per_channel = taps.len() * ld;
    if per_channel == 0 {
        return; // no live tap: an empty column matrix
    }
    if parallel {
        out.par_chunks_mut(per_channel)
            .enumerate()
            .for_each_init(Vec::new, |parity, (c, rows)| channel(c, rows, parity));
    } else {
        let mut parity = Vec::new();
        for (c, rows) in out.chunks_mut(per_channel).enumerate() {
            channel(c, rows, &mut parity);
        }
    }
}

/// The four parity planes of one channel's zero-padded image for a
/// stride-2 convolution (dilation 1): `Q[a][b][i][j] = padded[2i + a][2j + b]`
/// with `padded[r][q] = image[r - pad_top][q - pad_left]` (zero outside),
/// each `ph x pw`, enough for every tap. Tap `(ky, kx)` at output
/// `(oy, ox)` reads `padded[2oy + ky][2ox + kx]` =
/// `Q[ky % 2][kx % 2][oy + ky / 2][ox + kx / 2]`: a tap's column-matrix row
/// is a block of one parity plane, copied a whole output row at a time (a
/// strided gather of 8-16 values per output row cost more than the GEMM on
/// the colourization nets' small images), and col2im adds whole rows into
/// the planes, then interleaves them once.
#[derive(Debug, Clone, Copy)]
struct Parity {
    ph: usize,
    pw: usize,
}

impl Parity {
    /// The planes of `g`, where it is a stride-2 convolution (dilation 1)
    /// with pixels in and out.
    fn of(g: &Geometry) -> Option<Self> {
        let nonempty = g.h > 0 && g.w > 0 && g.ho > 0 && g.wo > 0;
        (g.stride == 2 && g.dilation == 1 && nonempty).then(|| Self {
            ph: g.ho + (g.kh - 1) / 2,
            pw: g.wo + (g.kw - 1) / 2,
        })
    }

    /// Values of the four planes.
    fn len(self) -> usize {
        4 * self.ph * self.pw
    }

    /// Offset of row `i` of plane `(a, b)`.
    fn row(self, a: usize, b: usize, i: usize) -> usize {
        ((2 * a + b) * self.ph + i) * self.pw
    }

    /// Offset of output row `oy` of tap `(ky, kx)`: `g.wo` values from
    /// here are its column-matrix row's `oy`-th output row.
    fn tap_row(self, ky: usize, kx: usize, oy: usize) -> usize {
        self.row(ky % 2, kx % 2, oy + ky / 2) + kx / 2
    }

    /// For input row `y` (padded row `y + pad_top`): its row parity `a`
    /// and plane row `i` (`None` past the planes: no tap reads it).
    #[inline(always)]
    fn place(self, g: &Geometry, y: usize) -> Option<(usize, usize)> {
        let r = y + g.pad_top;
        (r / 2 < self.ph).then_some((r % 2, r / 2))
    }

    /// Where input column `2m + p` goes (`p` 0 or 1): plane `b` of the
    /// padded column parity, index `m + j`; `(b, j)` for `p = 0` and
    /// `p = 1`.
    fn columns(g: &Geometry) -> [(usize, usize); 2] {
        [0, 1].map(|p| ((p + g.pad_left) % 2, (p + g.pad_left) / 2))
    }

    /// `Q` of one channel's `plane` into `q` (`len()` values; the padding
    /// positions must be zero, and stay so: the same positions are written
    /// for every channel).
    #[inline(always)]
    fn split<T: WithDType>(self, plane: &[T], g: &Geometry, q: &mut [T]) {
        let [(b0, j0), (_, j1)] = Self::columns(g);
        for (y, src) in plane.chunks_exact(g.w).enumerate() {
            let Some((a, i)) = self.place(g, y) else {
                continue;
            };
            let (p0, p1) =
                q[self.row(a, 0, 0)..self.row(a + 1, 0, 0)].split_at_mut(self.ph * self.pw);
            let (even, odd) = if b0 == 0 { (p0, p1) } else { (p1, p0) };
            let even = &mut even[i * self.pw..(i + 1) * self.pw][j0.min(self.pw)..];
            let odd = &mut odd[i * self.pw..(i + 1) * self.pw][j1.min(self.pw)..];
            let n = even.len().min(odd.len()).min(src.len() / 2);
            deinterleave(src, &mut even[..n], &mut odd[..n]);
            // The last column of an odd-width row, and any pixel whose
            // partner falls past its plane.
            for (x, &v) in src.iter().enumerate().skip(2 * n) {
                let dst = if x % 2 == 0 { &mut *even } else { &mut *odd };
                if let Some(d) = dst.get_mut(x / 2) {
                    *d = v;
                }
            }
        }
    }

    /// The inverse of [`Parity::split`] for a gradient: the image plane
    /// from the planes `q` (pixels no tap reads get zero).
    #[inline(always)]
    fn merge<T: WithDType>(self, q: &[T], g: &Geometry, plane: &mut [T]) {
        let [(b0, j0), (b1, j1)] = Self::columns(g);
        for (y, dst) in plane.chunks_exact_mut(g.w).enumerate() {
            let Some((a, i)) = self.place(g, y) else {
                dst.fill(T::zero());
                continue;
            };
            let row = |b: usize, j: usize| {
                &q[self.row(a, b, i)..self.row(a, b, i) + self.pw][j.min(self.pw)..]
            };
            let (even, odd) = (row(b0, j0), row(b1, j1));
            let n = even.len().min(odd.len()).min(dst.len() / 2);
            interleave(dst, &even[..n], &odd[..n], |v| v);
            for (x, d) in dst.iter_mut().enumerate().skip(2 * n) {
                let src = if x % 2 == 0 { even } else { odd };
                *d = src.get(x / 2).copied().unwrap_or(T::zero());
            }
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
    /// The [`Parity`] planes of a stride-2 convolution (kept zero between
    /// channels where no value is written).
    parity: &'a mut Vec<T>,
}

impl<T: WithDType> pulp::WithSimd for Im2colChannel<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let g = self.g;
        let ohw = g.ho * g.wo;
        if let Some(par) = Parity::of(g) {
            if self.parity.len() != par.len() {
                *self.parity = vec![T::zero(); par.len()];
            }
            par.split(self.plane, g, self.parity);
            let q = &*self.parity;
            for (&(ky, kx), dst) in self.taps.iter().zip(self.rows.chunks_mut(self.ld)) {
                for (oy, drow) in dst[..ohw].chunks_exact_mut(g.wo).enumerate() {
                    let start = par.tap_row(ky, kx, oy);
                    drow.copy_from_slice(&q[start..start + g.wo]);
                }
            }
            return;
        }
        for (&(ky, kx), dst) in self.taps.iter().zip(self.rows.chunks_mut(self.ld)) {
            im2col_row(self.plane, g, ky, kx, &mut dst[..ohw]);
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

/// `dst[i] = src[i·stride]`. Stride 2 (here only dilated: undilated stride
/// 2 takes the [`Parity`] planes) is written so that it vectorises (two
/// loads and a shuffle per 8 values with AVX2).
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
    let op = Col2im { cols, g, ld, out };
    if Parity::of(g).is_some() {
        // Unit-stride adds into the parity planes, then the planes
        // interleaved: the widest instruction set (the interleave compiles
        // to AVX-512 shuffles).
        pulp::Arch::new().dispatch(op)
    } else {
        // Strided adds: no AVX-512 scatter.
        super::simd::dispatch_without_scatter(op)
    }
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
    if let Some(par) = Parity::of(g) {
        let mut q = vec![T::zero(); par.len()];
        let kk = g.kh * g.kw;
        for (rows, plane) in cols.chunks(ld * kk).zip(out.chunks_exact_mut(g.h * g.w)) {
            q.fill(T::zero());
            for (tap, src) in rows.chunks(ld).enumerate() {
                let (ky, kx) = (tap / g.kw, tap % g.kw);
                for (oy, srow) in src[..g.ho * g.wo].chunks_exact(g.wo).enumerate() {
                    let start = par.tap_row(ky, kx, oy);
                    for (d, &v) in q[start..start + g.wo].iter_mut().zip(srow) {
                        *d += v;
                    }
                }
            }
            par.merge(&q, g, plane);
        }
        return;
    }
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
    let add = |(plane, &b): (&mut [T], &T)| {
        super::simd::vectorized(
            #[inline(always)]
            || plane.iter_mut().for_each(|v| *v += b),
        )
    };
    if threads > 1 {
        img.par_chunks_exact_mut(hw).zip(bias).for_each(add);
    } else {
        img.chunks_exact_mut(hw).zip(bias).for_each(add);
    }
}
