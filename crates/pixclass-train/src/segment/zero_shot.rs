//! Zero-shot evaluation: a pretrained 21-class DeepLabV3 scored on a data
//! set as "one of its classes vs the rest", with the same metrics, run
//! record and prediction panels as fine-tuning — the baseline a fine-tuned
//! head should beat. A pixel is foreground when the class's logit beats the
//! background's (the two-class restriction of the pretrained head).

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::{Deserialize, Serialize};

use pixclass_data::segment::{Preprocess, SegSet, SegSplits};
use pixclass_models::mobilenet::VOC_LABELS;
use pixclass_models::segment::{SegBackbone, SegModelKind};
use pixclass_runs::{csv_file, DataProvenance, EpochRecord, Metrics, RunDir, RunStatus, Start};

use super::infer::{score_masks, MaskMetrics};
use super::task::{
    metric_specs, prediction_panels, VAL_IOU_FG, VAL_LOSS, VAL_MIOU, VAL_MIOU_THR, VAL_PIXEL_ACC,
};
use crate::device::{select_device, DeviceKind};
use crate::engine::new_record;
use crate::error::{Result, TrainError};
use crate::plot::save_png;
use crate::run_dir::{in_range, write_config};

/// The class `name_or_id` of the 21 VOC classes: an id 1..=20, or a label
/// (`pottedplant`, `potted plant`, `Horse`; case and spaces ignored).
pub fn voc_class(name_or_id: &str) -> Result<usize> {
    if let Ok(id) = name_or_id.trim().parse::<usize>() {
        in_range("--class", id, 1, VOC_LABELS.len() - 1)?;
        return Ok(id);
    }
    let norm = |s: &str| s.to_lowercase().replace([' ', '_', '-', '/'], "");
    VOC_LABELS
        .iter()
        .position(|l| norm(l) == norm(name_or_id))
        .filter(|&i| i > 0)
        .ok_or_else(|| {
            TrainError::Config(format!(
                "--class {name_or_id:?} is not a VOC class: one of {}",
                VOC_LABELS[1..].join(", ")
            ))
        })
}

/// Everything that defines a zero-shot evaluation (saved as `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroShotConfig {
    /// The pretrained model.
    pub model: SegModelKind,
    /// Its weights file (`None`: the embedded MobileNet weights).
    pub weights: Option<PathBuf>,
    /// The VOC class that is foreground (1..=20).
    pub class: usize,
    /// Image and mask preprocessing.
    pub preprocess: Preprocess,
    /// First N images of each split only.
    pub limit: Option<usize>,
    /// Skip unreadable or mismatched samples instead of failing.
    pub skip_bad: bool,
    /// Device.
    pub device: DeviceKind,
    /// Where the data came from (filled in by the runner).
    pub data: String,
    /// The data directory (`None`: the embedded sample).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// The outcome of a zero-shot evaluation.
#[derive(Debug, Clone)]
pub struct ZeroShotRun {
    /// The metrics on the validation split.
    pub metrics: MaskMetrics,
    /// The run record (one epoch, 0).
    pub record: pixclass_runs::RunRecord,
}

/// Scores `cfg.model` zero-shot on the validation split of `splits`,
/// writing `config.json`, `run.json`, `metrics.csv` (epoch 0) and
/// `predictions_epoch_00.png` into `out_dir` (owned like a training run's).
pub fn zero_shot(
    cfg: &ZeroShotConfig,
    splits: SegSplits,
    out_dir: &Path,
    start: Start,
) -> Result<ZeroShotRun> {
    let t0 = std::time::Instant::now();
    in_range("--class", cfg.class, 1, VOC_LABELS.len() - 1)?;
    in_range("--size", cfg.preprocess.size, 32, 1024)?;
    let device = select_device(cfg.device, 0)?;
    let splits = splits.limit(cfg.limit);
    let mut cfg = cfg.clone();
    cfg.data = splits.description.clone();
    let dir = RunDir::open(out_dir, start)?;
    let net = SegBackbone::load(cfg.model, cfg.weights.as_deref(), &device)?;
    let val = SegSet::load(&splits.val, &cfg.preprocess, cfg.skip_bad)?;
    if val.is_empty() {
        return Err(TrainError::Config("the validation split is empty".into()));
    }
    let data_seconds = t0.elapsed().as_secs_f64();
    dir.clear_previous()?;
    write_config(out_dir, &cfg)?;
    let (mean, std) = net.normalisation();
    let class = cfg.class;
    let predict = |idx: &[usize]| -> Result<Vec<u8>> {
        let x = val.images_tensor(idx, mean, std, &device)?;
        let logits = net.forward(&x)?;
        let margin = (logits.narrow(1, class, 1)? - logits.narrow(1, 0, 1)?)?;
        Ok(margin
            .gt(0.0)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?)
    };
    let t1 = std::time::Instant::now();
    let m = score_masks(&val, 8, &cfg.preprocess.rule, predict)?;
    let metrics = Metrics::new()
        .with(VAL_MIOU_THR, m.miou_thr)
        .with(VAL_IOU_FG, m.iou_fg)
        .with(VAL_MIOU, m.miou)
        .with(VAL_PIXEL_ACC, m.pixel_acc);
    let label = format!("{} zero-shot ({})", cfg.model.name(), VOC_LABELS[class]);
    let data = DataProvenance {
        description: cfg.data.clone(),
        train: 0,
        val: val.len(),
        embedded: splits.is_embedded(),
    };
    let mut record = new_record("segment-eval", &label, &cfg, data, data_seconds)?;
    record.metrics = metric_specs()
        .into_iter()
        .filter(|s| s.name != VAL_LOSS)
        .collect();
    record.epochs.push(EpochRecord {
        epoch: 0,
        train_loss: None,
        metrics,
        seconds: t1.elapsed().as_secs_f64(),
    });
    // The panels: the same spread over the split as fine-tuning's.
    let n = val.len();
    let k = n.min(6);
    let idx: Vec<usize> = (0..k).map(|i| i * n / k).collect();
    let mut pred = Vec::new();
    for i in &idx {
        pred.extend(predict(&[*i])?);
    }
    save_png(
        &prediction_panels(&val, &idx, &pred)?,
        &out_dir.join("predictions_epoch_00.png"),
    )?;
    csv_file::sync(
        &out_dir.join(pixclass_runs::METRICS_CSV),
        &record.metrics,
        &record.epochs,
    )?;
    record.status = RunStatus::Finished;
    record.write(out_dir)?;
    drop(dir);
    Ok(ZeroShotRun { metrics: m, record })
}
