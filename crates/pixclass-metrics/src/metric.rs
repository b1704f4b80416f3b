//! Non-differentiable metrics, accumulated over whole splits.

use candle_core::{DType, Result, Tensor};

/// Number of pixels whose argmax class equals the target.
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` -> count.
pub fn correct_pixels(logits: &Tensor, target: &Tensor) -> Result<u64> {
    let pred = pixclass_ops::argmax_classes(logits)?;
    let eq = pred.eq(&target.to_dtype(DType::U32)?)?;
    Ok(eq.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as u64)
}

/// A `K x K` confusion matrix (rows: truth, columns: prediction),
/// accumulated over a whole split (torchvision's segmentation reference).
/// Every split-level segmentation metric is read off it; a class that is
/// neither present nor predicted has no IoU (`None`), never NaN or 1.
///
/// ```
/// use pixclass_metrics::ConfusionMatrix;
/// let mut cm = ConfusionMatrix::new(3);
/// //           truth         prediction
/// cm.add(&[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0]);
/// assert_eq!(cm.get(1, 0), 1); // one pixel of class 1 predicted as 0
/// assert_eq!(cm.total(), 5);
/// assert_eq!(cm.pixel_accuracy(), Some(0.6));
/// // Class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 1/2;
/// // class 2 never occurs: no IoU, and the mean leaves it out.
/// assert_eq!(cm.iou(), vec![Some(1.0 / 3.0), Some(0.5), None]);
/// assert_eq!(cm.mean_iou(), Some((1.0 / 3.0 + 0.5) / 2.0));
/// assert_eq!(ConfusionMatrix::new(2).mean_iou(), None);
/// ```
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
        let pred: Vec<u32> = pixclass_ops::argmax_classes(logits)?
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

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.k
    }

    /// Pixels whose truth is class `t`.
    pub fn support(&self, t: usize) -> u64 {
        (0..self.k).map(|p| self.get(t, p)).sum()
    }

    /// Fraction of pixels predicted right (`None` when nothing was counted).
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let diag: u64 = (0..self.k).map(|i| self.get(i, i)).sum();
        (self.total() > 0).then(|| diag as f64 / self.total() as f64)
    }

    /// Recall of each class: `TP / (TP + FN)`, the fraction of its pixels
    /// predicted right; `None` for a class absent from the truth.
    pub fn recall(&self) -> Vec<Option<f64>> {
        (0..self.k)
            .map(|c| {
                let n = self.support(c);
                (n > 0).then(|| self.get(c, c) as f64 / n as f64)
            })
            .collect()
    }

    /// Class-balanced accuracy: the mean of [`ConfusionMatrix::recall`]
    /// over the classes present in the truth (`None` when none is). Every
    /// class counts the same however rare it is, so predicting only the
    /// common classes scores low.
    ///
    /// ```
    /// use pixclass_metrics::ConfusionMatrix;
    /// let mut cm = ConfusionMatrix::new(3);
    /// // 8 pixels of class 0, 2 of class 1; everything predicted as 0.
    /// cm.add(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1], &[0; 10]);
    /// assert_eq!(cm.pixel_accuracy(), Some(0.8));
    /// // Recall 1 for class 0, 0 for class 1; class 2 is absent.
    /// assert_eq!(cm.recall(), vec![Some(1.0), Some(0.0), None]);
    /// assert_eq!(cm.balanced_accuracy(), Some(0.5));
    /// ```
    pub fn balanced_accuracy(&self) -> Option<f64> {
        let r: Vec<f64> = self.recall().into_iter().flatten().collect();
        (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
    }

    /// IoU of each class: `TP / (TP + FP + FN)`; `None` for a class that is
    /// neither present nor predicted.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.k)
            .map(|c| {
                let tp = self.get(c, c);
                let fn_: u64 = (0..self.k).map(|p| self.get(c, p)).sum::<u64>() - tp;
                let fp: u64 = (0..self.k).map(|t| self.get(t, c)).sum::<u64>() - tp;
                let den = tp + fp + fn_;
                (den > 0).then(|| tp as f64 / den as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes that have one (`None` when none has).
    pub fn mean_iou(&self) -> Option<f64> {
        let v: Vec<f64> = self.iou().into_iter().flatten().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// The study's per-image "mIOU" score (SPEC §B.3): with
/// `iou = (|pred ∧ gt| + 1e-6) / (|pred ∨ gt| + 1e-6)`, the score is
/// `ceil(clamp(20·(iou - 0.5), 0, 10)) / 10`: the fraction of the thresholds
/// 0.50, 0.55, ..., 0.95 that iou exceeds. `pred` and `gt` are 0/1 masks.
///
/// ```
/// use pixclass_metrics::thresholded_iou_score;
/// // IoU 2/3 exceeds 0.50, 0.55, 0.60 and 0.65: 4 of the 10 thresholds.
/// assert_eq!(thresholded_iou_score(&[1, 1, 1, 0], &[1, 1, 0, 0]), 0.4);
/// // Perfect overlap scores 1, IoU at or below 0.5 scores 0.
/// assert_eq!(thresholded_iou_score(&[0, 1, 1], &[0, 1, 1]), 1.0);
/// assert_eq!(thresholded_iou_score(&[1, 1, 0, 0], &[0, 1, 1, 0]), 0.0);
/// // The study's smoothing: an image with no foreground in either mask
/// // scores 1 (so a split without foreground must be refused upstream).
/// assert_eq!(thresholded_iou_score(&[0, 0], &[0, 0]), 1.0);
/// ```
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
