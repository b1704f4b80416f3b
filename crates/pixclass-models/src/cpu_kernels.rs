//! CPU kernels behind candle's custom-op traits, each with an exact
//! hand-written backward: train-mode BatchNorm fused with ReLU, max-pooling
//! and nearest upsampling (convolutions live in [`crate::conv_gemm`]), plus
//! the convolution [`Geometry`] they share.
//!
//! These kernels only run on the CPU; `ops` keeps portable formulations made
//! of candle primitives for CUDA and Metal.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::simd::{lane_sum, vectorized, Real};

/// Geometry of a convolution seen from its input image: an `n x c x h x w`
/// image, a `kh x kw` kernel, stride, dilation, top/left padding, and the
/// `ho x wo` output positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub n: usize,
    /// Channels of the image.
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both dimensions).
    pub stride: usize,
    /// Dilation (both dimensions).
    pub dilation: usize,
    /// Zeros above the image.
    pub pad_top: usize,
    /// Zeros left of the image.
    pub pad_left: usize,
    /// Output rows.
    pub ho: usize,
    /// Output columns.
    pub wo: usize,
}

impl Geometry {
    /// Rows of the column matrix: `c·kh·kw`.
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// A 1x1 kernel with stride 1 and no padding: the column matrix of an
    /// image is the image itself (`[C, H·W]`), so no im2col is needed.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && (self.ho, self.wo) == (self.h, self.w)
    }

    /// Columns of the column matrix: `n·ho·wo`.
    pub fn cols(&self) -> usize {
        self.n * self.ho * self.wo
    }

    /// The output positions whose input position `o·s + k·d - pad` lies
    /// inside the image (of `size`), as a half-open range.
    pub(crate) fn valid_range(
        &self,
        k: usize,
        pad: usize,
        out: usize,
        size: usize,
    ) -> (usize, usize) {
        let off = k * self.dilation; // input index = o*s + off - pad
        let s = self.stride;
        let lo = if pad > off {
            (pad - off).div_ceil(s)
        } else {
            0
        };
        let hi = if size + pad > off {
            ((size + pad - off - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// The contiguous slice of a CPU storage described by `l`.
pub(crate) fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("pixclass CPU kernels need a contiguous input"),
    }
}

// ---------------------------------------------------------------------------
// BatchNorm (train mode) fused with an optional ReLU, max-pooling and
// nearest upsampling: single-pass kernels with exact hand-written gradients.
// candle's multi-dimension reductions (used by the portable formulations in
// `ops` and `layers`) cost ~15 ns per element; these are memory-bound.
// ---------------------------------------------------------------------------

use std::sync::Arc;

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// Runs `$body` on the contiguous slices of one or more CPU storages that
/// are all f32 or all f64, wrapping the result in the same dtype:
/// `dispatch!((s1, l1) => a, (s2, l2) => b; f(a, b))`.
macro_rules! dispatch {
    ($(($s:expr, $l:expr) => $x:ident),+ ; $body:expr) => {{
        use candle_core::backend::BackendStorage;
        let dtypes = [$($s.dtype()),+];
        if dtypes.iter().all(|d| *d == candle_core::DType::F32) {
            $(let $x = contiguous_slice::<f32>($s, $l)?;)+
            CpuStorage::F32($body)
        } else if dtypes.iter().all(|d| *d == candle_core::DType::F64) {
            $(let $x = contiguous_slice::<f64>($s, $l)?;)+
            CpuStorage::F64($body)
        } else {
            candle_core::bail!("pixclass CPU kernels take f32 or f64 inputs of one dtype, got {dtypes:?}")
        }
    }};
}
pub(crate) use dispatch;

/// Sum of channel `ch` of `[N, C, H, W]` (f64, images in order).
fn channel_total<T: WithDType>(x: &[T], n: usize, c: usize, hw: usize, ch: usize) -> f64 {
    (0..n)
        .map(|i| lane_sum(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw], |v| v.to_f64()))
        .sum()
}

/// Per-channel mean and biased variance of `[N, C, H, W]`, as `[2, C]` f64.
#[derive(Debug, Clone, Copy)]
pub struct ChannelStats;

fn channel_stats<T: WithDType>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<f64> {
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = (n * hw) as f64;
            let mean = channel_total(x, n, c, hw, ch) / m;
            let sq: f64 = (0..n)
                .map(|i| {
                    lane_sum(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw], |v| {
                        let d = v.to_f64() - mean;
                        d * d
                    })
                })
                .sum();
            (mean, sq / m)
        })
        .collect();
    per.iter()
        .map(|p| p.0)
        .chain(per.iter().map(|p| p.1))
        .collect()
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "pixclass-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l)?;
        let out = match s {
            CpuStorage::F32(_) => channel_stats(contiguous_slice::<f32>(s, l)?, n, c, h * w),
            CpuStorage::F64(_) => channel_stats(contiguous_slice::<f64>(s, l)?, n, c, h * w),
            _ => candle_core::bail!("channel stats: f32 and f64 only"),
        };
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }
}

/// `y = [relu](γ·(x - μ)·σ⁻¹ + β)` per channel, with the batch statistics
/// `μ`, `σ⁻¹` computed beforehand. Inputs: x `[N, C, H, W]`, γ `[C]`, β `[C]`.
#[derive(Debug, Clone)]
pub struct BnTrain {
    mean: Arc<Vec<f64>>,
    invstd: Arc<Vec<f64>>,
    relu: bool,
}

/// Gradient of [`BnTrain`]: inputs x, dy, `[γ; β]` (`[2C]`); output packed
/// `[dx (N·C·H·W), dγ (C), dβ (C)]`.
#[derive(Debug, Clone)]
struct BnTrainBwd(BnTrain);

impl BnTrain {
    /// Channel `ch`'s output as `x·a + k`: `(a, k) = (γσ⁻¹, β - μγσ⁻¹)`.
    fn scale_shift(&self, ch: usize, g: f64, b: f64) -> (f64, f64) {
        let a = g * self.invstd[ch];
        (a, b - self.mean[ch] * a)
    }
}

fn bn_fwd<T: WithDType>(
    op: &BnTrain,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    c: usize,
    hw: usize,
) -> Vec<T> {
    // y = x·a + k per channel in the element type: a = γσ⁻¹, k = β - μ·a.
    let (scale, shift): (Vec<T>, Vec<T>) = (0..c)
        .map(|ch| {
            let (a, k) = op.scale_shift(ch, gamma[ch].to_f64(), beta[ch].to_f64());
            (T::from_f64(a), T::from_f64(k))
        })
        .unzip();
    affine_fwd(ChannelAffine { relu: op.relu }, x, &scale, &shift, c, hw)
}

fn bn_bwd<T: Real>(
    op: &BnTrain,
    x: &[T],
    dy: &[T],
    gb: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> Vec<T> {
    let m = (n * hw) as f64;
    // Pass 1: per channel Σ dy' and Σ dy'·x̂, where dy' = dy masked by ReLU.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // The forward's ReLU mask, computed the same way (element type).
            let (a, sh) = op.scale_shift(ch, gb[ch].to_f64(), gb[c + ch].to_f64());
            let (a, sh) = (T::from_f64(a), T::from_f64(sh));
            let (s, sdxc) = (0..n).fold((0.0, 0.0), |(s, sdxc), i| {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (ds, dsxc) =
                    T::relu_masked_sums(&x[r.clone()], &dy[r], a, sh, op.relu, op.mean[ch]);
                (s + ds, sdxc + dsxc)
            });
            // Σ dy'·x̂ = σ⁻¹ Σ dy'·(x - μ).
            (s, op.invstd[ch] * sdxc)
        })
        .collect();
    // Pass 2: dx = γσ⁻¹/M · (M·dy' - Σdy' - x̂·Σdy'x̂).
    let mut out = vec![T::zero(); x.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(x.len());
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, o)| {
        let ch = p % c;
        let (g, b) = (gb[ch].to_f64(), gb[c + ch].to_f64());
        let (s, sx) = sums[ch];
        let k = g * op.invstd[ch] / m;
        // k·(M·d - s - x̂·sx) with x̂ = (x - μ)σ⁻¹, as d·p + x·q + r in the
        // element type.
        let pp = T::from_f64(k * m);
        let q = T::from_f64(-k * sx * op.invstd[ch]);
        let r = T::from_f64(k * (sx * op.mean[ch] * op.invstd[ch] - s));
        let (a, sh) = op.scale_shift(ch, g, b);
        let (a, sh) = (T::from_f64(a), T::from_f64(sh));
        let xs = &x[p * hw..(p + 1) * hw];
        let ds = &dy[p * hw..(p + 1) * hw];
        let relu = op.relu;
        vectorized(move || {
            for ((o, &xv), &dv) in o.iter_mut().zip(xs).zip(ds) {
                let dead = relu && xv * a + sh <= T::zero();
                let d = if dead { T::zero() } else { dv };
                *o = d * pp + xv * q + r;
            }
        });
    });
    for ch in 0..c {
        rest[ch] = T::from_f64(sums[ch].1);
        rest[c + ch] = T::from_f64(sums[ch].0);
    }
    out
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "pixclass-batchnorm-train"
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
        let (_, c, h, w) = dims4(l1)?;
        let out =
            dispatch!((s1, l1) => x, (s2, l2) => g, (s3, l3) => b; bn_fwd(self, x, g, b, c, h * w));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &gb,
            &BnTrainBwd(self.clone()),
        )?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dg = packed.narrow(0, numel, c)?;
        let db = packed.narrow(0, numel + c, c)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

impl CustomOp3 for BnTrainBwd {
    fn name(&self) -> &'static str {
        "pixclass-batchnorm-train-bwd"
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
        let (n, c, h, w) = dims4(l1)?;
        let out = dispatch!((s1, l1) => x, (s2, l2) => dy, (s3, l3) => gb; bn_bwd(&self.0, x, dy, gb, n, c, h * w));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * c)))
    }
}

/// Train-mode batch normalisation (and ReLU when `relu`) on the CPU; returns
/// the output and the batch's per-channel mean and biased variance (f64).
///
/// # Shapes
/// `x` `[N, C, H, W]`, `gamma`/`beta` `[C]` -> `[N, C, H, W]`, `[C]`, `[C]`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let stats: Vec<f64> = x
        .apply_op1_no_bwd(&ChannelStats)?
        .flatten_all()?
        .to_vec1()?;
    let c = stats.len() / 2;
    let (mean, var) = (stats[..c].to_vec(), stats[c..].to_vec());
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let op = BnTrain {
        mean: Arc::new(mean.clone()),
        invstd: Arc::new(invstd),
        relu,
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, mean, var))
}

/// `y = x + b` per channel (a convolution's bias). Inputs: x `[N, C, H, W]`,
/// b `[C]`. Its bias gradient is one per-channel sum ([`ChannelSum`]), where
/// candle's `broadcast_add` backward reduces over three dimensions.
#[derive(Debug, Clone, Copy)]
pub struct ChannelBias;

/// Per-channel sum of `[N, C, H, W]` -> `[C]` (f64 accumulation in a fixed
/// order, the input's dtype out).
#[derive(Debug, Clone, Copy)]
pub struct ChannelSum;

fn channel_sum<T: WithDType>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| T::from_f64(channel_total(x, n, c, hw, ch)))
        .collect()
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "pixclass-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l)?;
        let out = dispatch!((s, l) => x; channel_sum(x, n, c, h * w));
        Ok((out, Shape::from(c)))
    }
}

fn bias_fwd<T: WithDType>(x: &[T], b: &[T], c: usize, hw: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(p, (o, xs))| {
            let bv = b[p % c];
            for (o, &v) in o.iter_mut().zip(xs) {
                *o = v + bv;
            }
        });
    out
}

impl candle_core::CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "pixclass-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = dims4(l1)?;
        if l2.shape().elem_count() != c {
            candle_core::bail!(
                "channel bias: bias {:?} must have {c} values for input {:?}",
                l2.shape().dims(),
                l1.shape().dims()
            );
        }
        let out = dispatch!((s1, l1) => x, (s2, l2) => b; bias_fwd(x, b, c, h * w));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.track_op().then(|| grad.clone());
        let db = b
            .track_op()
            .then(|| {
                grad.contiguous()?
                    .apply_op1_no_bwd(&ChannelSum)?
                    .reshape(b.shape())
            })
            .transpose()?;
        Ok((dx, db))
    }
}

/// `y = relu(a + b)` elementwise (a residual connection), one pass; its
/// gradient `dy·[y > 0]` goes to both inputs.
#[derive(Debug, Clone, Copy)]
pub struct AddRelu;

/// `dy·[y > 0]`: inputs (y, dy).
#[derive(Debug, Clone, Copy)]
struct ReluMask;

fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        });
    out
}

fn add_relu_fwd<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(a, b, |x, y| {
        let v = x + y;
        if v > T::zero() {
            v
        } else {
            T::zero()
        }
    })
}

fn relu_mask<T: WithDType>(y: &[T], g: &[T]) -> Vec<T> {
    zip_map(y, g, |y, g| if y > T::zero() { g } else { T::zero() })
}

fn same_shape(l1: &Layout, l2: &Layout, what: &str) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{what}: shapes {:?} and {:?} differ",
            l1.shape().dims(),
            l2.shape().dims()
        );
    }
    Ok(())
}

impl candle_core::CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "pixclass-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(l1, l2, self.name())?;
        let out = dispatch!((s1, l1) => a, (s2, l2) => b; add_relu_fwd(a, b));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = (a.track_op() || b.track_op())
            .then(|| {
                res.contiguous()?
                    .apply_op2_no_bwd(&grad.contiguous()?, &ReluMask)
            })
            .transpose()?;
        Ok((
            g.clone().filter(|_| a.track_op()),
            g.filter(|_| b.track_op()),
        ))
    }
}

impl candle_core::CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "pixclass-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(l1, l2, self.name())?;
        let out = dispatch!((s1, l1) => y, (s2, l2) => g; relu_mask(y, g));
        Ok((out, l1.shape().clone()))
    }
}

/// `y = [relu](x·scale + shift)` per channel: eval-mode batch normalisation
/// with its statistics folded into `scale`/`shift` (one pass instead of
/// four broadcasts). Inputs: x `[N, C, H, W]`, scale `[C]`, shift `[C]`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffine {
    /// Apply a ReLU to the result.
    pub relu: bool,
}

/// Gradient of [`ChannelAffine`]: inputs x, dy, `[scale; shift]`; output
/// packed `[dx (N·C·H·W), dscale (C), dshift (C)]`.
#[derive(Debug, Clone, Copy)]
struct ChannelAffineBwd(ChannelAffine);

fn affine_fwd<T: WithDType>(
    op: ChannelAffine,
    x: &[T],
    scale: &[T],
    shift: &[T],
    c: usize,
    hw: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(p, (o, xs))| {
            let (a, b) = (scale[p % c], shift[p % c]);
            vectorized(move || {
                if op.relu {
                    for (o, &v) in o.iter_mut().zip(xs) {
                        let y = v * a + b;
                        *o = if y > T::zero() { y } else { T::zero() };
                    }
                } else {
                    for (o, &v) in o.iter_mut().zip(xs) {
                        *o = v * a + b;
                    }
                }
            })
        });
    out
}

fn affine_bwd<T: Real>(
    op: ChannelAffine,
    x: &[T],
    dy: &[T],
    ss: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(x.len());
    // dx = dy'·scale, where dy' is dy masked by the ReLU (y > 0).
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(p, o)| {
        let ch = p % c;
        let (a, b) = (ss[ch], ss[c + ch]);
        let xs = &x[p * hw..(p + 1) * hw];
        let ds = &dy[p * hw..(p + 1) * hw];
        vectorized(move || {
            for ((o, &xv), &d) in o.iter_mut().zip(xs).zip(ds) {
                let live = !op.relu || xv * a + b > T::zero();
                *o = if live { d * a } else { T::zero() };
            }
        });
    });
    // dscale = Σ dy'·x, dshift = Σ dy' per channel (f64 sums, fixed order).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (a, b) = (ss[ch], ss[c + ch]);
            (0..n).fold((0.0, 0.0), |(sx, s), i| {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (ds, dsx) = T::relu_masked_sums(&x[r.clone()], &dy[r], a, b, op.relu, 0.0);
                (sx + dsx, s + ds)
            })
        })
        .collect();
    for (ch, (sx, s)) in sums.into_iter().enumerate() {
        rest[ch] = T::from_f64(sx);
        rest[c + ch] = T::from_f64(s);
    }
    out
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "pixclass-channel-affine"
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
        let (_, c, h, w) = dims4(l1)?;
        if l2.shape().elem_count() != c || l3.shape().elem_count() != c {
            candle_core::bail!(
                "channel affine: scale {:?} and shift {:?} must have {c} values for input {:?}",
                l2.shape().dims(),
                l3.shape().dims(),
                l1.shape().dims()
            );
        }
        let out = dispatch!((s1, l1) => x, (s2, l2) => a, (s3, l3) => b;
            affine_fwd(*self, x, a, b, c, h * w));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = scale.elem_count();
        let ss = Tensor::cat(&[scale.flatten_all()?, shift.flatten_all()?], 0)?;
        let packed =
            x.contiguous()?
                .apply_op3_no_bwd(&grad.contiguous()?, &ss, &ChannelAffineBwd(*self))?;
        let numel = x.elem_count();
        let dx = x
            .track_op()
            .then(|| packed.narrow(0, 0, numel)?.reshape(x.shape()))
            .transpose()?;
        let da = scale
            .track_op()
            .then(|| packed.narrow(0, numel, c)?.reshape(scale.shape()))
            .transpose()?;
        let db = shift
            .track_op()
            .then(|| packed.narrow(0, numel + c, c)?.reshape(shift.shape()))
            .transpose()?;
        Ok((dx, da, db))
    }
}

impl CustomOp3 for ChannelAffineBwd {
    fn name(&self) -> &'static str {
        "pixclass-channel-affine-bwd"
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
        let (n, c, h, w) = dims4(l1)?;
        let out = dispatch!((s1, l1) => x, (s2, l2) => dy, (s3, l3) => ss;
            affine_bwd(self.0, x, dy, ss, n, c, h * w));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * c)))
    }
}

/// Max pooling with window and stride `k`; the gradient goes to the first
/// maximum of each window (row-major), like PyTorch.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool(pub usize);

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
    let mut out = vec![T::zero(); planes * ho * wo];
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

fn maxpool_bwd<T: WithDType>(x: &[T], g: &[T], h: usize, w: usize, k: usize) -> Vec<T> {
    let (ho, wo) = (h / k, w / k);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        let gp = &g[p * ho * wo..(p + 1) * ho * wo];
        if k == 2 {
            // Windows do not overlap: each input gets `0 + g` or stays 0,
            // exactly what the general loop's `+=` gives.
            let rows = plane.chunks_exact(2 * w).zip(o.chunks_exact_mut(2 * w));
            for ((xrows, orows), grow) in rows.zip(gp.chunks_exact(wo)) {
                let (x0, x1) = xrows.split_at(w);
                let (o0, o1) = orows.split_at_mut(w);
                for (ox, &gv) in grow.iter().enumerate() {
                    let i = 2 * ox;
                    let (best, _) = argmax2x2(x0[i], x0[i + 1], x1[i], x1[i + 1]);
                    let target = match best {
                        0 => &mut o0[i],
                        1 => &mut o0[i + 1],
                        2 => &mut o1[i],
                        _ => &mut o1[i + 1],
                    };
                    *target += gv;
                }
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
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
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
pub struct Upsample(pub usize);

/// Its adjoint: sums each `f x f` block.
#[derive(Debug, Clone, Copy)]
struct BlockSum(usize);

fn upsample_fwd<T: WithDType>(x: &[T], h: usize, w: usize, f: usize) -> Vec<T> {
    let (oh, ow) = (h * f, w * f);
    let mut out = vec![T::zero(); x.len() * f * f];
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
    let mut out = vec![T::zero(); g.len() / (f * f)];
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
        let (n, c, gh, gw) = dims4(l)?;
        let f = self.0;
        let (h, w) = (gh / f, gw / f);
        let out = dispatch!((s, l) => g; block_sum(g, h, w, f));
        Ok((out, Shape::from((n, c, h, w))))
    }
}

/// Nearest upsampling on the CPU.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, f·H, f·W]`.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample(f))
}

/// Max pooling with any window, stride and zero-free padding (padded
/// positions never win, like PyTorch's `MaxPool2d(k, s, p)`); the gradient
/// goes to the first maximum of each window.
#[derive(Debug, Clone, Copy)]
pub struct MaxPoolStrided {
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
    let mut out = vec![T::zero(); x.len()];
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
        let (_, _, h, w) = dims4(l1)?;
        let out = dispatch!((s1, l1) => x, (s2, l2) => g; maxpool_strided_bwd(&self.0, x, g, h, w));
        Ok((out, l1.shape().clone()))
    }
}

/// Mean per-pixel cross-entropy of `[N, K, H, W]` logits against `[N, H, W]`
/// u32 targets, in one pass: log-sum-exp per pixel in the element type (like
/// PyTorch), the mean accumulated in f64 (images summed in order). The
/// forward keeps the per-pixel log-sum-exp for the backward. Create one per
/// loss evaluation ([`CrossEntropy::new`]).
#[derive(Debug, Clone, Default)]
pub struct CrossEntropy {
    /// Per-pixel log-sum-exp of the last forward, in f64 (`[N·H·W]`).
    lse: Arc<std::sync::Mutex<Option<Vec<f64>>>>,
}

impl CrossEntropy {
    /// A cross-entropy op with nothing stored yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Its gradient with respect to the logits: `scale · (softmax - onehot)`.
#[derive(Debug, Clone)]
struct CrossEntropyBwd {
    scale: f64,
    /// The forward's per-pixel log-sum-exp, when known.
    lse: Option<Arc<Vec<f64>>>,
}

/// Per image: log-sum-exp of every pixel, written into `lse` (`hw` values):
/// the channel maximum, then the sum of `exp(x - max)` in the element type.
#[inline(always)]
fn pixel_lse<T: Real>(img: &[T], k: usize, hw: usize, lse: &mut [f64]) {
    let mut max = img[..hw].to_vec();
    for c in 1..k {
        for (m, &v) in max.iter_mut().zip(&img[c * hw..(c + 1) * hw]) {
            // NaN-propagating maximum: a NaN logit makes the pixel's loss NaN.
            *m = if v > *m || v.is_nan_() { v } else { *m };
        }
    }
    let mut sum = vec![T::zero(); hw];
    for c in 0..k {
        for ((s, &m), &v) in sum.iter_mut().zip(&max).zip(&img[c * hw..(c + 1) * hw]) {
            *s += (v - m).exp_fast();
        }
    }
    for ((l, s), m) in lse.iter_mut().zip(&sum).zip(&max) {
        *l = s.to_f64().ln() + m.to_f64();
    }
}

fn ce_fwd<T: Real>(x: &[T], t: &[u32], n: usize, k: usize, hw: usize) -> Result<(f64, Vec<f64>)> {
    if let Some(bad) = t.iter().find(|&&c| c as usize >= k) {
        candle_core::bail!("cross_entropy: target class {bad} out of range for {k} classes");
    }
    let mut lse = vec![0.0; n * hw];
    let per_image: Vec<f64> = lse
        .par_chunks_mut(hw)
        .enumerate()
        .map(|(i, lse)| {
            let img = &x[i * k * hw..(i + 1) * k * hw];
            crate::simd::vectorized(|| pixel_lse(img, k, hw, lse));
            let tt = &t[i * hw..(i + 1) * hw];
            (0..hw)
                .map(|p| lse[p] - img[tt[p] as usize * hw + p].to_f64())
                .sum::<f64>()
        })
        .collect();
    Ok((per_image.iter().sum::<f64>() / (n * hw) as f64, lse))
}

fn ce_bwd<T: Real>(
    x: &[T],
    t: &[u32],
    lse: Option<&[f64]>,
    k: usize,
    hw: usize,
    scale: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let s = T::from_f64(scale);
    out.par_chunks_mut(k * hw).enumerate().for_each(|(i, o)| {
        let img = &x[i * k * hw..(i + 1) * k * hw];
        let lse: Vec<T> = match lse {
            Some(l) => l[i * hw..(i + 1) * hw]
                .iter()
                .map(|&v| T::from_f64(v))
                .collect(),
            None => {
                let mut l = vec![0.0; hw];
                crate::simd::vectorized(|| pixel_lse(img, k, hw, &mut l));
                l.into_iter().map(T::from_f64).collect()
            }
        };
        crate::simd::vectorized(|| {
            for (oc, xc) in o.chunks_exact_mut(hw).zip(img.chunks_exact(hw)) {
                for ((o, &v), &l) in oc.iter_mut().zip(xc).zip(&lse) {
                    *o = s * (v - l).exp_fast();
                }
            }
        });
        for (p, &c) in t[i * hw..(i + 1) * hw].iter().enumerate() {
            o[c as usize * hw + p] -= s;
        }
    });
    out
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(_) => contiguous_slice::<u32>(s, l),
        _ => candle_core::bail!("cross_entropy: targets must be u32"),
    }
}

impl candle_core::CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "pixclass-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k, h, w) = dims4(l1)?;
        if l2.shape().dims() != [n, h, w] {
            candle_core::bail!(
                "cross_entropy: logits {:?} and targets {:?} disagree",
                l1.shape().dims(),
                l2.shape().dims()
            );
        }
        let t = targets(s2, l2)?;
        let (out, lse) = match s1 {
            CpuStorage::F32(_) => {
                let (loss, lse) = ce_fwd(contiguous_slice::<f32>(s1, l1)?, t, n, k, h * w)?;
                (CpuStorage::F32(vec![loss as f32]), lse)
            }
            CpuStorage::F64(_) => {
                let (loss, lse) = ce_fwd(contiguous_slice::<f64>(s1, l1)?, t, n, k, h * w)?;
                (CpuStorage::F64(vec![loss]), lse)
            }
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(lse);
        }
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, _, h, w) = logits.dims4()?;
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let lse = self.lse.lock().ok().and_then(|mut slot| slot.take());
        let op = CrossEntropyBwd {
            scale: g / (n * h * w) as f64,
            lse: lse.filter(|l| l.len() == n * h * w).map(Arc::new),
        };
        Ok((
            Some(
                logits
                    .contiguous()?
                    .apply_op2_no_bwd(&target.contiguous()?, &op)?,
            ),
            None,
        ))
    }
}

impl candle_core::CustomOp2 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "pixclass-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, k, h, w) = dims4(l1)?;
        let t = targets(s2, l2)?;
        let lse = self.lse.as_deref().map(Vec::as_slice);
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ce_bwd(
                contiguous_slice::<f32>(s1, l1)?,
                t,
                lse,
                k,
                h * w,
                self.scale,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ce_bwd(
                contiguous_slice::<f64>(s1, l1)?,
                t,
                lse,
                k,
                h * w,
                self.scale,
            )),
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------
// Depthwise convolution (one 2-D filter per channel): direct loops over the
// taps, each inner loop a contiguous run of output columns when the stride
// is 1. Backward: the input gradient scatters through the same taps, the
// filter gradient sums per channel over the batch in a fixed order.
// ---------------------------------------------------------------------------

/// Depthwise convolution of `[N, C, H, W]` with `[C, 1, KH, KW]`, zero
/// padding `pad_top`/`pad_left` (and what `ho`/`wo` imply after).
#[derive(Debug, Clone, Copy)]
pub struct Depthwise(pub Geometry);

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

fn depthwise_fwd<T: WithDType>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    let (hw, ohw, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mut out = vec![T::zero(); g.n * g.c * ohw];
    out.par_chunks_mut(ohw).enumerate().for_each(|(p, o)| {
        let c = p % g.c;
        let plane = &x[p * hw..(p + 1) * hw];
        crate::simd::vectorized(|| {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let k = w[c * taps + i * g.kw + j];
                    if g.stride == 1 {
                        tap_rows_stride1(g, i, j, k, plane, o);
                    } else {
                        for_tap(g, i, j, |oi, ii| o[oi] += k * plane[ii]);
                    }
                }
            }
        });
    });
    out
}

fn depthwise_bwd_input<T: WithDType>(g: &Geometry, grad: &[T], w: &[T]) -> Vec<T> {
    let (hw, ohw, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mut dx = vec![T::zero(); g.n * g.c * hw];
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
        let g = self.0;
        let out = dispatch!((s1, l1) => x, (s2, l2) => w; depthwise_fwd(&g, x, w));
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // Only what autograd will use (see `conv_gemm`'s backward).
        let dx = x
            .track_op()
            .then(|| grad.apply_op2_no_bwd(w, &DepthwiseBwdInput(self.0)))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&grad, &DepthwiseBwdFilter(self.0)))
            .transpose()?;
        Ok((dx, dw))
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
        let g = self.0;
        let out = dispatch!((s1, l1) => x, (s2, l2) => grad; depthwise_bwd_filter(&g, x, grad));
        Ok((out, Shape::from((g.c, 1, g.kh, g.kw))))
    }
}

// ---------------------------------------------------------------------------
// Two-class losses on the margin d = logit_1 - logit_0 (softmax over two
// classes is sigmoid(d)): one pass over the pixels, f64 sums per image added
// in order, exact backward. Used by segmentation fine-tuning, where the
// full-resolution logits are the largest tensors of a step.
// ---------------------------------------------------------------------------

/// Which two-class loss (see [`crate::ops::binary_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryLossKind {
    /// Mean cross-entropy.
    Ce,
    /// The study's soft IoU over the whole batch.
    Iou,
    /// Soft Dice over the whole batch.
    Dice,
}

/// The loss of a margin `[N, H, W]` against u32 0/1 targets `[N, H, W]`.
///
/// The forward pass keeps its batch sums for the backward pass (IoU and Dice
/// need them before any pixel's gradient), so a training step reads the
/// margin twice, not three times.
#[derive(Debug, Clone)]
pub struct BinaryLoss {
    kind: BinaryLossKind,
    sums: std::sync::Arc<std::sync::Mutex<Option<[f64; 4]>>>,
}

impl BinaryLoss {
    /// The loss `kind`.
    pub fn new(kind: BinaryLossKind) -> Self {
        Self {
            kind,
            sums: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BinaryLossBwd {
    kind: BinaryLossKind,
    grad: f64,
    /// The forward pass's batch sums, when known.
    sums: Option<[f64; 4]>,
}

/// `exp(-|x|)` in the precision of the element type (single precision for
/// f32 margins, like PyTorch; the sums are accumulated in f64 either way).
#[inline]
fn exp_neg_abs<T: WithDType>(x: f64) -> f64 {
    if T::DTYPE == candle_core::DType::F32 {
        f64::from((-(x.abs() as f32)).exp())
    } else {
        (-x.abs()).exp()
    }
}

/// `ln(1 + e)` in the precision of the element type.
#[inline]
fn ln_1p_t<T: WithDType>(e: f64) -> f64 {
    if T::DTYPE == candle_core::DType::F32 {
        f64::from((e as f32).ln_1p())
    } else {
        e.ln_1p()
    }
}

/// `sigmoid(x)` from `e = exp(-|x|)`, stable for either sign.
#[inline]
fn sigmoid_from(x: f64, e: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Batch sums: (CE sum, Σ p·y, Σ p, Σ y) with p = sigmoid(d); only what
/// `kind` needs (the CE sum for CE, the p sums for IoU/Dice). One `exp` per
/// pixel, shared by softplus and sigmoid. Fixed chunks of `chunk` pixels
/// summed in order: the result never depends on the number of threads.
fn binary_sums<T: WithDType>(kind: BinaryLossKind, d: &[T], t: &[u32], chunk: usize) -> [f64; 4] {
    let ce = kind == BinaryLossKind::Ce;
    let parts: Vec<[f64; 4]> = d
        .par_chunks(chunk.max(1))
        .zip(t.par_chunks(chunk.max(1)))
        .map(|(dd, tt)| {
            let mut s = [0f64; 4];
            for (v, &y) in dd.iter().zip(tt) {
                let x = v.to_f64();
                let e = exp_neg_abs::<T>(x);
                if ce {
                    // softplus(-(2y-1)·x) = max(z, 0) + ln(1 + exp(-|z|)), |z| = |x|.
                    let z = if y == 1 { -x } else { x };
                    s[0] += z.max(0.0) + ln_1p_t::<T>(e);
                } else {
                    let p = sigmoid_from(x, e);
                    let y = y as f64;
                    s[1] += p * y;
                    s[2] += p;
                    s[3] += y;
                }
            }
            s
        })
        .collect();
    parts.iter().fold([0f64; 4], |mut a, s| {
        for k in 0..4 {
            a[k] += s[k];
        }
        a
    })
}

const SOFT_EPS: f64 = 1e-6;

/// Pixels per partial sum of the binary losses.
const BINARY_CHUNK: usize = 1 << 16;

fn binary_value(kind: BinaryLossKind, s: [f64; 4], m: usize) -> f64 {
    let [ce, i, p, y] = s;
    match kind {
        BinaryLossKind::Ce => ce / m as f64,
        BinaryLossKind::Iou => 1.0 - i / (p + y - i + SOFT_EPS),
        BinaryLossKind::Dice => 1.0 - (2.0 * i + SOFT_EPS) / (p + y + SOFT_EPS),
    }
}

fn binary_bwd<T: WithDType>(op: &BinaryLossBwd, d: &[T], t: &[u32]) -> Vec<T> {
    let m = d.len();
    // CE's gradient needs no batch sums.
    let [_, i, ps, ys] = match (op.kind, op.sums) {
        (BinaryLossKind::Ce, _) => [0.0; 4],
        (_, Some(s)) => s,
        (kind, None) => binary_sums(kind, d, t, BINARY_CHUNK),
    };
    let mut out = vec![T::zero(); m];
    let g = op.grad;
    // Per-pixel factors that do not depend on the pixel.
    let (a1, a0) = match op.kind {
        BinaryLossKind::Ce => (0.0, 0.0),
        BinaryLossKind::Iou => {
            // L = 1 - I/U; dI/dp = y, dU/dp = 1 - y.
            let u = ps + ys - i + SOFT_EPS;
            (-1.0 / u, i / (u * u))
        }
        BinaryLossKind::Dice => {
            let num = 2.0 * i + SOFT_EPS;
            let den = ps + ys + SOFT_EPS;
            (-(2.0 * den - num) / (den * den), num / (den * den))
        }
    };
    out.par_chunks_mut(BINARY_CHUNK)
        .zip(d.par_chunks(BINARY_CHUNK).zip(t.par_chunks(BINARY_CHUNK)))
        .for_each(|(o, (dd, tt))| {
            for ((o, v), &y) in o.iter_mut().zip(dd).zip(tt) {
                let x = v.to_f64();
                let p = sigmoid_from(x, exp_neg_abs::<T>(x));
                let dl_dd = match op.kind {
                    BinaryLossKind::Ce => (p - y as f64) / m as f64,
                    // dL/dp is a1 (y = 1) or a0 (y = 0); dp/dd = p(1 - p).
                    _ => (if y == 1 { a1 } else { a0 }) * p * (1.0 - p),
                };
                *o = T::from_f64(g * dl_dd);
            }
        });
    out
}

fn check_binary(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape().dims() != l2.shape().dims() {
        candle_core::bail!(
            "binary loss: margin {:?} and targets {:?} disagree",
            l1.shape().dims(),
            l2.shape().dims()
        );
    }
    Ok(())
}

fn binary_targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let t = match s {
        CpuStorage::U32(_) => contiguous_slice::<u32>(s, l)?,
        _ => candle_core::bail!("binary loss: targets must be u32"),
    };
    if let Some(bad) = t.iter().find(|&&c| c > 1) {
        candle_core::bail!("binary loss: target {bad} is not 0 or 1");
    }
    Ok(t)
}

impl candle_core::CustomOp2 for BinaryLoss {
    fn name(&self) -> &'static str {
        "pixclass-binary-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_binary(l1, l2)?;
        let t = binary_targets(s2, l2)?;
        let m = l1.shape().elem_count();
        let out = dispatch!((s1, l1) => d; {
            let sums = binary_sums(self.kind, d, t, BINARY_CHUNK);
            if let Ok(mut slot) = self.sums.lock() {
                *slot = Some(sums);
            }
            vec![num_traits_from(binary_value(self.kind, sums, m), d)]
        });
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        margin: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let op = BinaryLossBwd {
            kind: self.kind,
            grad: g,
            sums: self.sums.lock().ok().and_then(|s| *s),
        };
        Ok((
            Some(
                margin
                    .contiguous()?
                    .apply_op2_no_bwd(&target.contiguous()?, &op)?,
            ),
            None,
        ))
    }
}

/// `v` in the element type of `_like`.
fn num_traits_from<T: WithDType>(v: f64, _like: &[T]) -> T {
    T::from_f64(v)
}

impl candle_core::CustomOp2 for BinaryLossBwd {
    fn name(&self) -> &'static str {
        "pixclass-binary-loss-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_binary(l1, l2)?;
        let t = binary_targets(s2, l2)?;
        let out = dispatch!((s1, l1) => d; binary_bwd(self, d, t));
        Ok((out, l1.shape().clone()))
    }
}
