//! The one rule by which `cargo xtask reproduce` reuses runs left by an
//! earlier (possibly interrupted) invocation into the same folder: a run
//! directory is kept only when its stamp says it was started with the same
//! `pixclass` options; then a finished run (its `run.json` says so) is
//! reused as it is and an interrupted one is resumed. Anything else is
//! cleared and run afresh.

use std::path::Path;

use anyhow::{Context, Result};
use pixclass_runs::{RunRecord, RunStatus};

/// The stamp of a run's options, next to it.
const STAMP: &str = "xtask-args.txt";

/// What an earlier invocation left in a run directory.
pub enum Prior {
    /// A finished run with the same options: use its record.
    Finished(Box<RunRecord>),
    /// A started run with the same options: continue it (`--resume DIR`).
    Interrupted,
    /// Nothing usable (the folder is empty now): start the run.
    Fresh,
}

/// Prepares `dir` for a run with `args` (see the module documentation) and
/// stamps it with them.
pub fn prepare(dir: &Path, args: &[String]) -> Result<Prior> {
    let wanted = args.join("\n");
    let same = std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == wanted);
    if same {
        if let Ok(r) = RunRecord::read(dir) {
            if r.status == RunStatus::Finished {
                return Ok(Prior::Finished(Box::new(r)));
            }
        }
        if dir.join("checkpoint.safetensors").is_file() {
            return Ok(Prior::Interrupted);
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(STAMP), wanted)?;
    Ok(Prior::Fresh)
}

/// True when `dir` holds a stamp equal to `args` (without touching it).
pub fn same_options(dir: &Path, args: &[String]) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == args.join("\n"))
}
