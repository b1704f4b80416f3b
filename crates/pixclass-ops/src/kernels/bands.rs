//! Stride-1 convolutions whose kernel taps read padding over much of the
//! output: DeepLab's ASPP branches (3x3, dilations 12, 24 and 36 on 28x28
//! or 65x65 features), where a tap `±24` away from the centre of a 28x28
//! map finds an image pixel for only 4 of the 28 output rows.
//!
//! The column matrix of [`super::im2col`] holds zeros for those positions
//! and the GEMM multiplies them. Here each live tap is its own GEMM over the
//! rectangle of outputs where it reads image pixels (its valid rows times
//! its valid columns): `Y[:, rect] += W[:, :, ky, kx] · X[:, rect shifted]`,
//! each tap's weights copied into a contiguous matrix and the shifted input
//! gathered per tap (or, for a tap that reads the image unshifted, used in
//! place). The products left out are exact zeros: the result equals the direct
//! sum up to the order of rounding. Only the forward pass: the frozen
//! DeepLab backbone never needs the gradients, which stay with the im2col
//! kernels.

use candle_core::WithDType;
use rayon::prelude::*;

use super::gemm::{gemm_into, inner_threads};
use super::im2col::{add_bias, live_taps};
use super::{zeros, Geometry};

/// The per-tap GEMMs are used when their multiply-adds are at most this
/// fraction of the im2col kernel's (which already leaves out taps that are
/// dead everywhere): nine thin GEMMs and their gathers cost more than one
/// large one, so a small saving is not worth them. ASPP at 224: 0.51
/// (dilation 12) and 0.18 (24); at 520: 0.77, 0.57 and 0.40.
const MAX_WORK: f64 = 0.8;

/// A kernel tap `(ky, kx)` and the output positions `[y0, y1) x [x0, x1)`
/// where it reads image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TapRect {
    ky: usize,
    kx: usize,
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
}

impl TapRect {
    fn area(&self) -> usize {
        (self.y1 - self.y0) * (self.x1 - self.x0)
    }
}

/// The live taps of `g` and their rectangles when the per-tap GEMMs pay
/// (see [`MAX_WORK`]); `None` for the im2col kernel. Depends on the
/// geometry only.
pub(crate) fn plan(g: &Geometry) -> Option<Vec<TapRect>> {
    if g.stride != 1 || g.is_pointwise() || g.ho == 0 || g.wo == 0 {
        return None;
    }
    let taps = live_taps(g);
    let rects: Vec<TapRect> = taps
        .iter()
        .map(|&(ky, kx)| {
            let (y0, y1) = g.valid_range(ky, g.pad_top, g.ho, g.h);
            let (x0, x1) = g.valid_range(kx, g.pad_left, g.wo, g.w);
            TapRect {
                ky,
                kx,
                y0,
                y1,
                x0,
                x1,
            }
        })
        .collect();
    let work: usize = rects.iter().map(TapRect::area).sum();
    let im2col = g.ho * g.wo * taps.len();
    // A lone tap that reads the image unshifted (dilation 36 on 28x28: the
    // centre) is one GEMM on the image itself, with no columns to gather.
    let unshifted = rects.len() == 1 && reads_in_place(g, &rects[0]);
    (unshifted || work as f64 <= MAX_WORK * im2col as f64).then_some(rects)
}

/// Whether tap `r` covers every output and reads the input pixel at the
/// same position: its input is the image as it is.
fn reads_in_place(g: &Geometry, r: &TapRect) -> bool {
    (g.ho, g.wo) == (g.h, g.w)
        && (r.y0, r.y1, r.x0, r.x1) == (0, g.ho, 0, g.wo)
        && r.ky * g.dilation == g.pad_top
        && r.kx * g.dilation == g.pad_left
}

/// `Y[n] = Σ_taps W_tap · shift_tap(x[n])` (+ bias) over the rectangles of
/// [`plan`]: x `[N, C, H, W]`, w `[O, C, kh, kw]` -> `[N, O, ho, wo]`.
pub(crate) fn conv<T: WithDType>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    g: &Geometry,
    o: usize,
    rects: &[TapRect],
) -> Vec<T> {
    let (kk, ohw, chw) = (g.kh * g.kw, g.ho * g.wo, g.c * g.h * g.w);
    let threads = inner_threads(g.n);
    // Each tap's filters `w[o][c][ky][kx]` as a contiguous `[O, C]` matrix:
    // read in place they lie 9 values apart, under two per cache line, for
    // the GEMMs' packing to read (once per tap and thread).
    let taps: Vec<Vec<T>> = rects
        .par_iter()
        .map(|r| {
            let tap = r.ky * g.kw + r.kx;
            w.chunks_exact(kk).map(|f| f[tap]).collect()
        })
        .collect();
    let mut y = zeros(g.n * o * ohw);
    y.par_chunks_mut(o * ohw).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(cols, out), (n, yn)| {
            let xn = &x[n * chw..(n + 1) * chw];
            for (r, wt) in rects.iter().zip(&taps) {
                let p = r.area();
                let wt = (wt.as_slice(), g.c, 1);
                if reads_in_place(g, r) {
                    gemm_into(o, p, g.c, (yn, ohw), wt, (xn, p, 1), true, threads);
                    continue;
                }
                cols.resize(g.c * p, T::zero());
                gather(xn, g, r, cols, threads > 1);
                if (r.x0, r.x1) == (0, g.wo) {
                    // Whole output rows: the rectangle is a contiguous run
                    // of every output plane, accumulated into in place.
                    gemm_into(
                        o,
                        p,
                        g.c,
                        (&mut yn[r.y0 * g.wo..], ohw),
                        wt,
                        (cols, p, 1),
                        true,
                        threads,
                    );
                    continue;
                }
                out.resize(o * p, T::zero());
                gemm_into(o, p, g.c, (out, p), wt, (cols, p, 1), false, threads);
                let bw = r.x1 - r.x0;
                for (oc, src) in out.chunks_exact(p).enumerate() {
                    let plane = &mut yn[oc * ohw..(oc + 1) * ohw];
                    for (i, line) in src.chunks_exact(bw).enumerate() {
                        let at = (r.y0 + i) * g.wo + r.x0;
                        for (d, s) in plane[at..at + bw].iter_mut().zip(line) {
                            *d += *s;
                        }
                    }
                }
            }
            add_bias(yn, bias, ohw, threads);
        },
    );
    y
}

/// The input that tap `r` reads for its rectangle, one row per channel
/// (`[C, area]`, positions in row order). Every read is inside the image.
/// With `parallel`, the channels are split across threads (a batch of one
/// image).
fn gather<T: WithDType>(xn: &[T], g: &Geometry, r: &TapRect, cols: &mut [T], parallel: bool) {
    let (bw, p) = (r.x1 - r.x0, r.area());
    let ix = r.x0 + r.kx * g.dilation - g.pad_left;
    let channel = |c: usize, row: &mut [T]| {
        let plane = &xn[c * g.h * g.w..(c + 1) * g.h * g.w];
        for (i, dst) in row.chunks_exact_mut(bw).enumerate() {
            let iy = r.y0 + i + r.ky * g.dilation - g.pad_top;
            dst.copy_from_slice(&plane[iy * g.w + ix..][..bw]);
        }
    };
    if parallel {
        cols.par_chunks_mut(p)
            .enumerate()
            .for_each(|(c, row)| channel(c, row));
    } else {
        for (c, row) in cols.chunks_mut(p).enumerate() {
            channel(c, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::same3x3;
    use super::*;

    /// ASPP's square 3x3 "same" geometry with dilation `d`.
    fn aspp(n: usize, c: usize, side: usize, d: usize) -> Geometry {
        same3x3(n, c, (side, side), d)
    }

    /// Multiply-adds per output channel and input channel, over all taps.
    fn work(rects: &[TapRect]) -> usize {
        rects.iter().map(TapRect::area).sum()
    }

    #[test]
    fn rectangles_count_exactly_the_taps_that_read_pixels() {
        // Dilation 24 on 28x28: a tap 24 off centre is live on 4 rows.
        let rects = plan(&aspp(1, 1, 28, 24)).expect("ASPP at 224 splits");
        let per_dim = 28 + 4 + 4;
        assert_eq!(work(&rects), per_dim * per_dim);
        // The centre tap covers the whole output.
        assert!(rects.contains(&TapRect {
            ky: 1,
            kx: 1,
            y0: 0,
            y1: 28,
            x0: 0,
            x1: 28
        }));
        // Dilation 12 on 65x65: 53 live rows off centre.
        let per_dim = 65 + 53 + 53;
        assert_eq!(
            work(&plan(&aspp(1, 1, 65, 12)).expect("splits")),
            per_dim * per_dim
        );
    }

    #[test]
    fn which_convolutions_are_split() {
        // ASPP at 224 and 520 (dilation 36 on 28x28 reads only the centre
        // tap, in place).
        for (side, d, want) in [
            (28, 12, true),
            (28, 24, true),
            (28, 36, true),
            (65, 12, true),
            (65, 24, true),
            (65, 36, true),
            (28, 1, false),
            (65, 2, false),
        ] {
            assert_eq!(plan(&aspp(1, 8, side, d)).is_some(), want, "{side} d={d}");
        }
        let strided = Geometry {
            stride: 2,
            ho: 14,
            wo: 14,
            ..aspp(1, 8, 28, 12)
        };
        assert!(plan(&strided).is_none());
    }

    #[test]
    fn matches_the_im2col_kernel() {
        use super::super::im2col::im2col_taps;
        // Two images, unequal sides, bias; a dilation that leaves bands of
        // every kind, and one that leaves only the centre tap (in place).
        for d in [6, 12] {
            let g = Geometry {
                h: 11,
                w: 9,
                ho: 11,
                wo: 9,
                ..aspp(2, 3, 11, d)
            };
            let o = 4;
            let val = |i: usize| ((i * 7919 % 1000) as f64) / 500.0 - 1.0;
            let x: Vec<f64> = (0..g.n * g.c * g.h * g.w).map(val).collect();
            let w: Vec<f64> = (0..o * g.c * 9).map(|i| val(i + 13)).collect();
            let bias = [0.5, -1.0, 2.0, 0.25];
            let rects = plan(&g).expect("splits");
            assert_eq!(rects.len(), if d == 6 { 9 } else { 1 }, "d={d}");
            let got = conv(&x, &w, Some(&bias), &g, o, &rects);
            let taps: Vec<(usize, usize)> =
                (0..3).flat_map(|a| (0..3).map(move |b| (a, b))).collect();
            let ohw = g.ho * g.wo;
            for n in 0..g.n {
                let mut cols = vec![0.0; g.c * 9 * ohw];
                im2col_taps(
                    &x[n * g.c * g.h * g.w..][..g.c * g.h * g.w],
                    &g,
                    &taps,
                    &mut cols,
                    ohw,
                    false,
                );
                for oc in 0..o {
                    for p in 0..ohw {
                        let want: f64 = (0..g.c * 9)
                            .map(|k| w[oc * g.c * 9 + k] * cols[k * ohw + p])
                            .sum::<f64>()
                            + bias[oc];
                        let have = got[(n * o + oc) * ohw + p];
                        assert!(
                            (have - want).abs() < 1e-12,
                            "d={d} {n} {oc} {p}: {have} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
