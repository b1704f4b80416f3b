//! `run.json`: everything about one run in one typed file — what ran (task,
//! label, resolved configuration), on what data, the declared metrics,
//! every epoch's values, the best epoch, times and status. The training
//! library writes it after every epoch; the CLI, `cargo xtask` and the
//! tests read it (never the CLI's printed text).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};
use crate::metrics::{EpochRecord, MetricSpec};

/// File name of the run record in a run directory.
pub const RUN_JSON: &str = "run.json";
/// File name of the per-epoch metrics table.
pub const METRICS_CSV: &str = "metrics.csv";
/// Version of the record's layout.
pub const FORMAT: u32 = 1;

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Epochs are still being trained (or the process was killed: see
    /// `updated_unix`).
    Running,
    /// Every configured epoch ran.
    Finished,
    /// Stopped by an error (the message is in `error`).
    Failed,
}

/// What the run's data was.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataProvenance {
    /// In words (`full CIFAR-10 data at ...`, `embedded sample`).
    pub description: String,
    /// Training samples.
    pub train: usize,
    /// Validation samples.
    pub val: usize,
    /// True for the sample compiled into the binary.
    pub embedded: bool,
}

/// The best epoch by the run's selection metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// The metric's name.
    pub metric: String,
    /// The epoch.
    pub epoch: usize,
    /// Its value.
    pub value: f64,
}

/// The record of one run (`run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// The task: `colourize`, `segment`, `segment-eval`.
    pub task: String,
    /// A short label for logs and plots.
    pub label: String,
    /// The pixclass version that wrote it.
    pub version: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resolved configuration (as in `config.json`).
    pub config: serde_json::Value,
    /// The data.
    pub data: DataProvenance,
    /// The metrics the task declared, in column order.
    pub metrics: Vec<MetricSpec>,
    /// Every completed epoch.
    pub epochs: Vec<EpochRecord>,
    /// The best epoch by the selection metric, when the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEpoch>,
    /// Seconds spent loading and preprocessing the data (this process).
    pub data_seconds: f64,
    /// Threads the CPU kernels ran on in this process (absent in records of
    /// earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// When the run started (seconds since the Unix epoch).
    pub started_unix: u64,
    /// When the record was last written.
    pub updated_unix: u64,
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RunRecord {
    /// A new record of a run that has not trained yet.
    pub fn new(
        task: &str,
        label: &str,
        config: serde_json::Value,
        data: DataProvenance,
        metrics: Vec<MetricSpec>,
    ) -> Self {
        let now = now_unix();
        Self {
            format: FORMAT,
            task: task.to_string(),
            label: label.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: RunStatus::Running,
            error: None,
            config,
            data,
            metrics,
            epochs: Vec::new(),
            best: None,
            data_seconds: 0.0,
            threads: None,
            started_unix: now,
            updated_unix: now,
        }
    }

    /// Reads `dir/run.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_JSON);
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
        let r: Self = serde_json::from_str(&text)
            .map_err(|e| RunError::bad(&path, format!("bad JSON: {e}")))?;
        if r.format != FORMAT {
            return Err(RunError::bad(
                &path,
                format!("record format {} (this pixclass reads {FORMAT})", r.format),
            ));
        }
        Ok(r)
    }

    /// Writes `dir/run.json` atomically (with `updated_unix` set to now).
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.updated_unix = now_unix();
        let json = serde_json::to_vec_pretty(self).map_err(|e| RunError::Invalid {
            reason: e.to_string(),
        })?;
        crate::atomic::write_atomic(&dir.join(RUN_JSON), &json)
    }

    /// The spec of metric `name`.
    pub fn spec(&self, name: &str) -> Option<&MetricSpec> {
        self.metrics.iter().find(|s| s.name == name)
    }

    /// The last completed epoch.
    pub fn last(&self) -> Option<&EpochRecord> {
        self.epochs.last()
    }

    /// The epoch `epoch`.
    pub fn epoch(&self, epoch: usize) -> Option<&EpochRecord> {
        self.epochs.iter().find(|e| e.epoch == epoch)
    }

    /// The epoch with the best value of `metric` (the first on ties).
    pub fn best_by(&self, metric: &str) -> Option<&EpochRecord> {
        let spec = self.spec(metric)?;
        self.epochs
            .iter()
            .fold(None, |best: Option<&EpochRecord>, e| {
                match (best, e.get(metric)) {
                    (_, None) => best,
                    (None, Some(_)) => Some(e),
                    (Some(b), Some(v)) => match b.get(metric) {
                        Some(bv) if !spec.better(v, bv) => Some(b),
                        _ => Some(e),
                    },
                }
            })
    }

    /// Training and validation seconds summed over the completed epochs.
    pub fn train_seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }

    /// The value of `metric` at the last epoch, or an error naming the run.
    pub fn final_value(&self, metric: &str) -> Result<f64> {
        self.last()
            .and_then(|e| e.get(metric))
            .ok_or_else(|| RunError::Invalid {
                reason: format!("run {:?} has no final value of {metric}", self.label),
            })
    }
}
