//! # pixclass-metrics
//!
//! Losses and metrics of per-pixel classification:
//! - [`loss`]: cross-entropy, the study's soft IoU, soft Dice (differentiable);
//! - [`metric`]: pixel accuracy, a confusion matrix accumulated over a whole
//!   split (per-class IoU, mIoU, foreground IoU), and the study's
//!   thresholded "mIOU", class-balanced accuracy;
//! - [`colour`]: the error and colourfulness of decoded colour images.
//!
//! Losses take logits `[N, K, H, W]` and integer targets `[N, H, W]`. This
//! crate owns no models or data; it only measures.

pub mod colour;
pub mod loss;
pub mod metric;

pub use loss::{cross_entropy, soft_dice_loss, soft_iou_loss, Loss};
pub use metric::{correct_pixels, thresholded_iou_score, ConfusionMatrix};
