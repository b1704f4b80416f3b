//! # pixclass-runs
//!
//! The files of a run directory, one typed reader and writer each, shared
//! by the training library (which writes them), the `pixclass` CLI, `cargo
//! xtask` and the tests (which read them):
//! - [`metrics`]: named metrics ([`MetricSpec`] declared once per task,
//!   [`Metrics`] returned by every evaluation) and [`EpochRecord`];
//! - [`record`]: `run.json` ([`RunRecord`]): configuration, data
//!   provenance, every epoch, the best epoch, times, status;
//! - [`csv_file`]: `metrics.csv`, append-only and exact;
//! - [`atomic`]: atomic file replacement with per-process temporary names;
//! - [`dir`]: ownership of a run directory (an OS lock) and the rule that no
//!   run is replaced without `--resume` or `--overwrite`.
//!
//! It depends on no tensor library, so tools can read runs cheaply.

pub mod atomic;
pub mod csv_file;
pub mod dir;
mod error;
pub mod metrics;
pub mod record;

pub use atomic::write_atomic;
pub use dir::{RunDir, Start};
pub use error::{Result, RunError};
pub use metrics::{Direction, EpochRecord, MetricSpec, Metrics};
pub use record::{BestEpoch, DataProvenance, RunRecord, RunStatus, METRICS_CSV, RUN_JSON};
