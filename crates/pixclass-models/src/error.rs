//! Typed errors of the models crate.

/// What can go wrong when building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An invalid configuration (kernel size, channel counts, ...).
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// An input whose shape the model cannot take.
    #[error("bad input shape {shape:?} for {model}: {reason}")]
    InputShape {
        /// The model's name.
        model: String,
        /// The shape given.
        shape: Vec<usize>,
        /// Why it does not fit.
        reason: String,
    },
    /// A weights file that cannot be read or does not fit the model.
    #[error("weights {path}: {reason}")]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (names the tensor, expected and found shapes).
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<ModelError> for candle_core::Error {
    /// For candle's traits (`ModuleT`): a tensor error stays itself, the
    /// others are wrapped with their message.
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
