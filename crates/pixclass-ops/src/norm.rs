//! Batch normalisation over `[N, C, H, W]`, with an optional fused ReLU:
//! train mode (batch statistics) and eval mode (given statistics).
//! `pixclass-models`' `BatchNorm2d` owns the parameters and the running
//! statistics; these are its computations.

use candle_core::{Result, Tensor};

use crate::{cpu_float, kernels};

/// What a train-mode batch normalisation computed.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised (and, when asked, rectified) output `[N, C, H, W]`.
    pub y: Tensor,
    /// The batch's per-channel mean `[C]` (f64, detached).
    pub mean: Tensor,
    /// The batch's per-channel biased variance `[C]` (f64, detached).
    pub var: Tensor,
}

/// Train-mode batch normalisation: `y = [relu](γ·(x - μ)/sqrt(σ² + eps) + β)`
/// with the batch's mean `μ` and biased variance `σ²` per channel, gradients
/// through `x`, `γ` and `β` (the statistics included). CPU (f32/f64, with
/// `γ` and `β`): one fused kernel per direction; elsewhere
/// [`batch_norm_train_portable`].
///
/// # Shapes
/// `x` `[N, C, H, W]`, `gamma`/`beta` `[C]` -> `[N, C, H, W]` (and `[C]`
/// statistics).
pub fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    check_count(x)?;
    match affine {
        Some((gamma, beta)) if cpu_float(x) => {
            let (y, mean, var) = kernels::batch_norm::batch_norm_train(x, gamma, beta, eps, relu)?;
            let dev = x.device();
            Ok(BatchNormTrain {
                y,
                mean: Tensor::new(mean.as_slice(), dev)?,
                var: Tensor::new(var.as_slice(), dev)?,
            })
        }
        _ => batch_norm_train_portable(x, affine, eps, relu),
    }
}

/// A resampling between a convolution and its BatchNorm
/// ([`crate::batch_norm_train_after_conv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// [`crate::max_pool2d`] with this window.
    MaxPool(usize),
    /// [`crate::upsample_nearest`] by this factor.
    Upsample(usize),
}

impl Resample {
    /// The size of an `h x w` plane resampled by the CPU kernels, when they
    /// take it (a pooling window that tiles the plane).
    pub(crate) fn out_size(self, h: usize, w: usize) -> Option<(usize, usize)> {
        match self {
            Self::MaxPool(k)
                if k > 0 && h >= k && w >= k && h.is_multiple_of(k) && w.is_multiple_of(k) =>
            {
                Some((h / k, w / k))
            }
            Self::Upsample(f) if f > 0 => Some((h * f, w * f)),
            _ => None,
        }
    }

    /// `x` resampled ([`crate::max_pool2d`] or [`crate::upsample_nearest`]).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::MaxPool(k) => crate::max_pool2d(x, k),
            Self::Upsample(f) => crate::upsample_nearest(x, f),
        }
    }
}

/// [`batch_norm_train`] from candle primitives (sums one dimension at a
/// time; the path CUDA and Metal take).
///
/// # Shapes
/// As [`batch_norm_train`].
pub fn batch_norm_train_portable(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let (n, _, h, w) = check_count(x)?;
    let count = (n * h * w) as f64;
    let sum = |t: &Tensor| t.sum_keepdim(3)?.sum_keepdim(2)?.sum_keepdim(0);
    let mean = (sum(x)? / count)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (sum(&xc.sqr()?)? / count)?;
    let inv = (&var + eps)?.sqrt()?.recip()?;
    let y = scale_by(xc.broadcast_mul(&inv)?, affine)?;
    Ok(BatchNormTrain {
        y: if relu { y.relu()? } else { y },
        mean: mean.detach().flatten_all()?,
        var: var.detach().flatten_all()?,
    })
}

/// Eval-mode batch normalisation with given per-channel statistics:
/// `y = [relu](γ·(x - mean)/sqrt(var + eps) + β)`. CPU: the statistics are
/// folded into one per-channel scale and shift and applied in one pass
/// (gradients still reach `γ` and `β` through them); elsewhere
/// [`batch_norm_eval_portable`].
///
/// # Shapes
/// `x` `[N, C, H, W]`, `mean`/`var`/`gamma`/`beta` `[C]` -> `[N, C, H, W]`.
pub fn batch_norm_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if !cpu_float(x) {
        return batch_norm_eval_portable(x, mean, var, affine, eps, relu);
    }
    let dt = x.dtype();
    let inv = (var.detach() + eps)?.sqrt()?.recip()?.to_dtype(dt)?;
    let mean = mean.detach().to_dtype(dt)?;
    let (scale, shift) = match affine {
        Some((w, b)) => {
            let scale = w.to_dtype(dt)?.mul(&inv)?;
            let shift = b.to_dtype(dt)?.sub(&mean.mul(&scale)?)?;
            (scale, shift)
        }
        None => (inv.clone(), mean.mul(&inv)?.neg()?),
    };
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        kernels::batch_norm::ChannelAffine { relu },
    )
}

/// [`batch_norm_eval`] from candle primitives (broadcasts).
///
/// # Shapes
/// As [`batch_norm_eval`].
pub fn batch_norm_eval_portable(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mean = mean.detach().reshape((1, c, 1, 1))?.to_dtype(x.dtype())?;
    let var = var.detach().reshape((1, c, 1, 1))?;
    let inv = (var + eps)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
    let y = scale_by(x.broadcast_sub(&mean)?.broadcast_mul(&inv)?, affine)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// `γ·y + β` per channel, when there are `γ` and `β`.
fn scale_by(y: Tensor, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let Some((w, b)) = affine else {
        return Ok(y);
    };
    let c = y.dim(1)?;
    y.broadcast_mul(&w.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)
}

/// The dimensions of `x`, refused when a channel has a single value (the
/// unbiased variance of the running statistics would be NaN; PyTorch
/// refuses it too).
fn check_count(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let d = x.dims4()?;
    check_dims(x.dims())?;
    Ok(d)
}

/// An error unless `[N, C, H, W]` holds more than one value per channel.
pub(crate) fn check_dims(dims: &[usize]) -> Result<()> {
    if dims[0] * dims[2] * dims[3] < 2 {
        candle_core::bail!(
            "batch norm in train mode needs more than one value per channel, got input {dims:?}"
        );
    }
    Ok(())
}
