//! Non-differentiable metrics, accumulated over whole splits.

use candle_core::{DType, Result, Tensor};

/// Number of pixels whose argmax class equals the target.
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` -> count.
pub fn correct_pixels(logits: &Tensor, target: &Tensor) -> Result<u64> {
    let pred = logits.argmax(1)?.to_dtype(DType::U32)?;
    let eq = pred.eq(&target.to_dtype(DType::U32)?)?;
    Ok(eq.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as u64)
}

/// A `K x K` confusion matrix (rows: truth, columns: prediction),
/// accumulated over a whole split (torchvision's segmentation reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    k: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix for `k` classes.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            counts: vec![0; k * k],
        }
    }

    /// Adds pairs of (truth, prediction); values >= k are ignored.
    pub fn add(&mut self, truth: &[u32], pred: &[u32]) {
        for (&t, &p) in truth.iter().zip(pred) {
            let (t, p) = (t as usize, p as usize);
            if t < self.k && p < self.k {
                self.counts[t * self.k + p] += 1;
            }
        }
    }

    /// Adds the argmax of `logits` `[N, K, H, W]` against `target` `[N, H, W]`.
    pub fn add_logits(&mut self, logits: &Tensor, target: &Tensor) -> Result<()> {
        let pred: Vec<u32> = logits
            .argmax(1)?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        let truth: Vec<u32> = target.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        self.add(&truth, &pred);
        Ok(())
    }

    /// Count of (truth `t`, prediction `p`).
    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.k + p]
    }

    /// All pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of pixels predicted right (NaN when empty).
    pub fn pixel_accuracy(&self) -> f64 {
        let diag: u64 = (0..self.k).map(|i| self.get(i, i)).sum();
        diag as f64 / self.total() as f64
    }

    /// IoU of each class: `TP / (TP + FP + FN)`; NaN for a class that is
    /// neither present nor predicted.
    pub fn iou(&self) -> Vec<f64> {
        (0..self.k)
            .map(|c| {
                let tp = self.get(c, c);
                let fn_: u64 = (0..self.k).map(|p| self.get(c, p)).sum::<u64>() - tp;
                let fp: u64 = (0..self.k).map(|t| self.get(t, c)).sum::<u64>() - tp;
                let den = tp + fp + fn_;
                if den == 0 {
                    f64::NAN
                } else {
                    tp as f64 / den as f64
                }
            })
            .collect()
    }

    /// Mean IoU over classes with a defined IoU.
    pub fn mean_iou(&self) -> f64 {
        let v: Vec<f64> = self.iou().into_iter().filter(|x| !x.is_nan()).collect();
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The study's per-image "mIOU" score (SPEC §B.3): with
/// `iou = (|pred ∧ gt| + 1e-6) / (|pred ∨ gt| + 1e-6)`, the score is
/// `ceil(clamp(20·(iou - 0.5), 0, 10)) / 10`: the fraction of the thresholds
/// 0.50, 0.55, ..., 0.95 that iou exceeds. `pred` and `gt` are 0/1 masks.
pub fn thresholded_iou_score(pred: &[u32], gt: &[u32]) -> f64 {
    let mut inter = 0u64;
    let mut union = 0u64;
    for (&p, &g) in pred.iter().zip(gt) {
        let (p, g) = (p != 0, g != 0);
        inter += (p && g) as u64;
        union += (p || g) as u64;
    }
    // In f32 like the reference (torch tensors), so scores at exact
    // thresholds round the same way.
    let iou = (inter as f32 + 1e-6) / (union as f32 + 1e-6);
    let steps = (20.0f32 * (iou - 0.5)).clamp(0.0, 10.0).ceil();
    steps as f64 / 10.0
}
