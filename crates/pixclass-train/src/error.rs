//! Typed errors of the training crate.

use std::path::PathBuf;

/// What can go wrong while training, checkpointing or plotting.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error("non-finite loss {value} at epoch {epoch}, step {step}; {kept}")]
    NonFinite {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The loss value.
        value: f64,
        /// What is left of the run (the last good checkpoint, or nothing).
        kept: String,
    },
    /// The requested device cannot be used.
    #[error("device {requested}: {reason}")]
    Device {
        /// What was asked for.
        requested: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Invalid settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// I/O on a file.
    #[error("I/O error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a picture failed.
    #[error("could not draw {path}: {reason}")]
    Plot {
        /// The picture.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Data error.
    #[error(transparent)]
    Data(#[from] pixclass_data::DataError),
    /// Model error.
    #[error(transparent)]
    Model(#[from] pixclass_models::ModelError),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A run directory's record or metrics file.
    #[error(transparent)]
    Run(#[from] pixclass_runs::RunError),
}

impl TrainError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
