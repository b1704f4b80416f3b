//! The fine-tuning task (SPEC §B.2): the head's training loss on cached
//! features, the validation metrics, prediction panels, and [`finetune`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use pixclass_data::segment::{SegSet, SegSplits};
use pixclass_metrics::metric::{thresholded_iou_score, ConfusionMatrix};
use pixclass_metrics::Loss;
use pixclass_models::init::seeded_var_builder;
use pixclass_models::layers::trainable_vars;
use pixclass_models::segment::{SegBackbone, SegHead};
use pixclass_runs::{DataProvenance, MetricSpec, Metrics, RunRecord};

use super::features::{weights_id, FeatureStore};
use super::{default_cache_dir, FeatureCache, FrozenMode, HeadInit, SegTrainConfig};
use pixclass_runs::{RunDir, Start};

use crate::device::select_device;
use crate::engine::{fit, new_record, FitConfig, TrainTask};
use crate::error::{Result, TrainError};
use crate::plot::{save_png, tile_grid, with_column_titles};
use crate::run_dir::{check_memory, check_resume, write_config};

/// Validation loss (the training objective).
pub const VAL_LOSS: &str = "val_loss";
/// The study's thresholded "mIOU" (mean per-image score).
pub const VAL_MIOU_THR: &str = "val_miou_thr";
/// Foreground IoU from the confusion matrix of the split.
pub const VAL_IOU_FG: &str = "val_iou_fg";
/// Mean IoU of background and foreground.
pub const VAL_MIOU: &str = "val_miou";
/// Pixel accuracy.
pub const VAL_PIXEL_ACC: &str = "val_pixel_acc";

/// The metrics of a segmentation run, in column order.
pub fn metric_specs() -> Vec<MetricSpec> {
    vec![
        MetricSpec::minimise(VAL_LOSS, "validation loss", 4),
        MetricSpec::maximise(VAL_MIOU_THR, "thresholded mIOU (the study's)", 4),
        MetricSpec::maximise(VAL_IOU_FG, "foreground IoU", 4),
        MetricSpec::maximise(VAL_MIOU, "mean IoU", 4),
        MetricSpec::maximise(VAL_PIXEL_ACC, "pixel accuracy", 4),
    ]
}

/// The fine-tuning task.
pub struct SegTask {
    backbone: SegBackbone,
    head: SegHead,
    /// The head's standardisation buffers, set from the training features
    /// before the first evaluation or step (when standardising).
    pending_stats: Option<PendingStats>,
    /// The stacked features of the whole validation split, once computed.
    val_all: Option<Tensor>,
    train: SegSet,
    val: SegSet,
    train_store: FeatureStore,
    val_store: FeatureStore,
    cfg: SegTrainConfig,
    device: Device,
}

/// The head's `feature_mean`/`feature_std` buffers, still to be set from
/// the training split's features.
struct PendingStats {
    mean: candle_core::Var,
    std: candle_core::Var,
    /// With `--head-init class:..`: the head's weight and bias, to be
    /// rescaled so that the standardised head computes the pretrained rows'
    /// function (`W·s`, `b + W·m`).
    fold: Option<(candle_core::Var, candle_core::Var)>,
}

/// Images shown in the prediction panels.
const PANEL_IMAGES: usize = 6;

impl SegTask {
    fn features(&mut self, train_split: bool, idx: &[usize], train_mode: bool) -> Result<Tensor> {
        let (mean, std) = self.backbone.normalisation();
        let (set, store) = if train_split {
            (&self.train, &mut self.train_store)
        } else {
            (&self.val, &mut self.val_store)
        };
        if train_mode || !store.keep {
            let x = set.images_tensor(idx, mean, std, &self.device)?;
            return Ok(self.backbone.features_t(&x, train_mode)?);
        }
        store.fetch(&self.backbone, set, idx, &self.device)
    }

    /// Per-channel mean and standard deviation (floored at 1e-3 of the
    /// largest, so dead channels stay finite) of the eval-mode features of
    /// the whole training split, `[1, C, 1, 1]` each.
    fn feature_stats(&mut self) -> Result<(Tensor, Tensor)> {
        let n = self.train.len();
        let mut sum: Option<Tensor> = None;
        let mut sq: Option<Tensor> = None;
        let mut count = 0usize;
        let all: Vec<usize> = (0..n).collect();
        for idx in all.chunks(32) {
            let f = self.features(true, idx, false)?.to_dtype(DType::F64)?;
            let (b, _, h, w) = f.dims4()?;
            count += b * h * w;
            let s1 = f.sum_keepdim(0)?.sum_keepdim(2)?.sum_keepdim(3)?;
            let s2 = f.sqr()?.sum_keepdim(0)?.sum_keepdim(2)?.sum_keepdim(3)?;
            sum = Some(match sum {
                Some(a) => (a + s1)?,
                None => s1,
            });
            sq = Some(match sq {
                Some(a) => (a + s2)?,
                None => s2,
            });
        }
        let (Some(sum), Some(sq)) = (sum, sq) else {
            return Err(TrainError::Config("no training features".into()));
        };
        let mean = (sum / count as f64)?;
        let var = ((sq / count as f64)? - mean.sqr()?)?.relu()?;
        let std = var.sqrt()?;
        let floor = std.max_all()?.to_scalar::<f64>()?.max(1e-12) * 1e-3;
        let std = std.maximum(floor)?;
        Ok((mean.to_dtype(DType::F32)?, std.to_dtype(DType::F32)?))
    }

    /// The training objective of margins `[N, S, S]` against masks: the
    /// configured loss plus `ce_weight` times cross-entropy for a soft loss;
    /// cross-entropy alone while `warming_up`.
    fn objective(&self, margin: &Tensor, y: &Tensor, warming_up: bool) -> Result<Tensor> {
        let loss = self.cfg.loss;
        if warming_up || loss == Loss::Ce {
            return Ok(Loss::Ce.compute_margin(margin, y)?);
        }
        let soft = loss.compute_margin(margin, y)?;
        if self.cfg.ce_weight == 0.0 {
            return Ok(soft);
        }
        let ce = Loss::Ce.compute_margin(margin, y)?;
        Ok((soft + (ce * self.cfg.ce_weight)?)?)
    }

    /// Sets the standardisation buffers from the training features, once.
    fn apply_pending_stats(&mut self) -> Result<()> {
        let Some(p) = self.pending_stats.take() else {
            return Ok(());
        };
        let (m, s) = self.feature_stats()?;
        p.mean.set(&m)?;
        p.std.set(&s)?;
        if let Some((w, b)) = p.fold {
            // W·(f - m)/s' + b' = W0·f + b0 with W = W0·s, b = b0 + W0·m.
            let w0 = w.as_tensor().clone();
            let (o, c) = (w0.dim(0)?, w0.dim(1)?);
            let w0 = w0.reshape((o, c))?;
            let shift = w0.matmul(&m.reshape((c, 1))?)?.reshape(o)?;
            b.set(&(b.as_tensor() + shift)?)?;
            let scaled = w0.broadcast_mul(&s.reshape((1, c))?)?;
            w.set(&scaled.reshape((o, c, 1, 1))?)?;
        }
        Ok(())
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        order.shuffle(&mut rng);
        order
    }

    /// Validation margins `logit_1 - logit_0` of images `idx` (eval mode),
    /// `[n, S, S]`.
    fn val_margin(&mut self, idx: &[usize]) -> Result<Tensor> {
        // The whole validation split in one batch (the usual case): stack
        // its cached features once, not every epoch.
        let whole = idx.len() == self.val.len() && idx.iter().enumerate().all(|(k, &i)| k == i);
        let f = match (&self.val_all, whole && self.val_store.keep) {
            (Some(f), true) => f.clone(),
            (_, true) => {
                let f = self.features(false, idx, false)?;
                self.val_all = Some(f.clone());
                f
            }
            _ => self.features(false, idx, false)?,
        };
        let s = self.val.size;
        Ok(self.head.forward_margin(&f, s, s)?)
    }
}

impl TrainTask for SegTask {
    fn metrics(&self) -> Vec<MetricSpec> {
        metric_specs()
    }

    fn num_train_batches(&self) -> usize {
        self.train.len() / self.cfg.train_batch_size
    }

    fn train_loss(&mut self, epoch: usize, batch: usize) -> Result<Tensor> {
        self.apply_pending_stats()?;
        let bs = self.cfg.train_batch_size;
        let order = self.epoch_order(epoch);
        let idx = &order[batch * bs..(batch + 1) * bs];
        let train_mode = self.cfg.frozen_mode == FrozenMode::Train;
        let f = self.features(true, idx, train_mode)?;
        let s = self.train.size;
        // The loss of the margin equals the loss of both logits (2 classes).
        let margin = self.head.forward_margin(&f, s, s)?;
        let y = self.train.masks_tensor(idx, &self.device)?;
        let warming_up = epoch <= self.cfg.ce_warmup_epochs;
        self.objective(&margin, &y, warming_up)
    }

    fn evaluate(&mut self) -> Result<Metrics> {
        self.apply_pending_stats()?;
        let n = self.val.len();
        let mut loss_sum = 0.0;
        let mut score_sum = 0.0;
        let mut cm = ConfusionMatrix::new(2);
        let all: Vec<usize> = (0..n).collect();
        for idx in all.chunks(self.cfg.val_batch_size.max(1)) {
            let margin = self.val_margin(idx)?;
            let y = self.val.masks_tensor(idx, &self.device)?;
            let l = self.objective(&margin, &y, false)?;
            loss_sum += l.to_dtype(DType::F64)?.to_scalar::<f64>()? * idx.len() as f64;
            let pred = foreground(&margin)?;
            let truth: Vec<u32> = y.flatten_all()?.to_vec1()?;
            cm.add(&truth, &pred);
            let px = self.val.size * self.val.size;
            for k in 0..idx.len() {
                score_sum += thresholded_iou_score(
                    &pred[k * px..(k + 1) * px],
                    &truth[k * px..(k + 1) * px],
                );
            }
        }
        Ok(Metrics::new()
            .with(VAL_LOSS, loss_sum / n as f64)
            .with(VAL_MIOU_THR, score_sum / n as f64)
            .with(VAL_IOU_FG, split_metric(cm.iou()[1], "foreground IoU")?)
            .with(VAL_MIOU, split_metric(cm.mean_iou(), "mean IoU")?)
            .with(
                VAL_PIXEL_ACC,
                split_metric(cm.pixel_accuracy(), "pixel accuracy")?,
            ))
    }

    fn after_epoch(&mut self, epoch: usize, out_dir: &Path) -> Result<()> {
        // A fixed spread over the split (its classes come in runs).
        let n = self.val.len();
        let k = n.min(PANEL_IMAGES);
        let idx: Vec<usize> = (0..k).map(|i| i * n / k).collect();
        let margin = self.val_margin(&idx)?;
        let pred: Vec<u8> = foreground(&margin)?.into_iter().map(|v| v as u8).collect();
        let img = prediction_panels(&self.val, &idx, &pred)?;
        save_png(
            &img,
            &out_dir.join(format!("predictions_epoch_{epoch:02}.png")),
        )
    }
}

/// A split-level metric that must exist (a validation split always has
/// pixels and foreground: the data loader refuses one without).
pub(crate) fn split_metric(v: Option<f64>, what: &str) -> Result<f64> {
    v.ok_or_else(|| {
        TrainError::Config(format!(
            "the validation split has no {what}: no pixel of that class is in the masks or the predictions"
        ))
    })
}

/// Argmax of two classes from the margin: 1 where `logit_1 > logit_0`
/// (ties go to class 0, like argmax).
pub(crate) fn foreground(margin: &Tensor) -> Result<Vec<u32>> {
    Ok(margin
        .gt(0.0)?
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1()?)
}

/// The columns of [`prediction_panels`].
pub const PANEL_COLUMNS: [&str; 4] = ["image", "prediction", "ground truth", "overlay"];

/// `photo` with the predicted foreground tinted red and the true mask's
/// outline in yellow (`s x s`, 0/1 masks).
pub fn overlay(photo: &RgbImage, pred: &[u8], truth: &[u8], s: u32) -> RgbImage {
    let at = |m: &[u8], x: i64, y: i64| -> bool {
        x >= 0
            && y >= 0
            && x < i64::from(s)
            && y < i64::from(s)
            && m[(y * i64::from(s) + x) as usize] != 0
    };
    RgbImage::from_fn(s, s, |x, y| {
        let (xi, yi) = (i64::from(x), i64::from(y));
        let t = at(truth, xi, yi);
        let edge = t
            && [(-1, 0), (1, 0), (0, -1), (0, 1)]
                .iter()
                .any(|(dx, dy)| !at(truth, xi + dx, yi + dy));
        let p = photo.get_pixel(x, y).0;
        if edge {
            Rgb([255, 230, 0])
        } else if at(pred, xi, yi) {
            Rgb([((p[0] as u16 + 2 * 255) / 3) as u8, p[1] / 2, p[2] / 2])
        } else {
            Rgb(p.map(|v| v / 2))
        }
    })
}

/// Rows of (image, predicted mask, ground truth, overlay: the prediction
/// tinted red over the photo with the truth's outline in yellow), one per
/// sample, under a band of column titles; `pred` holds the predicted 0/1
/// masks of `idx` in order.
pub fn prediction_panels(set: &SegSet, idx: &[usize], pred: &[u8]) -> Result<RgbImage> {
    let s = set.size as u32;
    let px = set.size * set.size;
    let mut rows = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let rgb = set.image_bytes(i);
        let photo = RgbImage::from_raw(s, s, rgb.to_vec())
            .ok_or_else(|| TrainError::Config("image size".into()))?;
        let mask_img = |m: &[u8]| {
            RgbImage::from_fn(s, s, |x, y| {
                let p = (y * s + x) as usize;
                if m[p] != 0 {
                    Rgb([255, 255, 255])
                } else {
                    Rgb([0, 0, 0])
                }
            })
        };
        let (p, t) = (&pred[k * px..(k + 1) * px], set.mask_bytes(i));
        let over = overlay(&photo, p, t, s);
        rows.push(vec![photo, mask_img(p), mask_img(t), over]);
    }
    with_column_titles(&tile_grid(&rows, 1, 4), &PANEL_COLUMNS, s, 4)
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct SegRun {
    /// The run directory.
    pub out_dir: PathBuf,
    /// The run record (every epoch's metrics by name, the best epoch).
    pub record: RunRecord,
    /// Total wall time of this call.
    pub seconds: f64,
}

fn build_head(
    cfg: &SegTrainConfig,
    backbone: &SegBackbone,
    train: &SegSet,
    device: &Device,
) -> Result<(VarMap, SegHead)> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, cfg.seed, DType::F32, device);
    let head = SegHead::new(
        backbone.feature_channels(),
        2,
        backbone.align_corners(),
        cfg.feature_norm,
        vb.pp("head"),
    )?;
    let set = |weight: &Tensor, bias: &Tensor| -> Result<()> {
        for (name, var) in trainable_vars(&varmap) {
            var.set(if name.ends_with("bias") { bias } else { weight })?;
        }
        Ok(())
    };
    match cfg.head_init {
        HeadInit::Torch => {}
        HeadInit::Prior => {
            let p = train.foreground_fraction().clamp(1e-4, 1.0 - 1e-4);
            let logit = (p / (1.0 - p)).ln() as f32;
            let c = backbone.feature_channels();
            set(
                &Tensor::zeros((2, c, 1, 1), DType::F32, device)?,
                &Tensor::new(&[0f32, logit], device)?,
            )?;
        }
        HeadInit::Class(k) => {
            let (w, b) = backbone.classifier_rows(&[0, k])?;
            set(&w.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?;
        }
    }
    Ok((varmap, head))
}

/// Fine-tunes the head as configured on `splits`, writing everything into
/// `out_dir`, which this process owns for the run (`start`: see
/// [`crate::colourize::train_colouriser`]). The settings are checked first
/// ([`SegTrainConfig::validate`], and the memory the feature cache will
/// need); nothing is written to `out_dir` (but its lock file) until the
/// model and both splits have loaded.
pub fn finetune(
    cfg: &SegTrainConfig,
    splits: SegSplits,
    out_dir: &Path,
    start: Start,
    progress: bool,
) -> Result<SegRun> {
    let t0 = std::time::Instant::now();
    cfg.validate()?;
    let device = select_device(cfg.device, 0)?;
    let splits = splits.limit(cfg.limit);
    let side = cfg.preprocess.size as u64;
    let images = (splits.train.len() + splits.val.len()) as u64;
    let per_image = 256 * side.div_ceil(8).pow(2) * 4 + side * side * 4;
    let per_step = (cfg.train_batch_size.max(cfg.val_batch_size) as u64) * side * side * 4 * 6;
    check_memory(
        "this fine-tuning (features kept for every image)",
        images * per_image + per_step,
    )?;
    let mut cfg = cfg.clone();
    cfg.data = splits.description.clone();
    let dir = RunDir::open(out_dir, start)?;
    let resume = start == Start::Resume;
    if resume {
        let epochs = cfg.epochs;
        check_resume(out_dir, &cfg, |saved: SegTrainConfig| SegTrainConfig {
            epochs,
            ..saved
        })?;
    }

    let backbone = SegBackbone::load(cfg.model, cfg.weights.as_deref(), &device)?;
    if cfg.frozen_mode == FrozenMode::Train && !backbone.has_train_mode() {
        tracing::info!(
            "{}: BatchNorm is folded and there is no dropout, so --frozen-mode train computes the same features as eval",
            cfg.model.name()
        );
    }
    let train = SegSet::load(&splits.train, &cfg.preprocess, cfg.skip_bad)?;
    let val = SegSet::load(&splits.val, &cfg.preprocess, cfg.skip_bad)?;
    let data_seconds = t0.elapsed().as_secs_f64();
    if train.len() < cfg.train_batch_size {
        return Err(TrainError::Config(format!(
            "the training split has {} images, fewer than one batch of {} (the last partial batch is dropped): lower --train-batch-size",
            train.len(),
            cfg.train_batch_size
        )));
    }
    if val.is_empty() {
        return Err(TrainError::Config("the validation split is empty".into()));
    }
    train.require_foreground("training", &cfg.preprocess.rule)?;
    val.require_foreground("validation", &cfg.preprocess.rule)?;
    tracing::info!(
        "{}: {} train / {} val images ({:.1} % flower pixels in train), loaded in {data_seconds:.1} s",
        cfg.data,
        train.len(),
        val.len(),
        100.0 * train.foreground_fraction()
    );
    let (varmap, head) = build_head(&cfg, &backbone, &train, &device)?;
    let trainable = trainable_vars(&varmap);
    // The inputs are good: now the directory is this run's.
    dir.clear_previous()?;
    write_config(out_dir, &cfg)?;
    let pending_stats = if cfg.feature_norm && !resume {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Config("varmap poisoned".into()))?;
        let get = |n: &str| data.get(n).cloned();
        match (get("head.feature_mean"), get("head.feature_std")) {
            (Some(mean), Some(std)) => Some(PendingStats {
                mean,
                std,
                fold: match (cfg.head_init, get("head.weight"), get("head.bias")) {
                    (HeadInit::Class(_), Some(w), Some(b)) => Some((w, b)),
                    _ => None,
                },
            }),
            _ => None,
        }
    } else {
        None
    };
    let weights = weights_id(&cfg)?;
    let cache_dir = cfg.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cache = if cfg.frozen_mode == FrozenMode::Train && backbone.has_train_mode() {
        FeatureCache::Off
    } else {
        cfg.cache
    };
    let train_store = FeatureStore::new(&train, cfg.model.name(), &weights, cache, &cache_dir);
    let val_store = FeatureStore::new(&val, cfg.model.name(), &weights, cache, &cache_dir);
    let mut task = SegTask {
        backbone,
        head,
        pending_stats,
        val_all: None,
        train,
        val,
        train_store,
        val_store,
        cfg: cfg.clone(),
        device,
    };
    let label = format!("{} ({} loss)", cfg.model.name(), cfg.loss.name());
    let data = DataProvenance {
        description: cfg.data.clone(),
        train: task.train.len(),
        val: task.val.len(),
        embedded: splits.is_embedded(),
    };
    let record = new_record("segment", &label, &cfg, data, data_seconds)?;
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        adam: cfg.adam,
        out_dir: out_dir.to_path_buf(),
        resume,
        best: Some(VAL_MIOU_THR.into()),
        progress,
        eval_first: true,
        warmup_steps: cfg.warmup_steps,
        schedule: cfg.lr_schedule,
        record,
    };
    let record = fit(&mut task, &varmap, trainable, &fit_cfg)?;
    drop(dir);
    Ok(SegRun {
        out_dir: out_dir.to_path_buf(),
        record,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
