//! Typed errors of the run-directory crate.

use std::path::PathBuf;

/// What can go wrong with a run directory's files.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// I/O on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file that does not hold what it should.
    #[error("{path}: {reason}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The run directory is locked by another process.
    #[error("{path} is in use by {holder} (one run per directory at a time); wait for it, or choose another --out")]
    Busy {
        /// The directory.
        path: PathBuf,
        /// Who holds it (`process 1234`).
        holder: String,
    },
    /// Values that do not fit together.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

impl RunError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file with bad content.
    pub fn bad(path: impl Into<PathBuf>, reason: String) -> Self {
        RunError::Bad {
            path: path.into(),
            reason,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = RunError> = std::result::Result<T, E>;
