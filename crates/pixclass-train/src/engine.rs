//! The one training loop of pixclass, for every model and task.
//!
//! A task implements [`TrainTask`]: it declares its validation metrics once
//! (name, direction, format), computes the loss of one training batch
//! (forward in train mode) and runs a validation pass returning named
//! values. [`fit`] owns everything else: Adam, the epoch loop, non-finite
//! loss detection, progress bars and logs, the run record (`run.json`),
//! `metrics.csv`, `curves.png`, checkpoints (latest and best), and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use pixclass_runs::{
    csv_file, BestEpoch, EpochRecord, MetricSpec, Metrics, RunRecord, RunStatus, METRICS_CSV,
};

use crate::adam::{Adam, AdamConfig};
use crate::checkpoint::{self, RunState};
use crate::error::{Result, TrainError};
use crate::plot::{draw_panels, Panel, Series};

/// What the loop needs from a task.
pub trait TrainTask {
    /// The validation metrics, declared once, in column order (e.g.
    /// `val_loss` minimised, `val_acc` maximised).
    fn metrics(&self) -> Vec<MetricSpec>;
    /// Batches per training epoch.
    fn num_train_batches(&self) -> usize;
    /// Scalar loss of training batch `batch` (0-based) of `epoch`
    /// (1-based), with the model in train mode.
    fn train_loss(&mut self, epoch: usize, batch: usize) -> Result<Tensor>;
    /// A validation pass in eval mode: a value for every declared metric.
    fn evaluate(&mut self) -> Result<Metrics>;
    /// Pictures or other outputs after an epoch (default: none).
    fn after_epoch(&mut self, _epoch: usize, _out_dir: &Path) -> Result<()> {
        Ok(())
    }
    /// State of the task's RNG, saved in checkpoints (default: none).
    fn rng_state(&self) -> u64 {
        0
    }
    /// Restores the RNG state from a checkpoint.
    fn set_rng_state(&mut self, _state: u64) {}
}

/// How the learning rate moves over the run's steps (on top of any
/// warm-up); `T` is the run's steps (epochs × batches per epoch), `t` the
/// step, from 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The configured rate throughout (the study).
    #[default]
    Constant,
    /// Cosine decay from the rate towards 0: `lr · (1 + cos(π t / T)) / 2`.
    Cosine,
    /// PyTorch's `OneCycleLR` defaults: cosine rise from `lr / 25` to `lr`
    /// over the first 30 % of the steps, then cosine decay to `lr / 25e4`.
    OneCycle,
}

impl LrSchedule {
    /// The factor of the base rate at step `t` (0-based) of `total`.
    pub fn factor(self, t: u64, total: u64) -> f64 {
        let cos = |from: f64, to: f64, frac: f64| {
            to + (from - to) * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos()) / 2.0
        };
        let total = total.max(1) as f64;
        let t = t as f64;
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => cos(1.0, 0.0, t / total),
            LrSchedule::OneCycle => {
                // torch: phase ends at pct·T - 1 and T - 1 (steps from 0).
                let up = (0.3 * total - 1.0).max(1.0);
                let start = 1.0 / 25.0;
                if t <= up {
                    cos(start, 1.0, t / up)
                } else {
                    let down = (total - 1.0 - up).max(1.0);
                    cos(1.0, start / 1e4, (t - up) / down)
                }
            }
        }
    }
}

/// Settings of [`fit`].
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Epochs in total (a resumed run continues up to this).
    pub epochs: usize,
    /// Optimiser.
    pub adam: AdamConfig,
    /// Run directory.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.safetensors`.
    pub resume: bool,
    /// Saves `best.safetensors` by this metric (one of the task's; its
    /// declared direction says which way is better).
    pub best: Option<String>,
    /// Show progress bars.
    pub progress: bool,
    /// Validate once before the first step and record it as epoch 0 (no
    /// training loss), so the curves show where training started (not on
    /// resume: the saved epoch 0 is kept).
    pub eval_first: bool,
    /// Linear learning-rate warm-up over the first steps (0: none): step
    /// `t` (1-based) uses `lr · min(1, t / warmup_steps)`.
    pub warmup_steps: u64,
    /// The learning-rate schedule over the run's steps.
    pub schedule: LrSchedule,
    /// The run record to keep up to date in `out_dir/run.json` (task,
    /// label, configuration, data); the loop fills in the metrics, epochs,
    /// best epoch and status.
    pub record: RunRecord,
}

/// A new run record of `task` for `cfg` (as in `config.json`) on `data`,
/// loaded in `data_seconds`: what [`FitConfig::record`] starts from.
pub fn new_record<C: serde::Serialize>(
    task: &str,
    label: &str,
    cfg: &C,
    data: pixclass_runs::DataProvenance,
    data_seconds: f64,
) -> Result<RunRecord> {
    let config = serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    let mut record = RunRecord::new(task, label, config, data, Vec::new());
    record.data_seconds = data_seconds;
    record.threads = Some(pixclass_ops::cpu_threads());
    Ok(record)
}

/// Draws `curves.png`: losses per epoch on the left, other metrics on the
/// right.
pub fn write_curves(
    path: &Path,
    title: &str,
    specs: &[MetricSpec],
    rows: &[EpochRecord],
) -> Result<()> {
    let x = |r: &EpochRecord| r.epoch as f64;
    let mut losses = vec![Series {
        label: "train_loss".into(),
        points: rows
            .iter()
            .filter_map(|r| r.train_loss.map(|v| (x(r), v)))
            .collect(),
    }];
    let mut others = Vec::new();
    // The validation panel shares one axis: the metrics in the unit of the
    // first non-loss one (e.g. the accuracies in %); the rest are in
    // metrics.csv and run.json.
    let unit = specs
        .iter()
        .find(|s| !s.name.contains("loss"))
        .map(|s| s.unit.clone());
    for s in specs {
        if !s.name.contains("loss") && Some(&s.unit) != unit.as_ref() {
            continue;
        }
        let series = Series {
            label: s.name.clone(),
            points: rows
                .iter()
                .filter_map(|r| r.get(&s.name).map(|v| (x(r), v)))
                .collect(),
        };
        if s.name.contains("loss") {
            losses.push(series);
        } else {
            others.push(series);
        }
    }
    let mut panels = vec![Panel {
        title: format!("{title}: loss"),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: losses,
        log_x: false,
        x_ticks: None,
    }];
    if !others.is_empty() {
        panels.push(Panel {
            title: format!("{title}: validation"),
            x_label: "epoch".into(),
            y_label: "metric".into(),
            series: others,
            log_x: false,
            x_ticks: None,
        });
    }
    draw_panels(path, &panels, 560, 400)
}

fn bar(n: usize, epoch: usize, epochs: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "epoch {msg} [{bar:30}] {pos}/{len} batches, {elapsed} elapsed, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(format!("{epoch}/{epochs}"));
    pb
}

/// The best epoch of `rows` by `spec` (the first on ties).
fn best_of(spec: &MetricSpec, rows: &[EpochRecord]) -> Option<BestEpoch> {
    rows.iter().fold(None, |best: Option<BestEpoch>, r| {
        let Some(v) = r.get(&spec.name) else {
            return best;
        };
        match best {
            Some(b) if !spec.better(v, b.value) => Some(b),
            _ => Some(BestEpoch {
                metric: spec.name.clone(),
                epoch: r.epoch,
                value: v,
            }),
        }
    })
}

/// Trains `trainable` (variables of `varmap`) on `task`. Returns the run
/// record, with every epoch's metrics (including those of a resumed run's
/// earlier epochs). A failure is recorded in `run.json` before it returns.
pub fn fit(
    task: &mut dyn TrainTask,
    varmap: &VarMap,
    trainable: Vec<(String, Var)>,
    cfg: &FitConfig,
) -> Result<RunRecord> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::io(&cfg.out_dir, e))?;
    let mut record = cfg.record.clone();
    record.metrics = task.metrics();
    let mut started = false;
    let result = fit_epochs(task, varmap, trainable, cfg, &mut record, &mut started);
    // A run refused before it starts (a bad resume) leaves the record that
    // is there as it was: a finished run is not marked failed by it.
    if let (Err(e), true) = (&result, started) {
        record.status = RunStatus::Failed;
        record.error = Some(e.to_string());
        // Best effort: the error being returned matters more.
        let _ = record.write(&cfg.out_dir);
    }
    result.map(|()| record)
}

fn fit_epochs(
    task: &mut dyn TrainTask,
    varmap: &VarMap,
    trainable: Vec<(String, Var)>,
    cfg: &FitConfig,
    record: &mut RunRecord,
    started: &mut bool,
) -> Result<()> {
    let specs = record.metrics.clone();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let best_spec = match &cfg.best {
        Some(b) => Some(
            specs
                .iter()
                .find(|s| &s.name == b)
                .cloned()
                .ok_or_else(|| {
                    TrainError::Config(format!("best metric {b:?} is not one of {names:?}"))
                })?,
        ),
        None => None,
    };
    let mut adam = Adam::new(trainable, cfg.adam)?;
    let latest = cfg.out_dir.join(checkpoint::LATEST);
    let mut start = 1;
    record.epochs.clear();
    if cfg.resume {
        let loaded = checkpoint::load(&latest)?;
        if loaded.state.metrics != names {
            // A finished run recorded by an earlier pixclass, with fewer
            // metrics, is reused as it was recorded; one that would train
            // on cannot mix rows with and without the new metrics.
            let finished = loaded.state.epoch >= cfg.epochs;
            let known = loaded.state.metrics.iter().all(|n| names.contains(n));
            if !(finished && known) {
                return Err(TrainError::Checkpoint {
                    path: latest.clone(),
                    reason: format!(
                        "metrics {:?} differ from this task's {names:?} (recorded by another \
                         version of pixclass?); start over with --overwrite",
                        loaded.state.metrics
                    ),
                });
            }
            record.metrics = specs
                .iter()
                .filter(|s| loaded.state.metrics.contains(&s.name))
                .cloned()
                .collect();
            tracing::info!(
                "{}: reusing a finished run that recorded {:?} only",
                record.label,
                loaded.state.metrics
            );
        }
        checkpoint::restore_vars(varmap, &loaded.model, &latest)?;
        adam.load_state(&loaded.extra, loaded.state.adam_step)?;
        task.set_rng_state(loaded.state.rng);
        record.epochs = loaded.state.rows;
        start = loaded.state.epoch + 1;
        tracing::info!(
            "{}: resuming after epoch {} from {}",
            record.label,
            loaded.state.epoch,
            latest.display()
        );
    }
    record.best = best_spec.as_ref().and_then(|s| best_of(s, &record.epochs));
    record.status = RunStatus::Running;
    *started = true;
    record.write(&cfg.out_dir)?;
    let nb = task.num_train_batches();
    if nb == 0 {
        return Err(TrainError::Config(
            "the training split has no batches".into(),
        ));
    }
    if cfg.eval_first && !cfg.resume {
        let t0 = Instant::now();
        let metrics = task.evaluate()?;
        let row = EpochRecord {
            epoch: 0,
            train_loss: None,
            metrics,
            seconds: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "{} epoch 0 (before training): {} ({:.1} s)",
            record.label,
            row.metrics.summary(&specs),
            row.seconds
        );
        finish_epoch(task, varmap, &adam, cfg, record, best_spec.as_ref(), row)?;
    }
    for epoch in start..=cfg.epochs {
        let t0 = Instant::now();
        let pb = bar(nb, epoch, cfg.epochs, cfg.progress);
        let mut sum = 0.0;
        for step in 0..nb {
            let loss = task.train_loss(epoch, step)?;
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                pb.abandon();
                let kept = if latest.is_file() {
                    format!("the checkpoint of epoch {} is kept", epoch - 1)
                } else {
                    "no epoch finished, so there is no checkpoint".to_string()
                };
                return Err(TrainError::NonFinite {
                    epoch,
                    step: step + 1,
                    value,
                    kept,
                });
            }
            let grads = loss.backward()?;
            if cfg.warmup_steps > 0 || cfg.schedule != LrSchedule::Constant {
                let t = adam.steps();
                let warm = if cfg.warmup_steps > 0 {
                    ((t + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
                } else {
                    1.0
                };
                let total = (cfg.epochs * nb) as u64;
                adam.set_lr(cfg.adam.lr * warm * cfg.schedule.factor(t, total));
            }
            adam.step(&grads)?;
            sum += value;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let train_loss = sum / nb as f64;
        let metrics = task.evaluate()?;
        let row = EpochRecord {
            epoch,
            train_loss: Some(train_loss),
            metrics,
            seconds: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "{} epoch {epoch}/{}: train_loss {train_loss:.4}, {} ({:.1} s)",
            record.label,
            cfg.epochs,
            row.metrics.summary(&specs),
            row.seconds
        );
        finish_epoch(task, varmap, &adam, cfg, record, best_spec.as_ref(), row)?;
    }
    record.status = RunStatus::Finished;
    record.write(&cfg.out_dir)?;
    Ok(())
}

/// Records a validated epoch `row`: the best epoch, checkpoints (latest,
/// and best when it is), the task's pictures, `metrics.csv`, `curves.png`
/// and `run.json`.
fn finish_epoch(
    task: &mut dyn TrainTask,
    varmap: &VarMap,
    adam: &Adam,
    cfg: &FitConfig,
    record: &mut RunRecord,
    best_spec: Option<&MetricSpec>,
    row: EpochRecord,
) -> Result<()> {
    let specs = record.metrics.clone();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    if let Some(missing) = names.iter().find(|n| row.metrics.get(n).is_none()) {
        return Err(TrainError::Config(format!(
            "the task's evaluation has no value for its declared metric {missing}"
        )));
    }
    let epoch = row.epoch;
    let is_best = best_spec.is_some_and(|s| match (&record.best, row.get(&s.name)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(b), Some(v)) => s.better(v, b.value),
    });
    if is_best {
        record.best = best_spec.and_then(|s| {
            row.get(&s.name).map(|value| BestEpoch {
                metric: s.name.clone(),
                epoch,
                value,
            })
        });
    }
    record.epochs.push(row);
    // The checkpoint first: it holds the metrics too, so a run killed
    // after it resumes at the next epoch and completes the files below.
    let state = RunState {
        epoch,
        adam_step: adam.steps(),
        metrics: names,
        rows: record.epochs.clone(),
        rng: task.rng_state(),
    };
    let extra = adam.state_tensors();
    let latest = cfg.out_dir.join(checkpoint::LATEST);
    if is_best {
        checkpoint::save(&cfg.out_dir.join(checkpoint::BEST), varmap, &extra, &state)?;
    }
    checkpoint::save(&latest, varmap, &extra, &state)?;
    task.after_epoch(epoch, &cfg.out_dir)?;
    csv_file::sync(&cfg.out_dir.join(METRICS_CSV), &specs, &record.epochs)?;
    write_curves(
        &cfg.out_dir.join("curves.png"),
        &record.label,
        &specs,
        &record.epochs,
    )?;
    if epoch < cfg.epochs {
        record.write(&cfg.out_dir)?;
    }
    Ok(())
}
