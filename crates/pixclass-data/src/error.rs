//! Typed errors of the data crate: every variant names the file (and, where
//! relevant, the sizes or hashes) so a user can act on the message alone.

use std::path::PathBuf;

/// Everything that can go wrong while finding, verifying, reading or
/// downloading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that should exist does not.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// An I/O error while reading or writing `path`.
    #[error("I/O error on {path}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A CIFAR file whose size is not a whole number of 3073-byte records.
    #[error(
        "{path} is {len} bytes, which is not a multiple of the 3073-byte CIFAR-10 record \
         ({whole} whole records and {rest} stray bytes)"
    )]
    BadRecordSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
        /// Whole records it would hold.
        whole: u64,
        /// Bytes left over.
        rest: u64,
    },
    /// A CIFAR file that holds no records at all.
    #[error("{path} is empty: a CIFAR-10 file holds at least one 3073-byte record")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A record whose label byte is not a CIFAR-10 class (0..=9).
    #[error("{path}: record {record} has label byte {label}, but CIFAR-10 labels are 0..=9")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Index of the record in the file.
        record: usize,
        /// The offending byte.
        label: u8,
    },
    /// A class filter or a limit selected nothing.
    #[error("no records selected: {what}")]
    EmptySelection {
        /// What was asked for.
        what: String,
    },
    /// A known file whose checksum differs from the published one.
    #[error("checksum mismatch for {path}: expected {algorithm} {expected}, found {found}")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// The published hash.
        expected: String,
        /// The hash of the file on disk.
        found: String,
    },
    /// A palette file that cannot be parsed.
    #[error("bad palette {source_name}: line {line}: {reason}")]
    BadPalette {
        /// File name or description of the palette source.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A download failed (network unreachable, HTTP error, ...).
    #[error("download of {url} failed: {reason}\n{hint}")]
    Download {
        /// The address tried.
        url: String,
        /// What went wrong.
        reason: String,
        /// Where to put the file by hand.
        hint: String,
    },
    /// Invalid argument (a bad k, a bad class, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
