//! Where pixclass looks for files, the same everywhere: the data directory
//! (`--data-dir`, else `$PIXCLASS_DATA`, else `./data`) and the cache folder.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The environment variable naming the data directory.
pub const DATA_ENV: &str = "PIXCLASS_DATA";

/// Resolves the data directory from an explicit option, the environment, or
/// the default `./data`.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(DATA_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("data"),
    }
}

/// The real data directory named by `$PIXCLASS_DATA`, for tests and
/// benchmarks that need the full data. A relative value is taken relative to
/// the current directory, else to the workspace root (cargo runs tests from
/// each crate's directory). Returns `None` and prints a loud `SKIPPED` line
/// naming `what` when it is unset or missing.
pub fn real_data_dir(what: &str) -> Option<PathBuf> {
    let v = match std::env::var_os(DATA_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            eprintln!("SKIPPED {what}: ${DATA_ENV} is not set (point it at ../shared/data)");
            return None;
        }
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [v.clone(), workspace.join(&v)];
    for c in candidates {
        if c.is_dir() {
            return Some(c);
        }
    }
    eprintln!(
        "SKIPPED {what}: ${DATA_ENV}={} is not a directory",
        v.display()
    );
    None
}

/// The cache folder of pixclass (feature caches, registered weights):
/// `$PIXCLASS_CACHE`, else `$XDG_CACHE_HOME/pixclass`, else
/// `~/.cache/pixclass`, else `.cache/pixclass`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIXCLASS_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("pixclass");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/pixclass"),
        None => PathBuf::from(".cache/pixclass"),
    }
}

/// True when the data directory was named (`--data-dir` or
/// `$PIXCLASS_DATA`) rather than defaulted to `./data`.
pub fn data_dir_is_explicit(explicit: Option<&Path>) -> bool {
    explicit.is_some() || std::env::var_os(DATA_ENV).is_some_and(|v| !v.is_empty())
}

/// The rule every command follows to find its data: with `embedded`, the
/// sample compiled into the binary (`Ok(None)`); else what `discover` finds
/// in the data directory; a directory the user named must hold the data (an
/// error saying what was expected); the default `./data` without data falls
/// back to the embedded sample, with a loud warning naming `sample` and how
/// to get the full data (`fetch`).
pub fn locate<T>(
    explicit: Option<&Path>,
    embedded: bool,
    discover: impl FnOnce(&Path) -> Result<T>,
    sample: &str,
    fetch: &str,
) -> Result<Option<T>> {
    if embedded {
        return Ok(None);
    }
    let dir = resolve_data_dir(explicit);
    match discover(&dir) {
        Ok(found) => Ok(Some(found)),
        Err(e) if data_dir_is_explicit(explicit) => Err(DataError::Invalid(format!(
            "no usable data in the data directory you named ({}): {e}",
            dir.display()
        ))),
        Err(_) => {
            tracing::warn!(
                "no data under {}: using the EMBEDDED SAMPLE ({sample}). Full results need the full data: `{fetch}`",
                dir.display()
            );
            Ok(None)
        }
    }
}
