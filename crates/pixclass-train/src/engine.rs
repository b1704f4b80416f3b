//! The one training loop of pixclass, for every model and task.
//!
//! A task implements [`TrainTask`]: the loss of one training batch (forward
//! in train mode) and a whole validation pass. [`fit`] owns everything else:
//! Adam, the epoch loop, non-finite loss detection, progress bars and logs,
//! `metrics.csv`, `curves.png`, checkpoints (latest and best), and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};

use crate::adam::{Adam, AdamConfig};
use crate::checkpoint::{self, EpochRow, RunState};
use crate::error::{Result, TrainError};
use crate::plot::{draw_panels, Panel, Series};

/// What the loop needs from a task.
pub trait TrainTask {
    /// Names of the validation metrics, in column order (e.g. `val_loss`).
    fn metric_names(&self) -> Vec<String>;
    /// Batches per training epoch.
    fn num_train_batches(&self) -> usize;
    /// Scalar loss of training batch `batch` of `epoch` (1-based), with the
    /// model in train mode.
    fn train_loss(&mut self, epoch: usize, batch: usize) -> Result<Tensor>;
    /// A validation pass in eval mode: one value per metric name.
    fn evaluate(&mut self) -> Result<Vec<f64>>;
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

/// Which metric selects the best checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BestMetric {
    /// Metric name (one of the task's names).
    pub name: String,
    /// True when larger is better.
    pub maximise: bool,
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
    /// Saves `best.safetensors` by this metric.
    pub best: Option<BestMetric>,
    /// Show progress bars.
    pub progress: bool,
    /// Label for logs.
    pub label: String,
    /// Linear learning-rate warm-up over the first steps (0: none): step
    /// `t` (1-based) uses `lr · min(1, t / warmup_steps)`.
    pub warmup_steps: u64,
}

/// Writes `metrics.csv` for the rows so far.
pub fn write_metrics_csv(path: &Path, columns: &[String], rows: &[EpochRow]) -> Result<()> {
    let mut s = format!("epoch,train_loss,{},seconds\n", columns.join(","));
    for r in rows {
        s.push_str(&format!("{},{}", r.epoch, r.train_loss));
        for v in &r.values {
            s.push_str(&format!(",{v}"));
        }
        s.push_str(&format!(",{:.3}\n", r.seconds));
    }
    checkpoint::write_atomic(path, s.as_bytes())
}

/// Draws `curves.png`: losses per epoch on the left, other metrics on the right.
pub fn write_curves(path: &Path, title: &str, columns: &[String], rows: &[EpochRow]) -> Result<()> {
    let x = |r: &EpochRow| r.epoch as f64;
    let mut losses = vec![Series {
        label: "train_loss".into(),
        points: rows.iter().map(|r| (x(r), r.train_loss)).collect(),
    }];
    let mut others = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let s = Series {
            label: c.clone(),
            points: rows.iter().map(|r| (x(r), r.values[i])).collect(),
        };
        if c.contains("loss") {
            losses.push(s);
        } else {
            others.push(s);
        }
    }
    let mut panels = vec![Panel {
        title: format!("{title}: loss"),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: losses,
        log_x: false,
    }];
    if !others.is_empty() {
        panels.push(Panel {
            title: format!("{title}: validation"),
            x_label: "epoch".into(),
            y_label: "metric".into(),
            series: others,
            log_x: false,
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

/// Trains `trainable` (variables of `varmap`) on `task`. Returns every
/// epoch's metrics (including those of a resumed run's earlier epochs).
pub fn fit(
    task: &mut dyn TrainTask,
    varmap: &VarMap,
    trainable: Vec<(String, Var)>,
    cfg: &FitConfig,
) -> Result<Vec<EpochRow>> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::io(&cfg.out_dir, e))?;
    let columns = task.metric_names();
    if let Some(b) = &cfg.best {
        if !columns.contains(&b.name) {
            return Err(TrainError::Config(format!(
                "best metric {:?} is not one of {columns:?}",
                b.name
            )));
        }
    }
    let mut adam = Adam::new(trainable, cfg.adam)?;
    let latest = cfg.out_dir.join(checkpoint::LATEST);
    let mut rows: Vec<EpochRow> = Vec::new();
    let mut start = 1;
    if cfg.resume {
        let loaded = checkpoint::load(&latest)?;
        if loaded.state.columns != columns {
            return Err(TrainError::Checkpoint {
                path: latest.clone(),
                reason: format!(
                    "metric columns {:?} differ from this task's {columns:?}",
                    loaded.state.columns
                ),
            });
        }
        checkpoint::restore_vars(varmap, &loaded.model, &latest)?;
        adam.load_state(&loaded.extra, loaded.state.adam_step)?;
        task.set_rng_state(loaded.state.rng);
        rows = loaded.state.rows;
        start = loaded.state.epoch + 1;
        tracing::info!(
            "{}: resuming after epoch {} from {}",
            cfg.label,
            loaded.state.epoch,
            latest.display()
        );
    }
    let best_col = cfg
        .best
        .as_ref()
        .and_then(|b| columns.iter().position(|c| *c == b.name));
    let maximise = cfg.best.as_ref().is_some_and(|b| b.maximise);
    let better = |new: f64, old: f64| if maximise { new > old } else { new < old };
    let mut best_value: Option<f64> = best_col.and_then(|i| {
        rows.iter()
            .map(|r| r.values[i])
            .fold(None, |acc, v| match acc {
                Some(a) if !better(v, a) => Some(a),
                _ => Some(v),
            })
    });
    let nb = task.num_train_batches();
    if nb == 0 {
        return Err(TrainError::Config(
            "the training split has no batches".into(),
        ));
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
                return Err(TrainError::NonFinite { epoch, step, value });
            }
            let grads = loss.backward()?;
            if cfg.warmup_steps > 0 {
                let t = (adam.steps() + 1) as f64;
                adam.set_lr(cfg.adam.lr * (t / cfg.warmup_steps as f64).min(1.0));
            }
            adam.step(&grads)?;
            sum += value;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let train_loss = sum / nb as f64;
        let values = task.evaluate()?;
        let row = EpochRow {
            epoch,
            train_loss,
            values,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let summary: Vec<String> = columns
            .iter()
            .zip(&row.values)
            .map(|(c, v)| format!("{c} {v:.4}"))
            .collect();
        tracing::info!(
            "{} epoch {epoch}/{}: train_loss {train_loss:.4}, {} ({:.1} s)",
            cfg.label,
            cfg.epochs,
            summary.join(", "),
            row.seconds
        );
        let is_best = best_col.is_some_and(|i| best_value.is_none_or(|b| better(row.values[i], b)));
        if is_best {
            best_value = best_col.map(|i| row.values[i]);
        }
        rows.push(row);
        // The checkpoint first: it holds the metrics too, so a run killed
        // after it resumes at the next epoch and rewrites the files below.
        let state = RunState {
            epoch,
            adam_step: adam.steps(),
            columns: columns.clone(),
            rows: rows.clone(),
            rng: task.rng_state(),
        };
        let extra = adam.state_tensors();
        if is_best {
            checkpoint::save(&cfg.out_dir.join(checkpoint::BEST), varmap, &extra, &state)?;
        }
        checkpoint::save(&latest, varmap, &extra, &state)?;
        task.after_epoch(epoch, &cfg.out_dir)?;
        write_metrics_csv(&cfg.out_dir.join("metrics.csv"), &columns, &rows)?;
        write_curves(&cfg.out_dir.join("curves.png"), &cfg.label, &columns, &rows)?;
    }
    Ok(rows)
}
