//! Winograd F(2x2, 3x3) for the stride-1, padding-1, 3x3 convolutions
//! (PoolUpsampleNet's but the 1-channel first, the UNet's last layer, the
//! 3x3 convolutions of ResNet's first two stages; DeepLab dilates the rest):
//! 16 multiplications per 2x2 output tile and channel pair instead of 36, so
//! 2.25x fewer FLOPs in the GEMMs, which is where the time of those layers
//! goes.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016):
//! with the 4x4 input tile `d`, the 3x3 filter `g` and
//! `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`,
//! `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`, the
//! 2x2 output tile is `Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A`. The channel sum of
//! each of the 16 positions ξ of the transformed tile is one GEMM,
//! `M_ξ = U_ξ · V_ξ` (`U_ξ` `[O, C]` filters, `V_ξ` `[C, tiles]` inputs), over
//! the tiles of a block of images at once: small images have few tiles, a
//! block of several gives the GEMMs a long dimension, and its transformed
//! inputs and outputs still stay in a core's L2. The transforms run as flat
//! loops over whole images (see [`InputTransform`]).
//!
//! The same kernel computes the backward-data pass of such a convolution:
//! `dX = conv(dY, W')` with `W'[c][o] = W[o][c]` rotated by 180° and the same
//! padding; [`filter_grad3x3`] is the weight gradient, the forward's adjoint
//! over the same tiles. The arithmetic differs from the direct sum only in
//! rounding (the transforms add and halve; the tests bound the difference),
//! and which kernel runs never depends on the number of threads.

use candle_core::WithDType;
use rayon::prelude::*;

use super::gemm::{gemm_abt, gemm_into, inner_threads};
use super::output::{output, Slots};
use super::scratch::Scratch;
use super::simd::{deinterleave, interleave, Real};
use super::{zeros, Geometry};

/// Tiles per block of images (at most: a block holds at least one image;
/// a 32x32 image has 272 as laid out): the transformed inputs and outputs of
/// a block of the colourization nets' layers stay within a core's L2.
const BLOCK_TILES: usize = 256;

/// Tiles per block (at most, again at least one image) where either side
/// has [`WIDE_CHANNELS`] or more: ResNet-101's 256- and 512-channel layers.
/// Their block's transformed values no longer fit L2 whatever the block,
/// and the GEMMs and transforms of two 14x14 phase images (112 tiles) were
/// faster than those of four (224) or one (56). Measured on 2 cores,
/// DeepLab's stage 3 at 224, batch 8, alternating runs: 505-535 ms with
/// blocks of 112 tiles against 570-617 with 224 and 557-613 with 56.
const WIDE_BLOCK_TILES: usize = 128;

/// See [`WIDE_BLOCK_TILES`]; the colourization nets' layers (at most 64
/// channels) are below it.
const WIDE_CHANNELS: usize = 128;

/// Images per block for `per_image` tiles an image and `channels` (the
/// larger side), at least one and at most `per_thread`.
fn block_images(per_image: usize, channels: usize, per_thread: usize) -> usize {
    let tiles = if channels >= WIDE_CHANNELS {
        WIDE_BLOCK_TILES
    } else {
        BLOCK_TILES
    };
    (tiles / per_image).clamp(1, per_thread.max(1))
}

/// Fewer channels than this on either side (the 1-channel first layer):
/// the GEMMs are too thin for the transforms to pay.
const MIN_CHANNELS: usize = 8;

/// A single image goes to the im2col kernel: its 16 thin GEMMs do not split
/// well across threads. (A fixed rule, not the thread count: the same
/// convolution takes the same kernel, and rounds the same, on every machine.)
const MIN_BATCH: usize = 2;

/// Whether `g` (with `cin` input and `cout` output channels) is a convolution
/// this kernel computes: 3x3, stride 1, dilation 1, padding 1, output the
/// size of the input, [`MIN_CHANNELS`] and [`MIN_BATCH`] met.
pub(crate) fn applies(g: &Geometry, cin: usize, cout: usize) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && g.pad_top == 1
        && g.pad_left == 1
        && (g.ho, g.wo) == (g.h, g.w)
        && g.h > 0
        && g.w > 0
        && cin >= MIN_CHANNELS
        && cout >= MIN_CHANNELS
        && g.n >= MIN_BATCH
}

/// The filter between input channel `c` and output channel `o`, row-major
/// 3x3, of a forward convolution (`w` `[O, C, 3, 3]`) or of the backward-data
/// pass of one (`w` `[C, O, 3, 3]` read transposed and rotated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filters {
    /// `w[o][c]` as it is.
    Forward,
    /// `w[c][o]` rotated by 180°.
    BackwardData,
}

/// `G g Gᵀ` of every filter: `U[o][ξ][c]`, so that `U_ξ` is an `[O, C]`
/// matrix with row stride `16·C`. Output channels are transformed in
/// parallel, and the 16 positions of one output channel are written 1 KB
/// (256 input channels) apart, not a whole `U_ξ` apart: with `U[ξ][o][c]`
/// the 16 stores of a filter went to addresses a multiple of 4 KB apart,
/// one L1 set, and transforming ResNet-101's 256x256 filters took 3.4 ms,
/// as long as the Winograd GEMMs of one image.
fn transform_filters<T: WithDType>(w: &[T], cin: usize, cout: usize, filters: Filters) -> Vec<T> {
    let mut u = zeros(16 * cout * cin);
    u.par_chunks_mut(16 * cin).enumerate().for_each(|(o, uo)| {
        pulp::Arch::new().dispatch(FilterTransform {
            w,
            cin,
            cout,
            o,
            filters,
            uo,
        })
    });
    u
}

/// Input channels per block of [`FilterTransform`].
const FILTER_BLOCK: usize = 64;

/// The filters of output channel `o` into `uo` (`U[o]`, `16·cin` values),
/// compiled for the CPU's SIMD instruction set: a block of
/// [`FILTER_BLOCK`] input channels at a time, its 9 taps gathered into
/// per-tap arrays, then both stages of `G g Gᵀ` as loops over the
/// channels, which vectorise (one filter at a time ran scalar, ~3 % of a
/// ResNet-101 forward at batch 1, whose phase images take this kernel).
/// The same additions and halvings in the same order as one filter at a
/// time: the same values, bit for bit.
struct FilterTransform<'a, T> {
    w: &'a [T],
    cin: usize,
    cout: usize,
    o: usize,
    filters: Filters,
    uo: &'a mut [T],
}

impl<T: WithDType> pulp::WithSimd for FilterTransform<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self {
            w,
            cin,
            cout,
            o,
            filters,
            uo,
        } = self;
        let half = T::from_f64(0.5);
        for c0 in (0..cin).step_by(FILTER_BLOCK) {
            let n = FILTER_BLOCK.min(cin - c0);
            let mut g = [[T::zero(); FILTER_BLOCK]; 9];
            for (ci, c) in (c0..c0 + n).enumerate() {
                for (i, tap) in g.iter_mut().enumerate() {
                    tap[ci] = match filters {
                        Filters::Forward => w[(o * cin + c) * 9 + i],
                        Filters::BackwardData => w[(c * cout + o) * 9 + 8 - i],
                    };
                }
            }
            // G g: 4x3, each entry an array over the block's channels.
            let mut t = [[[T::zero(); FILTER_BLOCK]; 3]; 4];
            for j in 0..3 {
                let (a, b, e) = (&g[j], &g[3 + j], &g[6 + j]);
                for ci in 0..FILTER_BLOCK {
                    t[0][j][ci] = a[ci];
                    t[1][j][ci] = (a[ci] + b[ci] + e[ci]) * half;
                    t[2][j][ci] = (a[ci] - b[ci] + e[ci]) * half;
                    t[3][j][ci] = e[ci];
                }
            }
            // (G g) Gᵀ: 4x4, position (i, j) to `uo[(4i + j)·cin + c]`.
            for (i, [a, b, e]) in t.iter().enumerate() {
                let at = |j: usize| (4 * i + j) * cin + c0;
                uo[at(0)..at(0) + n].copy_from_slice(&a[..n]);
                for (k, v) in uo[at(1)..at(1) + n].iter_mut().enumerate() {
                    *v = (a[k] + b[k] + e[k]) * half;
                }
                for (k, v) in uo[at(2)..at(2) + n].iter_mut().enumerate() {
                    *v = (a[k] - b[k] + e[k]) * half;
                }
                uo[at(3)..at(3) + n].copy_from_slice(&e[..n]);
            }
        }
    }
}

/// The 3x3 convolution (padding 1) of `x` `[N, cin, h, w]` with the filters
/// of `w` read as `filters` says, plus `bias[o]`: `[N, cout, h, w]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3<T: WithDType>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    filters: Filters,
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
) -> Vec<T> {
    let u = transform_filters(w, cin, cout, filters);
    let per_image = Tiles::new(1, h, wd).per_image();
    // Blocks of whole images, at least one per thread.
    let images = block_images(
        per_image,
        cin.max(cout),
        n.div_ceil(rayon::current_num_threads()),
    );
    let blocks = n.div_ceil(images);
    let threads = inner_threads(blocks);
    // Each job's transformed inputs and GEMM outputs, reused from block to
    // block (both are overwritten entirely).
    output(n * cout * h * wd, images * cout * h * wd, |blocks| {
        blocks.enumerate().for_each_init(
            || (Scratch::take(), Scratch::take()),
            |(v, m), (b, yb)| {
                let nb = yb.len() / (cout * h * wd);
                let xb = &x[b * images * cin * h * wd..][..nb * cin * h * wd];
                let t = Tiles::new(nb, h, wd);
                let tb = t.len();
                let v = transform_inputs(xb, cin, t, v);
                let m = m.values(16 * cout * tb);
                for xi in 0..16 {
                    gemm_into(
                        cout,
                        tb,
                        cin,
                        (&mut m[xi * cout * tb..(xi + 1) * cout * tb], tb),
                        (&u[xi * cin..], 16 * cin, 1),
                        (&v[xi * cin * tb..(xi + 1) * cin * tb], tb, 1),
                        false,
                        threads,
                    );
                }
                transform_outputs(m, bias, yb, cout, t);
            },
        )
    })
}

/// `a - b`, `a + b` into `out` (equal lengths: the loops vectorise).
#[inline(always)]
fn sub_into<T: WithDType>(out: &mut [T], a: &[T], b: &[T]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x - y;
    }
}

#[inline(always)]
fn add_into<T: WithDType>(out: &mut [T], a: &[T], b: &[T]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `out = a + b + c` and `out = a - b - c`.
#[inline(always)]
fn add3_into<T: WithDType>(out: &mut [T], a: &[T], b: &[T], c: &[T]) {
    for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x + y + z;
    }
}

#[inline(always)]
fn sub3_into<T: WithDType>(out: &mut [T], a: &[T], b: &[T], c: &[T]) {
    for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x - y - z;
    }
}

/// Blocks of [`BLOCK_TILES`] per partial sum of [`filter_grad3x3`] where
/// the `gemm` crate runs its GEMMs: a fixed partition of the batch, so that
/// the weight gradient is the same bit for bit whatever the number of
/// threads.
const FILTER_BLOCKS: usize = 4;

/// Weight-gradient outputs per position (`cout · cin`) up to which
/// [`filter_grad3x3`] runs [`gemm_abt`] instead of the `gemm` crate: the
/// colourization nets' 24→24 and 32→24 layers (their weight gradients
/// took 8.0-8.5 ms a step with the crate, 6.1-6.9 with [`gemm_abt`]).
/// At 32→64 the crate's kernels are full and it was faster (4.8-5.1 ms
/// against 5.3-6.6).
const ABT_MAX_OUTPUTS: usize = 1024;

/// Transformed values (inputs and output gradients) per partial sum where
/// [`filter_grad3x3`] runs [`gemm_abt`]: each such chunk of images is
/// transformed at once (3 MB of f32, in L3; each GEMM's operands fit L2)
/// and its GEMMs sum over all of its tiles, so their lane sums are added
/// once per chunk. Three 32x32 images at 24 channels each side; for one,
/// the lane sums cost more than the larger transforms save.
const ABT_CHUNK_VALUES: usize = 16 * 48 * 1024;

/// The weight gradient of [`conv3x3`] (forward filters): x `[N, cin, h, w]`,
/// dy `[N, cout, h, w]` -> dW `[cout, cin, 3, 3]`.
///
/// The forward is `y_t = Aᵀ [Σ_c U ⊙ V_t] A` per tile `t`, linear in
/// `U = G g Gᵀ`; its adjoint is `dU_ξ = Σ_t (A dy_t Aᵀ)_ξ · V_ξ,t` (one GEMM
/// per ξ, the tiles the long inner dimension) and `dW = Gᵀ dU G`.
pub(crate) fn filter_grad3x3<T: Real>(
    x: &[T],
    dy: &[T],
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
) -> Vec<T> {
    let per_image = Tiles::new(1, h, wd).per_image();
    // Images per block, blocks per chunk (a fixed partition of the batch).
    let abt = cout * cin <= ABT_MAX_OUTPUTS;
    let (images, blocks) = if abt {
        let tiles = ABT_CHUNK_VALUES / (16 * (cin + cout));
        ((tiles / per_image).max(1), 1)
    } else {
        ((BLOCK_TILES / per_image).max(1), FILTER_BLOCKS)
    };
    let chunk = images * blocks;
    let chunks = n.div_ceil(chunk);
    let threads = inner_threads(chunks);
    let (xs, ys) = (cin * h * wd, cout * h * wd);
    let partials: Vec<Vec<T>> = (0..chunks)
        .into_par_iter()
        .map_init(
            || (Scratch::take(), Scratch::take()),
            |(vbuf, gbuf), k| {
                let mut du = vec![T::zero(); 16 * cout * cin];
                let end = ((k + 1) * chunk).min(n);
                for (i, b0) in (k * chunk..end).step_by(images).enumerate() {
                    let nb = images.min(end - b0);
                    let t = Tiles::new(nb, h, wd);
                    let tb = t.len();
                    let v = transform_inputs(&x[b0 * xs..][..nb * xs], cin, t, vbuf);
                    let g = transform_output_grads(&dy[b0 * ys..][..nb * ys], cout, t, gbuf);
                    let (g_xi, v_xi) = (cout * tb, cin * tb);
                    let gemm = |(xi, du): (usize, &mut [T])| {
                        let (g, v) = (&g[xi * g_xi..][..g_xi], &v[xi * v_xi..][..v_xi]);
                        if abt {
                            gemm_abt(cout, cin, tb, (du, cin), (g, tb), (v, tb));
                        } else {
                            // Vᵀ: (row stride 1, column stride tb).
                            gemm_into(
                                cout,
                                cin,
                                tb,
                                (du, cin),
                                (g, tb, 1),
                                (v, 1, tb),
                                i > 0,
                                threads,
                            );
                        }
                    };
                    if abt && threads > 1 {
                        // Too few chunks for the threads: the 16 GEMMs share them.
                        du.par_chunks_mut(cout * cin).enumerate().for_each(gemm);
                    } else {
                        du.chunks_mut(cout * cin).enumerate().for_each(gemm);
                    }
                }
                du
            },
        )
        .collect();
    // The chunks' sums in chunk order.
    let mut du = vec![T::zero(); 16 * cout * cin];
    for p in &partials {
        for (a, b) in du.iter_mut().zip(p) {
            *a += *b;
        }
    }
    // dW = Gᵀ dU G, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
    let half = T::from_f64(0.5);
    let mut dw = vec![T::zero(); cout * cin * 9];
    for o in 0..cout {
        for c in 0..cin {
            let u = |i: usize, j: usize| du[((i * 4 + j) * cout + o) * cin + c];
            let t: [[T; 4]; 3] = std::array::from_fn(|r| {
                std::array::from_fn(|j| match r {
                    0 => u(0, j) + (u(1, j) + u(2, j)) * half,
                    1 => (u(1, j) - u(2, j)) * half,
                    _ => (u(1, j) + u(2, j)) * half + u(3, j),
                })
            });
            for (r, row) in t.iter().enumerate() {
                let g = [
                    row[0] + (row[1] + row[2]) * half,
                    (row[1] - row[2]) * half,
                    (row[1] + row[2]) * half + row[3],
                ];
                dw[(o * cin + c) * 9 + r * 3..][..3].copy_from_slice(&g);
            }
        }
    }
    dw
}

/// `A dy_t Aᵀ` of every tile of a block of `nb` images: `[ξ][o][t]`, zero for
/// the junk tiles (they must add nothing to the weight gradient), written
/// over all of `buf` (resized).
fn transform_output_grads<'b, T: WithDType>(
    dy: &[T],
    cout: usize,
    t: Tiles,
    buf: &'b mut Scratch<T>,
) -> &'b [T] {
    let g = buf.values(16 * cout * t.len());
    pulp::Arch::new().dispatch(OutputGradTransform { dy, g, cout, t });
    g
}

/// [`transform_output_grads`] compiled for the CPU's SIMD instruction set:
/// the 2x2 tile values `dy[2ty + r][2tx + s]` are gathered into four runs
/// over the tiles (zero past the edges and in the junk tiles), then both
/// stages of `A · Aᵀ` (`A = [1 0; 1 1; 1 -1; 0 -1]`) are flat loops.
struct OutputGradTransform<'a, T> {
    dy: &'a [T],
    g: &'a mut [T],
    cout: usize,
    t: Tiles,
}

/// `out = -a`.
#[inline(always)]
fn neg_into<T: WithDType>(out: &mut [T], a: &[T]) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = T::zero() - x;
    }
}

impl<T: WithDType> pulp::WithSimd for OutputGradTransform<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self { dy, g, cout, t } = self;
        let Tiles { nb, h, w, tw, .. } = t;
        let (w1, l, tb) = (t.w1(), t.per_image(), t.len());
        // d[r][s]: the tile value at row r, column s, over the tiles.
        let mut d = vec![T::zero(); 4 * l];
        // A dy: a[k][s].
        let mut a = vec![T::zero(); 8 * l];
        for i in 0..nb {
            for o in 0..cout {
                let plane = &dy[(i * cout + o) * h * w..][..h * w];
                for (oy, src) in plane.chunks_exact(w).enumerate() {
                    let (ty, r) = (oy / 2, oy % 2);
                    let (d0, d1) = d[2 * r * l..(2 * r + 2) * l].split_at_mut(l);
                    let (d0, d1) = (&mut d0[ty * w1..][..tw], &mut d1[ty * w1..][..tw]);
                    split_row(src, d0, d1);
                }
                let dd = |r: usize, s: usize| &d[(2 * r + s) * l..][..l];
                for (idx, row) in a.chunks_exact_mut(l).enumerate() {
                    let (k, s) = (idx / 2, idx % 2);
                    match k {
                        0 => row.copy_from_slice(dd(0, s)),
                        1 => add_into(row, dd(0, s), dd(1, s)),
                        2 => sub_into(row, dd(0, s), dd(1, s)),
                        _ => neg_into(row, dd(1, s)),
                    }
                }
                for k in 0..4 {
                    let (a0, a1) = (&a[2 * k * l..][..l], &a[(2 * k + 1) * l..][..l]);
                    for j in 0..4 {
                        let xi = k * 4 + j;
                        let dst = &mut g[(xi * cout + o) * tb + i * l..][..l];
                        match j {
                            0 => dst.copy_from_slice(a0),
                            1 => add_into(dst, a0, a1),
                            2 => sub_into(dst, a0, a1),
                            _ => neg_into(dst, a1),
                        }
                    }
                }
            }
        }
    }
}

/// How a block of `nb` images of `h x w` is cut into 2x2 output tiles, as
/// the transforms lay them out: per image `th` rows of `tw + 1` tiles (the
/// last of each row is junk, computed and dropped, so that every tile value
/// is a run of memory shifted by a constant; see [`InputTransform`]).
#[derive(Debug, Clone, Copy)]
struct Tiles {
    nb: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(nb: usize, h: usize, w: usize) -> Self {
        Self {
            nb,
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        }
    }

    /// Tiles per row of the grid (one of them junk).
    fn w1(self) -> usize {
        self.tw + 1
    }

    /// Tiles of one image.
    fn per_image(self) -> usize {
        self.th * self.w1()
    }

    /// Tiles of the block: the long dimension of its GEMMs.
    fn len(self) -> usize {
        self.nb * self.per_image()
    }
}

/// A row's even values into `first`, odd ones into `second`; the last
/// value of an odd-length row into `first` only.
#[inline(always)]
fn split_row<T: Copy>(src: &[T], first: &mut [T], second: &mut [T]) {
    let pairs = src.len() / 2;
    deinterleave(src, &mut first[..pairs], &mut second[..pairs]);
    if src.len() % 2 == 1 {
        first[pairs] = src[2 * pairs];
    }
}

/// `dst[2j] = first[j] + b`, `dst[2j + 1] = second[j] + b`: the inverse of
/// [`split_row`] with a bias.
#[inline(always)]
fn join_row<T: WithDType>(dst: &mut [T], first: &[T], second: &[T], b: T) {
    let pairs = dst.len() / 2;
    interleave(dst, &first[..pairs], &second[..pairs], |v| v + b);
    if dst.len() % 2 == 1 {
        dst[2 * pairs] = first[pairs] + b;
    }
}

/// `V[ξ][c][t]` of a block of `nb` images: tile `t = (image, ty, tx)`,
/// written over all of `buf` (resized).
fn transform_inputs<'b, T: WithDType>(
    x: &[T],
    cin: usize,
    t: Tiles,
    buf: &'b mut Scratch<T>,
) -> &'b [T] {
    let v = buf.values(16 * cin * t.len());
    pulp::Arch::new().dispatch(InputTransform { x, v, cin, t });
    v
}

/// [`transform_inputs`] compiled for the CPU's SIMD instruction set (see
/// `im2col::Im2colChannel`).
///
/// The zero-padded plane is split by row and column parity into four
/// planes `P[rp][cp][y][x] = padded[2y + rp][2x + cp]` with rows `tw + 1`
/// long. Tile `t = ty·(tw + 1) + tx` reads `padded[2ty + k][2tx + s]` =
/// `P[k % 2][s % 2][t + (k / 2)·(tw + 1) + s / 2]`: for all tiles at once,
/// each of the 16 values is a contiguous run, and both transform stages are
/// flat loops over the whole image.
struct InputTransform<'a, T> {
    x: &'a [T],
    v: &'a mut [T],
    cin: usize,
    t: Tiles,
}

impl<T: WithDType> pulp::WithSimd for InputTransform<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self { x, v, cin, t } = self;
        let Tiles { nb, h, w, th, tw } = t;
        let (w1, l, tb) = (t.w1(), t.per_image(), t.len());
        // Each parity plane: th + 1 rows, and one value more for the
        // shifted reads of the junk tile.
        let size = (th + 1) * w1 + 1;
        let mut planes = vec![T::zero(); 4 * size];
        // Bᵀ over the tile rows k, per column parity: l + 1 values each.
        let mut p = vec![T::zero(); 8 * (l + 1)];
        for i in 0..nb {
            for c in 0..cin {
                let img = &x[(i * cin + c) * h * w..][..h * w];
                // padded[r][q] = img[r - 1][q - 1]: input column 2m goes to
                // odd padded column 2m + 1 (parity 1, index m), 2m + 1 to
                // even column 2m + 2 (parity 0, index m + 1).
                for (y, src) in img.chunks_exact(w).enumerate() {
                    let r = y + 1;
                    let (rp, yy) = (r % 2, r / 2);
                    let (even, odd) = planes[2 * rp * size..(2 * rp + 2) * size].split_at_mut(size);
                    let even = &mut even[yy * w1 + 1..][..tw];
                    let odd = &mut odd[yy * w1..][..tw];
                    split_row(src, odd, even);
                }
                // d(k, parity)[t] = P[k % 2][parity][t + (k / 2)·w1].
                let d = |k: usize, par: usize| {
                    &planes[(k % 2 * 2 + par) * size + (k / 2) * w1..][..l + 1]
                };
                for (idx, row) in p.chunks_exact_mut(l + 1).enumerate() {
                    let (kk, par) = (idx / 2, idx % 2);
                    match kk {
                        0 => sub_into(row, d(0, par), d(2, par)),
                        1 => add_into(row, d(1, par), d(2, par)),
                        2 => sub_into(row, d(2, par), d(1, par)),
                        _ => sub_into(row, d(1, par), d(3, par)),
                    }
                }
                // ·B over the tile columns s: p(kk, s)[t] = p(kk, s % 2)[t + s / 2].
                for kk in 0..4 {
                    let (e, o) = p[kk * 2 * (l + 1)..(kk + 1) * 2 * (l + 1)].split_at(l + 1);
                    let (e0, e1, o0, o1) = (&e[..l], &e[1..], &o[..l], &o[1..]);
                    for j in 0..4 {
                        let xi = kk * 4 + j;
                        let dst = &mut v[(xi * cin + c) * tb + i * l..][..l];
                        match j {
                            0 => sub_into(dst, e0, e1),
                            1 => add_into(dst, o0, e1),
                            2 => sub_into(dst, e1, o0),
                            _ => sub_into(dst, o0, o1),
                        }
                    }
                }
            }
        }
    }
}

/// `y = Aᵀ M A + bias` for a block of `nb` images (the outputs past an odd
/// image's edge and the junk tiles are dropped).
fn transform_outputs<T: WithDType>(
    m: &[T],
    bias: Option<&[T]>,
    y: Slots<'_, T>,
    cout: usize,
    t: Tiles,
) {
    pulp::Arch::new().dispatch(OutputTransform {
        m,
        bias,
        y,
        cout,
        t,
    })
}

/// [`transform_outputs`] compiled for the CPU's SIMD instruction set: both
/// stages are flat loops over an image's tiles, then one pass writes the
/// 2x2 outputs of each tile row into two image rows of a scratch plane,
/// which is then copied to the output.
struct OutputTransform<'a, T> {
    m: &'a [T],
    bias: Option<&'a [T]>,
    y: Slots<'a, T>,
    cout: usize,
    t: Tiles,
}

impl<T: WithDType> pulp::WithSimd for OutputTransform<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self {
            m,
            bias,
            y,
            cout,
            t,
        } = self;
        let Tiles { nb, h, w, tw, .. } = t;
        let (w1, l, tb) = (t.w1(), t.per_image(), t.len());
        // Aᵀ M: a(r, s) for r = 0, 1 and s = 0..4.
        let mut a = vec![T::zero(); 8 * l];
        // ·A: out(r, q) for the tile's row r and column q.
        let mut out = vec![T::zero(); 4 * l];
        let mut plane = vec![T::zero(); h * w];
        let mut planes = y.split(h * w);
        for i in 0..nb {
            for o in 0..cout {
                let b = bias.map_or(T::zero(), |b| b[o]);
                let mrow = |xi: usize| &m[(xi * cout + o) * tb + i * l..][..l];
                {
                    let (a0, a1) = a.split_at_mut(4 * l);
                    for s in 0..4 {
                        let (m0, m1, m2, m3) = (mrow(s), mrow(4 + s), mrow(8 + s), mrow(12 + s));
                        add3_into(&mut a0[s * l..][..l], m0, m1, m2);
                        sub3_into(&mut a1[s * l..][..l], m1, m2, m3);
                    }
                }
                for r in 0..2 {
                    let ar = |s: usize| &a[(r * 4 + s) * l..][..l];
                    let (o0, o1) = out[2 * r * l..(2 * r + 2) * l].split_at_mut(l);
                    add3_into(o0, ar(0), ar(1), ar(2));
                    sub3_into(o1, ar(1), ar(2), ar(3));
                }
                for (oy, dst) in plane.chunks_exact_mut(w).enumerate() {
                    let (ty, r) = (oy / 2, oy % 2);
                    let even = &out[2 * r * l + ty * w1..][..tw];
                    let odd = &out[(2 * r + 1) * l + ty * w1..][..tw];
                    join_row(dst, even, odd, b);
                }
                let dst = planes.next().expect("the block holds nb·cout planes");
                dst.write(plane.iter().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_adjoint, assert_biased, direct3x3, dot, values};
    use super::*;

    /// The direct sum (padding 1), in f64.
    fn direct(x: &[f64], w: &[f64], dims: (usize, usize, usize), hw: (usize, usize)) -> Vec<f64> {
        direct3x3(x, w, dims, hw, 1)
    }

    #[test]
    fn blocks_hold_fewer_tiles_of_wide_layers() {
        let per_image = |h, w| Tiles::new(1, h, w).per_image();
        // A 32x32 colourization image is a block by itself; 16x16 ones
        // (72 tiles) go three to a block.
        assert_eq!(block_images(per_image(32, 32), 64, 50), 1);
        assert_eq!(block_images(per_image(16, 16), 64, 50), 3);
        // ResNet-101's 14x14 phase images (56 tiles): four at 64 channels,
        // two at 256 or 512, never more than a thread's share.
        assert_eq!(block_images(per_image(14, 14), 64, 16), 4);
        assert_eq!(block_images(per_image(14, 14), 256, 16), 2);
        assert_eq!(block_images(per_image(14, 14), 512, 16), 2);
        assert_eq!(block_images(per_image(14, 14), 256, 1), 1);
        assert_eq!(block_images(per_image(65, 65), 256, 16), 1);
    }

    /// `G g Gᵀ` of one filter, one value at a time (as the kernel computed
    /// it before it ran over blocks of channels).
    fn filter_one_at_a_time(g: [f32; 9]) -> [f32; 16] {
        let mut t = [[0f32; 3]; 4];
        for j in 0..3 {
            let (a, b, e) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = a;
            t[1][j] = (a + b + e) * 0.5;
            t[2][j] = (a - b + e) * 0.5;
            t[3][j] = e;
        }
        let mut u = [0f32; 16];
        for (i, [a, b, e]) in t.into_iter().enumerate() {
            u[4 * i..4 * i + 4].copy_from_slice(&[a, (a + b + e) * 0.5, (a - b + e) * 0.5, e]);
        }
        u
    }

    #[test]
    fn filters_transform_bit_for_bit_as_one_filter_at_a_time() {
        // Channel counts below, at and across the block of 64.
        for &(cin, cout) in &[(1, 3), (8, 5), (64, 2), (70, 9), (130, 4)] {
            let w: Vec<f32> = values(cin * cout * 9, 7)
                .iter()
                .map(|&v| v as f32)
                .collect();
            for filters in [Filters::Forward, Filters::BackwardData] {
                let u = transform_filters(&w, cin, cout, filters);
                for o in 0..cout {
                    for c in 0..cin {
                        let g = std::array::from_fn(|i| match filters {
                            Filters::Forward => w[(o * cin + c) * 9 + i],
                            Filters::BackwardData => w[(c * cout + o) * 9 + 8 - i],
                        });
                        let want = filter_one_at_a_time(g);
                        for (xi, &v) in want.iter().enumerate() {
                            let got = u[(o * 16 + xi) * cin + c];
                            assert_eq!(
                                got.to_bits(),
                                v.to_bits(),
                                "{filters:?} {cin}->{cout}: o {o} c {c} position {xi}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matches_the_direct_sum_forward_and_backward_data() {
        // Odd and even sizes, one and several blocks, a partial last block.
        for &(n, cin, cout, h, w) in &[
            (1, 8, 9, 5, 7),
            (3, 10, 8, 6, 6),
            (9, 8, 12, 16, 16),
            (2, 9, 8, 1, 3),
            // Rows of 32 and more: whole chunks of the (de)interleaving,
            // with and without an odd last value.
            (2, 8, 8, 3, 35),
            (2, 8, 8, 4, 64),
            // Wide: blocks of two images, a partial last block.
            (5, 128, 8, 14, 14),
        ] {
            let x = values(n * cin * h * w, 1);
            let wt = values(cout * cin * 9, 2);
            let bias = values(cout, 3);
            let want = direct(&x, &wt, (n, cin, cout), (h, w));
            let got = conv3x3(
                &x,
                &wt,
                Some(&bias),
                Filters::Forward,
                (n, cin, cout),
                (h, w),
            );
            let what = format!("{n}x{cin}x{h}x{w} -> {cout}");
            assert_biased(&got, &want, &bias, h * w, &what);
            // Backward-data: the adjoint. <conv(x), dy> = <x, bwd(dy)>.
            let dy = values(n * cout * h * w, 4);
            let dx = conv3x3(
                &dy,
                &wt,
                None,
                Filters::BackwardData,
                (n, cout, cin),
                (h, w),
            );
            assert_adjoint(dot(&want, &dy), dot(&x, &dx), &what);
        }
    }

    #[test]
    fn rows_split_and_join_at_every_length() {
        for len in 0..=70usize {
            let src: Vec<f64> = (0..len).map(|i| i as f64).collect();
            let half = len.div_ceil(2);
            let (mut first, mut second) = (vec![-1.0; half], vec![-1.0; half]);
            split_row(&src, &mut first, &mut second);
            let want_first: Vec<f64> = src.iter().step_by(2).copied().collect();
            let want_second: Vec<f64> = src.iter().skip(1).step_by(2).copied().collect();
            assert_eq!(first, want_first, "first of {len}");
            assert_eq!(second[..len / 2], want_second[..], "second of {len}");
            let mut joined = vec![0.0; len];
            join_row(&mut joined, &first, &second, 0.5);
            let want: Vec<f64> = src.iter().map(|v| v + 0.5).collect();
            assert_eq!(joined, want, "joined {len}");
        }
    }

    #[test]
    fn weight_gradient_is_the_adjoint_of_the_forward() {
        // <conv(x, w), dy> is linear in w: its gradient is dW, so
        // <dW, w'> = <conv(x, w'), dy> for every w'. Odd sizes, partial
        // blocks, several chunks; both GEMMs (`gemm_abt` up to
        // ABT_MAX_OUTPUTS outputs per position, then the `gemm` crate).
        for &(n, cin, cout, h, w) in &[
            (1, 8, 9, 5, 7),
            (40, 9, 8, 3, 4),
            (3, 8, 8, 16, 15),
            (50, 8, 8, 16, 16),
            (50, 40, 33, 8, 8),
        ] {
            let x = values(n * cin * h * w, 7);
            let dy = values(n * cout * h * w, 8);
            let probe = values(cout * cin * 9, 9);
            let dw = filter_grad3x3(&x, &dy, (n, cin, cout), (h, w));
            let y = direct(&x, &probe, (n, cin, cout), (h, w));
            assert_adjoint(
                dot(&dw, &probe),
                dot(&y, &dy),
                &format!("{n}x{cin}x{h}x{w}"),
            );
        }
    }

    #[test]
    fn f32_rounding_stays_close_to_the_direct_sum() {
        let (n, cin, cout, h, w) = (2, 64, 32, 12, 12);
        let x = values(n * cin * h * w, 5);
        let wt = values(cout * cin * 9, 6);
        let want = direct(&x, &wt, (n, cin, cout), (h, w));
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = wt.iter().map(|&v| v as f32).collect();
        let got = conv3x3(&x32, &w32, None, Filters::Forward, (n, cin, cout), (h, w));
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, e)| (f64::from(*g) - e).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5 * scale, "max error {err} of {scale}");
    }
}
