//! Differentiable losses on per-pixel logits.

use candle_core::{Result, Tensor};
use pixclass_models::ops;

/// The losses pixclass trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Mean per-pixel cross-entropy.
    Ce,
    /// The study's soft IoU (SPEC §B.3).
    Iou,
    /// Soft Dice (an extra).
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
    /// `d = logit_1 - logit_0` instead of both logits (equal values and
    /// gradients; half the memory, one fused pass on the CPU).
    ///
    /// # Shapes
    /// `margin` `[N, H, W]`, `target` `[N, H, W]` u32 (0/1) -> scalar.
    pub fn compute_margin(self, margin: &Tensor, target: &Tensor) -> Result<Tensor> {
        use pixclass_models::cpu_kernels::BinaryLossKind as K;
        let kind = match self {
            Loss::Ce => K::Ce,
            Loss::Iou => K::Iou,
            Loss::Dice => K::Dice,
        };
        ops::binary_loss(margin, target, kind)
    }

    /// Computes this loss.
    ///
    /// # Shapes
    /// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer -> scalar.
    pub fn compute(self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self {
            Loss::Ce => cross_entropy(logits, target),
            Loss::Iou => soft_iou_loss(logits, target),
            Loss::Dice => soft_dice_loss(logits, target),
        }
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

/// Mean cross-entropy over all pixels of the batch (PyTorch's
/// `F.cross_entropy(logits, target)`).
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer -> scalar.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    ops::cross_entropy(logits, target)
}

/// Foreground probability and float target of a 2-class problem.
fn fg_prob(logits: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, k, _, _) = logits.dims4()?;
    if k != 2 {
        candle_core::bail!("soft IoU/Dice need 2-class logits, got {k} classes");
    }
    let p = ops::softmax(logits, 1)?.narrow(1, 1, 1)?.squeeze(1)?;
    let y = target.to_dtype(p.dtype())?;
    Ok((p, y))
}

/// The study's soft IoU loss: `p = softmax(logits)[:, 1]`,
/// `I = Σ p·y`, `U = Σ (p + y - p·y)` over all pixels of the whole batch,
/// loss `1 - I / (U + 1e-6)`.
///
/// # Shapes
/// `logits` `[N, 2, H, W]`, `target` `[N, H, W]` (0/1) -> scalar.
pub fn soft_iou_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (p, y) = fg_prob(logits, target)?;
    let py = p.mul(&y)?;
    let i = py.sum_all()?;
    let u = ((p.sum_all()? + y.sum_all()?)? - &i)?;
    let ratio = i.div(&(u + 1e-6)?)?;
    ratio.affine(-1.0, 1.0)
}

/// Soft Dice loss over the whole batch: `1 - (2 Σ p·y + 1e-6)/(Σ p + Σ y + 1e-6)`.
///
/// # Shapes
/// `logits` `[N, 2, H, W]`, `target` `[N, H, W]` (0/1) -> scalar.
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (p, y) = fg_prob(logits, target)?;
    let num = (p.mul(&y)?.sum_all()?.affine(2.0, 0.0)? + 1e-6)?;
    let den = ((p.sum_all()? + y.sum_all()?)? + 1e-6)?;
    num.div(&den)?.affine(-1.0, 1.0)
}
