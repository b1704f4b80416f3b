//! BatchNorm kernels: train mode (batch statistics, optional fused ReLU)
//! and eval mode as a per-channel affine map `[relu](x·scale + shift)`.
//! Single passes over memory with exact hand-written gradients; candle's
//! multi-dimension reductions (used by the portable path) cost ~15 ns per
//! element, these are memory-bound.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::output::{output, par_output};
use super::simd::{vectorized, Real};
use super::{contiguous_slice, dims4, dispatch};

/// Per-channel mean and biased variance of `[N, C, H, W]`, as `[2, C]` f64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelStats;

/// One pass per channel: the sums of `x - c` and `(x - c)²` with `c` the
/// channel's first value (a sample of it, so `x - c` is of the order of the
/// spread and the variance `(Σ(x-c)² - (Σ(x-c))²/m)/m` loses no precision
/// to a large mean), instead of a pass for the mean and one for the
/// deviations.
fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<f64> {
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = (n * hw) as f64;
            if n * hw == 0 {
                return (f64::NAN, f64::NAN);
            }
            let shift = x[ch * hw].to_f64();
            let (s, s2) = (0..n)
                .map(|i| T::shifted_sums(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw], shift))
                .fold((0.0, 0.0), |acc, v| (acc.0 + v.0, acc.1 + v.1));
            let var = ((s2 - s * s / m) / m).max(0.0);
            (shift + s / m, var)
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
        let _time = crate::profile::scope(self.name());
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
pub(crate) struct BnTrain {
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

pub(crate) fn bn_fwd<T: WithDType>(
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
    let (mut out, ()) = par_output(x.len(), hw, 2 * c, |planes| {
        planes.enumerate().for_each(|(p, o)| {
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
            vectorized(
                #[inline(always)]
                move || {
                    o.write(xs.iter().zip(ds).map(|(&xv, &dv)| {
                        let dead = relu && xv * a + sh <= T::zero();
                        let d = if dead { T::zero() } else { dv };
                        d * pp + xv * q + r
                    }));
                },
            );
        })
    });
    out.extend(sums.iter().map(|s| T::from_f64(s.1)));
    out.extend(sums.iter().map(|s| T::from_f64(s.0)));
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
        let _time = crate::profile::scope(self.name());
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
        let _time = crate::profile::scope(self.name());
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
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let (op, mean, var) = BnTrain::from_batch(&x, eps, relu)?;
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, mean, var))
}

impl BnTrain {
    /// The normalisation of `x` by its own per-channel statistics, with
    /// those statistics (mean, biased variance).
    pub(crate) fn from_batch(
        x: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<(Self, Vec<f64>, Vec<f64>)> {
        let stats: Vec<f64> = x
            .apply_op1_no_bwd(&ChannelStats)?
            .flatten_all()?
            .to_vec1()?;
        let c = stats.len() / 2;
        let (mean, var) = (stats[..c].to_vec(), stats[c..].to_vec());
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let op = Self {
            mean: Arc::new(mean.clone()),
            invstd: Arc::new(invstd),
            relu,
        };
        Ok((op, mean, var))
    }
}

/// `y = [relu](x·scale + shift)` per channel: eval-mode batch normalisation
/// with its statistics folded into `scale`/`shift` (one pass instead of
/// four broadcasts). Inputs: x `[N, C, H, W]`, scale `[C]`, shift `[C]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelAffine {
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
    output(x.len(), hw, |planes| {
        planes
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(p, (o, xs))| {
                let (a, b) = (scale[p % c], shift[p % c]);
                vectorized(
                    #[inline(always)]
                    move || {
                        if op.relu {
                            o.write(xs.iter().map(|&v| {
                                let y = v * a + b;
                                if y > T::zero() {
                                    y
                                } else {
                                    T::zero()
                                }
                            }));
                        } else {
                            o.write(xs.iter().map(|&v| v * a + b));
                        }
                    },
                )
            })
    })
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
    // dx = dy'·scale, where dy' is dy masked by the ReLU (y > 0).
    let (mut out, ()) = par_output(x.len(), hw, 2 * c, |planes| {
        planes.enumerate().for_each(|(p, o)| {
            let ch = p % c;
            let (a, b) = (ss[ch], ss[c + ch]);
            let xs = &x[p * hw..(p + 1) * hw];
            let ds = &dy[p * hw..(p + 1) * hw];
            vectorized(
                #[inline(always)]
                move || {
                    o.write(xs.iter().zip(ds).map(|(&xv, &d)| {
                        let live = !op.relu || xv * a + b > T::zero();
                        if live {
                            d * a
                        } else {
                            T::zero()
                        }
                    }));
                },
            );
        })
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
    out.extend(sums.iter().map(|s| T::from_f64(s.0)));
    out.extend(sums.iter().map(|s| T::from_f64(s.1)));
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
        let _time = crate::profile::scope(self.name());
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
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l1)?;
        let out = dispatch!((s1, l1) => x, (s2, l2) => dy, (s3, l3) => ss;
            affine_bwd(self.0, x, dy, ss, n, c, h * w));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * c)))
    }
}
