//! Dilated stride-1 3x3 convolutions with "same" padding (padding =
//! dilation `d`: DeepLab's ResNet stages 3 and 4 and its ASPP branches) as
//! undilated ones, so that they too take the Winograd kernels.
//!
//! Output pixel `(d·i + p, d·j + q)` reads only input pixels
//! `(d·(i + ky - 1) + p, d·(j + kx - 1) + q)`: those of the same phase
//! `(p, q)`. Each of the `d²` phase sub-images is thus an independent 3x3,
//! padding-1 convolution of an `⌈h/d⌉ x ⌈w/d⌉` image (space-to-batch, as
//! TensorFlow computes atrous convolutions), and the `N·d²` of them are one
//! batch for [`winograd`]. Phases shorter than `⌈h/d⌉` are padded with
//! zeros at the end: a zero row or column is exactly what the padded
//! convolution reads there, and the outputs computed at padded positions are
//! dropped (forward, backward-data) or meet a zero output gradient
//! (weight gradient). All three passes therefore equal the direct sum up to
//! Winograd's rounding. A single image becomes `d²` of them, which also
//! gives batch-1 forwards a batch to split.

use candle_core::WithDType;
use rayon::prelude::*;

use super::simd::Real;
use super::winograd::{self, Filters};
use super::{zeros, Geometry};

/// Phase images smaller than this (in either dimension) stay with the
/// im2col kernel: their 2x2 tiles are too few per phase and padded too
/// much (7x7 phases are 8x8 tiles), and im2col leaves out the taps that read
/// only padding (large ASPP dilations). Measured on 2 cores: stage 4 of
/// ResNet-101 at 224 (7x7 phases, 512 channels) 1.15x slower by Winograd at
/// batch 8, ASPP's dilation 12 at 520 (6x6 phases) no faster. Again with
/// the faster filter transform (minimum 4, alternating runs): stage 4 at
/// 224, one image, 39-54 ms against 37 ms; the ASPP at 520 270-313 ms
/// against 191-196 ms.
const MIN_PHASE: usize = 8;

/// Fewer 2x2 output tiles than this over all phase images: the 16 GEMMs
/// are too short for the transforms to pay, and im2col is used. One
/// 224x224 image through stage 3 of DeepLab's ResNet-101 has 196 (4 phase
/// images of 14x14): measured on 2 cores, alternating runs, its 3x3
/// convolutions took 96-106 ms per forward by Winograd against 113-124 ms
/// by im2col (1.1-1.3x slower before the filter transform wrote its output
/// in L1-friendly order); fewer tiles were not measured. Batch 8 at 224
/// (1568 tiles) was 1.1-1.9x faster, one image at 520 (stages 3 and 4:
/// 1156 and 1296 tiles) 1.4-2x.
const MIN_TILES: usize = 192;

/// Whether `g` (`cin` input, `cout` output channels) is a dilated 3x3
/// "same" convolution computed here: stride 1, dilation `d >= 2`, padding
/// `d`, phase images of at least [`MIN_PHASE`] pixels a side, at least
/// [`MIN_TILES`] tiles, and the channel counts the Winograd kernel needs. Depends on the geometry only,
/// never on the number of threads.
pub(crate) fn applies(g: &Geometry, cin: usize, cout: usize) -> bool {
    let d = g.dilation;
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && d >= 2
        && g.pad_top == d
        && g.pad_left == d
        && (g.ho, g.wo) == (g.h, g.w)
        && g.h.div_ceil(d) >= MIN_PHASE
        && g.w.div_ceil(d) >= MIN_PHASE
        && g.n * d * d * g.h.div_ceil(2 * d) * g.w.div_ceil(2 * d) >= MIN_TILES
        && winograd::applies(&phase_geometry(g, cin), cin, cout)
}

/// The undilated convolution of one phase image (`c` channels).
fn phase_geometry(g: &Geometry, c: usize) -> Geometry {
    let (hp, wp) = (g.h.div_ceil(g.dilation), g.w.div_ceil(g.dilation));
    Geometry {
        n: g.n * g.dilation * g.dilation,
        c,
        h: hp,
        w: wp,
        dilation: 1,
        pad_top: 1,
        pad_left: 1,
        ho: hp,
        wo: wp,
        ..*g
    }
}

/// The sizes of a batch of images and of its phase images.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// Images.
    n: usize,
    /// Channels.
    c: usize,
    /// Image height and width.
    h: usize,
    w: usize,
    /// Dilation: `d²` phases per image.
    d: usize,
    /// Phase image height and width (`⌈h/d⌉`, `⌈w/d⌉`).
    hp: usize,
    wp: usize,
}

impl Phases {
    fn new((n, c): (usize, usize), (h, w): (usize, usize), d: usize) -> Self {
        Self {
            n,
            c,
            h,
            w,
            d,
            hp: h.div_ceil(d),
            wp: w.div_ceil(d),
        }
    }

    /// `[N, C, h, w]` -> `[N·d², C, hp, wp]`, phase `(p, q)` of image `i`
    /// being batch entry `(i·d + p)·d + q`, zero where the phase is shorter.
    fn split<T: WithDType>(self, x: &[T]) -> Vec<T> {
        let Self {
            c, h, w, d, hp, wp, ..
        } = self;
        let mut out = zeros(self.n * d * d * c * hp * wp);
        out.par_chunks_mut(hp * wp)
            .enumerate()
            .for_each(|(k, plane)| {
                let (b, ch) = (k / c, k % c);
                let (i, p, q) = (b / (d * d), (b / d) % d, b % d);
                let src = &x[(i * c + ch) * h * w..][..h * w];
                for (r, row) in plane.chunks_exact_mut(wp).enumerate() {
                    let y = r * d + p;
                    if y >= h {
                        break;
                    }
                    let line = src[y * w..][..w].iter().skip(q).step_by(d);
                    for (v, &s) in row.iter_mut().zip(line) {
                        *v = s;
                    }
                }
            });
        out
    }

    /// The inverse of [`Self::split`], dropping the padding.
    fn merge<T: WithDType>(self, y: &[T]) -> Vec<T> {
        let Self {
            c, h, w, d, hp, wp, ..
        } = self;
        let mut out = zeros(self.n * c * h * w);
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(k, plane)| {
                let (i, ch) = (k / c, k % c);
                for (yy, row) in plane.chunks_exact_mut(w).enumerate() {
                    let (r, p) = (yy / d, yy % d);
                    // Row `r` of phase `(p, q)` fills columns q, q + d, ...
                    for q in 0..d {
                        let b = (i * d + p) * d + q;
                        let src = &y[((b * c + ch) * hp + r) * wp..][..wp];
                        for (v, &s) in row.iter_mut().skip(q).step_by(d).zip(src) {
                            *v = s;
                        }
                    }
                }
            });
        out
    }
}

/// [`winograd::conv3x3`] with dilation `d` and padding `d`: x
/// `[N, cin, h, w]` -> `[N, cout, h, w]`.
pub(crate) fn conv3x3<T: WithDType>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    filters: Filters,
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
    d: usize,
) -> Vec<T> {
    let input = Phases::new((n, cin), (h, wd), d);
    let y = winograd::conv3x3(
        &input.split(x),
        w,
        bias,
        filters,
        (n * d * d, cin, cout),
        (input.hp, input.wp),
    );
    Phases { c: cout, ..input }.merge(&y)
}

/// [`winograd::filter_grad3x3`] with dilation `d` and padding `d`: x
/// `[N, cin, h, w]`, dy `[N, cout, h, w]` -> dW `[cout, cin, 3, 3]`.
pub(crate) fn filter_grad3x3<T: Real>(
    x: &[T],
    dy: &[T],
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
    d: usize,
) -> Vec<T> {
    let input = Phases::new((n, cin), (h, wd), d);
    let output = Phases { c: cout, ..input };
    winograd::filter_grad3x3(
        &input.split(x),
        &output.split(dy),
        (n * d * d, cin, cout),
        (input.hp, input.wp),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_adjoint, assert_biased, direct3x3 as direct, dot, same3x3 as geometry, values,
    };
    use super::*;

    #[test]
    fn which_convolutions_are_split_into_phases() {
        // DeepLab's ResNet-101 (stage 3: d=2, 256 channels; stage 4: d=4,
        // 512; ASPP: d=12, 2048 -> 256; stage 3 at 24x24: 144 tiles), and
        // the shapes of the integration test
        // `dilated_same_convs_taken_by_winograd_match_the_portable_ones`.
        let cases = [
            (geometry(1, 256, (65, 65), 2), 256, true),
            (geometry(1, 512, (65, 65), 4), 512, true),
            (geometry(8, 256, (28, 28), 2), 256, true),
            (geometry(1, 256, (28, 28), 2), 256, true),
            (geometry(1, 256, (24, 24), 2), 256, false),
            (geometry(8, 512, (28, 28), 4), 512, false),
            (geometry(1, 2048, (65, 65), 12), 256, false),
            (geometry(1, 8, (63, 64), 2), 9, true),
            (geometry(2, 8, (48, 50), 3), 9, true),
            (geometry(2, 4, (48, 50), 3), 9, false),
        ];
        for (g, cout, want) in cases {
            assert_eq!(applies(&g, g.c, cout), want, "{g:?} -> {cout}");
        }
        // Not "same" padding, or stride 2: never.
        let g = geometry(8, 256, (64, 64), 2);
        assert!(!applies(&Geometry { pad_top: 1, ..g }, 256, 256));
        assert!(!applies(&Geometry { stride: 2, ..g }, 256, 256));
    }

    #[test]
    fn split_then_merge_is_the_identity() {
        for &(h, w, d) in &[(8, 8, 2), (9, 13, 2), (10, 7, 3), (5, 5, 4)] {
            let p = Phases::new((2, 3), (h, w), d);
            let x = values(2 * 3 * h * w, 11);
            assert_eq!(p.merge(&p.split(&x)), x, "{h}x{w} d={d}");
        }
    }

    #[test]
    fn all_three_passes_match_the_direct_dilated_sum() {
        // Sizes divisible by d and not (padded phases), one image and two.
        for &(n, cin, cout, h, w, d) in &[
            (1, 8, 9, 8, 8, 2),
            (2, 9, 8, 9, 11, 2),
            (1, 8, 8, 13, 12, 3),
            (1, 10, 8, 16, 17, 4),
        ] {
            let x = values(n * cin * h * w, 1);
            let wt = values(cout * cin * 9, 2);
            let bias = values(cout, 3);
            let want = direct(&x, &wt, (n, cin, cout), (h, w), d);
            let got = conv3x3(
                &x,
                &wt,
                Some(&bias),
                Filters::Forward,
                (n, cin, cout),
                (h, w),
                d,
            );
            let what = format!("{n}x{cin}x{h}x{w} d={d}");
            assert_biased(&got, &want, &bias, h * w, &what);
            // Backward-data and the weight gradient: the adjoints,
            // <conv(x, w), dy> = <x, bwd_data(dy, w)> = <dW(x, dy), w>.
            let dy = values(n * cout * h * w, 4);
            let dx = conv3x3(
                &dy,
                &wt,
                None,
                Filters::BackwardData,
                (n, cout, cin),
                (h, w),
                d,
            );
            let dw = filter_grad3x3(&x, &dy, (n, cin, cout), (h, w), d);
            let lhs = dot(&want, &dy);
            assert_adjoint(lhs, dot(&x, &dx), &format!("backward-data {what}"));
            assert_adjoint(lhs, dot(&dw, &wt), &format!("weight {what}"));
        }
    }
}
