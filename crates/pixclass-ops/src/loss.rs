//! Softmax, log-softmax and the per-pixel losses: K-class cross-entropy of
//! logits, and the two-class losses of a margin `d = logit_1 - logit_0`.

use candle_core::{DType, Result, Tensor};

use crate::{cpu_float, kernels};

/// Softmax along `dim`, with the usual max shift (detached: it cancels out of
/// the gradient analytically).
///
/// # Shapes
/// Any shape; the output has the input's shape.
pub fn softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.detach().max_keepdim(dim)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    e.broadcast_div(&s)
}

/// Log-softmax along `dim`, numerically stable.
///
/// # Shapes
/// Any shape; the output has the input's shape.
pub fn log_softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.detach().max_keepdim(dim)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(dim)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Mean cross-entropy over all pixels (PyTorch's `F.cross_entropy(logits,
/// target)`). CPU: one fused kernel with an exact backward; other devices:
/// [`cross_entropy_portable`].
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer -> scalar.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if cpu_float(logits) {
        let t = target.to_dtype(DType::U32)?.contiguous()?;
        return logits
            .contiguous()?
            .apply_op2(&t, kernels::loss::CrossEntropy::new(logits.track_op()));
    }
    cross_entropy_portable(logits, target)
}

/// [`cross_entropy`] from candle primitives (log-softmax, gather, sum).
///
/// # Shapes
/// As [`cross_entropy`].
pub fn cross_entropy_portable(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (n, _k, h, w) = logits.dims4()?;
    let (tn, th, tw) = target.dims3()?;
    if (tn, th, tw) != (n, h, w) {
        candle_core::bail!(
            "cross_entropy: logits {:?} and target {:?} disagree",
            logits.dims(),
            target.dims()
        );
    }
    let lsm = log_softmax(logits, 1)?;
    let picked = lsm.gather(&target.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.sum_all()?.affine(-1.0 / (n * h * w) as f64, 0.0)
}

/// The losses pixclass trains with (one enum for the whole workspace: the
/// kernels, the metrics crate's logits-level losses, configs and the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Mean per-pixel cross-entropy.
    Ce,
    /// The study's soft IoU over the whole batch (SPEC §B.3).
    Iou,
    /// Soft Dice over the whole batch.
    Dice,
}

impl Loss {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Iou => "iou",
            Loss::Dice => "dice",
        }
    }

    /// This loss of a two-class problem given the margin
    /// `d = logit_1 - logit_0` instead of both logits: [`margin_loss`].
    ///
    /// # Shapes
    /// `margin` `[N, H, W]`, `target` `[N, H, W]` u32 (0/1) -> scalar.
    pub fn compute_margin(self, margin: &Tensor, target: &Tensor) -> Result<Tensor> {
        margin_loss(margin, target, self)
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ce" => Ok(Loss::Ce),
            "iou" => Ok(Loss::Iou),
            "dice" => Ok(Loss::Dice),
            _ => Err(format!("unknown loss {s:?}: ce, iou or dice")),
        }
    }
}

/// A two-class loss of the margin `d = logit_1 - logit_0` (so
/// `softmax(logits)[1] = sigmoid(d)`), equal to the same loss of the
/// two-channel logits (values and gradients; half the memory): cross-entropy
/// `mean softplus(-(2y-1)·d)`, or the soft IoU / Dice of `p = sigmoid(d)`
/// with batch-level sums (SPEC §B.3). CPU: one fused kernel with an exact
/// backward; elsewhere [`margin_loss_portable`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use pixclass_ops::{margin_loss, Loss};
/// // Two pixels predicted right with margins +2 (foreground) and -2:
/// // p = sigmoid(±2) = (p, 1 - p).
/// let d = Tensor::new(&[[[2f32, -2.0]]], &Device::Cpu)?;
/// let y = Tensor::new(&[[[1u32, 0]]], &Device::Cpu)?;
/// let p = 1.0 / (1.0 + (-2f32).exp());
/// let iou = margin_loss(&d, &y, Loss::Iou)?.to_scalar::<f32>()?;
/// // I = p, U = p + (1 - p) + 1 - p = 2 - p.
/// assert!((iou - (1.0 - p / (2.0 - p + 1e-6))).abs() < 1e-6);
/// let dice = margin_loss(&d, &y, Loss::Dice)?.to_scalar::<f32>()?;
/// assert!((dice - (1.0 - (2.0 * p + 1e-6) / (1.0 + 1.0 + 1e-6))).abs() < 1e-6);
/// let ce = margin_loss(&d, &y, Loss::Ce)?.to_scalar::<f32>()?;
/// assert!((ce - (1.0 + (-2f32).exp()).ln()).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Shapes
/// `margin` `[N, H, W]` float, `target` `[N, H, W]` u32 (0/1) -> scalar.
pub fn margin_loss(margin: &Tensor, target: &Tensor, loss: Loss) -> Result<Tensor> {
    if cpu_float(margin) && target.dtype() == DType::U32 {
        return margin
            .contiguous()?
            .apply_op2(&target.contiguous()?, kernels::loss::BinaryLoss::new(loss));
    }
    margin_loss_portable(margin, target, loss)
}

/// [`margin_loss`] from candle primitives (every device).
///
/// # Shapes
/// As [`margin_loss`].
pub fn margin_loss_portable(margin: &Tensor, target: &Tensor, loss: Loss) -> Result<Tensor> {
    if margin.dims() != target.dims() {
        candle_core::bail!(
            "margin loss: margin {:?} and targets {:?} disagree",
            margin.dims(),
            target.dims()
        );
    }
    let y = target.to_dtype(margin.dtype())?;
    match loss {
        Loss::Ce => {
            // softplus(z) = max(z, 0) + ln(1 + exp(-|z|)), z = -(2y-1)·d.
            let z = margin.mul(&y.affine(-2.0, 1.0)?)?;
            let sp = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            sp.mean_all()
        }
        Loss::Iou | Loss::Dice => {
            let p = candle_nn::ops::sigmoid(margin)?;
            let i = p.mul(&y)?.sum_all()?;
            let ps = p.sum_all()?;
            let ys = y.sum_all()?;
            if loss == Loss::Iou {
                let u = ((ps + ys)? - &i)?;
                i.div(&(u + 1e-6)?)?.affine(-1.0, 1.0)
            } else {
                let num = (i.affine(2.0, 0.0)? + 1e-6)?;
                num.div(&((ps + ys)? + 1e-6)?)?.affine(-1.0, 1.0)
            }
        }
    }
}
