//! Differentiable losses on per-pixel logits.

use candle_core::{Result, Tensor};
use pixclass_ops as ops;

/// The losses pixclass trains with (defined with the kernels that compute
/// them, in `pixclass-ops`).
pub use pixclass_ops::Loss;

/// `loss` of per-pixel logits against integer targets (the margin form for
/// two classes is [`Loss::compute_margin`]).
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer -> scalar.
pub fn compute(loss: Loss, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    match loss {
        Loss::Ce => cross_entropy(logits, target),
        Loss::Iou => soft_iou_loss(logits, target),
        Loss::Dice => soft_dice_loss(logits, target),
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

/// Cross-entropy with a weight per target class: `-Σ w[y] log p_y / P`
/// over the `P` pixels of the batch (PyTorch's `F.cross_entropy(logits,
/// target, weight=w, reduction="sum") / P`; not divided by `Σ w[y]`, so
/// weights normalised to mean 1 over the training pixels keep the loss's
/// scale, as in Zhang, Isola & Efros's class rebalancing).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use pixclass_metrics::loss::{cross_entropy, weighted_cross_entropy};
/// let dev = Device::Cpu;
/// let logits = Tensor::new(&[0.3f32, -1.0, 2.0, 0.5, 0.0, 1.0], &dev)
///     .unwrap().reshape((1, 3, 1, 2)).unwrap();
/// let target = Tensor::new(&[2u32, 0], &dev).unwrap().reshape((1, 1, 2)).unwrap();
/// // Unit weights: the plain cross-entropy.
/// let ones = Tensor::new(&[1f32, 1.0, 1.0], &dev).unwrap();
/// let a = weighted_cross_entropy(&logits, &target, &ones).unwrap().to_scalar::<f32>().unwrap();
/// let b = cross_entropy(&logits, &target).unwrap().to_scalar::<f32>().unwrap();
/// assert!((a - b).abs() < 1e-6);
/// // Weight 0 on class 0: only pixel 0 (class 2, logits 0.3, 2.0, 0.0)
/// // counts, divided by the 2 pixels.
/// let w = Tensor::new(&[0f32, 1.0, 1.0], &dev).unwrap();
/// let c = weighted_cross_entropy(&logits, &target, &w).unwrap().to_scalar::<f32>().unwrap();
/// let p2 = 0.0 - (0.3f32.exp() + 2.0f32.exp() + 0.0f32.exp()).ln();
/// assert!((c - (-p2 / 2.0)).abs() < 1e-6);
/// ```
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer, `weights` `[K]`
/// -> scalar.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let (n, k, h, w) = logits.dims4()?;
    if weights.dims() != [k] {
        candle_core::bail!(
            "class weights have shape {:?}, expected [{k}] for {k}-class logits",
            weights.dims()
        );
    }
    let logp = ops::log_softmax(logits, 1)?;
    let y = target.to_dtype(candle_core::DType::U32)?;
    let picked = logp.gather(&y.reshape((n, 1, h, w))?, 1)?.flatten_all()?;
    let wy = weights
        .to_dtype(logp.dtype())?
        .index_select(&y.flatten_all()?, 0)?;
    (picked * wy)?.sum_all()?.neg()? / (n * h * w) as f64
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
/// ```
/// use candle_core::{Device, Tensor};
/// use pixclass_metrics::{soft_dice_loss, soft_iou_loss};
/// // One image of two pixels; logits (0, 0) give p = 0.5 everywhere.
/// let logits = Tensor::zeros((1, 2, 1, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let target = Tensor::new(&[[[1u32, 0]]], &Device::Cpu)?;
/// // I = 0.5, U = (0.5 + 0.5) + 1 - 0.5 = 1.5.
/// let iou = soft_iou_loss(&logits, &target)?.to_scalar::<f32>()?;
/// assert!((iou - (1.0 - 0.5 / (1.5 + 1e-6))).abs() < 1e-6);
/// // Dice: 1 - (2I + 1e-6) / (Σp + Σy + 1e-6) = 1 - 1/2.
/// let dice = soft_dice_loss(&logits, &target)?.to_scalar::<f32>()?;
/// assert!((dice - 0.5).abs() < 1e-6);
/// // Three classes are refused: these losses are two-class.
/// let three = Tensor::zeros((1, 3, 1, 2), candle_core::DType::F32, &Device::Cpu)?;
/// assert!(soft_iou_loss(&three, &target).is_err());
/// # Ok::<(), candle_core::Error>(())
/// ```
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
