//! Data directory resolution, the same everywhere in pixclass:
//! `--data-dir`, else `$PIXCLASS_DATA`, else `./data`.

use std::path::{Path, PathBuf};

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
