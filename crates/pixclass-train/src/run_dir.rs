//! The configuration file of a run directory (`config.json`): written when a
//! run starts, checked when it resumes.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint;
use crate::error::{Result, TrainError};

/// File name of a run's resolved configuration.
pub const CONFIG_JSON: &str = "config.json";

/// Reads a JSON file into `T`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("bad JSON: {e}"),
    })
}

/// Writes `cfg` as `out_dir/config.json`. When resuming, the saved
/// configuration must equal `cfg` once `resumable` has applied what a resume
/// may change (the epoch count).
pub fn write_config<C>(
    out_dir: &Path,
    cfg: &C,
    resume: bool,
    resumable: impl FnOnce(C) -> C,
) -> Result<()>
where
    C: Serialize + DeserializeOwned + PartialEq,
{
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let path = out_dir.join(CONFIG_JSON);
    if resume {
        let saved: C = read_json(&path)?;
        if resumable(saved) != *cfg {
            return Err(TrainError::Config(format!(
                "--resume: {} was written by a run with other settings; resume it with the same options",
                path.display()
            )));
        }
    }
    let json = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    checkpoint::write_atomic(&path, json.as_bytes())
}
