//! The configuration of a run directory (`config.json`): checked against a
//! resumed run's before anything is written, written once the run's inputs
//! have loaded; and the range checks every run's settings pass first.

use std::fmt::Display;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::adam::AdamConfig;
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

/// `path: saved vs now` for every leaf where two JSON values differ.
fn differences(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, va) in x {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differences(&p, va, y.get(k).unwrap_or(&serde_json::Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{prefix}: the run has {a}, this command {b}")),
        _ => {}
    }
}

/// For a resumed run: the saved configuration must equal `cfg` once
/// `resumable` has applied what a resume may change (the epoch count); the
/// error names every setting that differs, with both values. Writes nothing.
pub fn check_resume<C>(out_dir: &Path, cfg: &C, resumable: impl FnOnce(C) -> C) -> Result<()>
where
    C: Serialize + DeserializeOwned + PartialEq,
{
    let path = out_dir.join(CONFIG_JSON);
    let saved: C = read_json(&path)?;
    let saved = resumable(saved);
    if saved == *cfg {
        return Ok(());
    }
    let to_json = |c: &C| serde_json::to_value(c).map_err(|e| TrainError::Config(e.to_string()));
    let mut diff = Vec::new();
    differences("", &to_json(&saved)?, &to_json(cfg)?, &mut diff);
    Err(TrainError::Config(format!(
        "--resume: {} was written by a run with other settings ({}); resume with the run's own settings (`--resume DIR` alone) or start a new run",
        path.display(),
        diff.join("; ")
    )))
}

/// Writes `cfg` as `out_dir/config.json` (atomically).
pub fn write_config<C: Serialize>(out_dir: &Path, cfg: &C) -> Result<()> {
    write_json(&out_dir.join(CONFIG_JSON), cfg)
}

/// Writes `value` as pretty JSON to `path` (atomically).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json =
        serde_json::to_string_pretty(value).map_err(|e| TrainError::Config(e.to_string()))?;
    checkpoint::write_atomic(path, json.as_bytes())
}

/// `name` must lie in `lo..=hi`.
pub fn in_range<T: PartialOrd + Display>(name: &str, v: T, lo: T, hi: T) -> Result<()> {
    if v >= lo && v <= hi {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "{name} {v} is out of range: it must be between {lo} and {hi}"
        )))
    }
}

/// Adam's settings: a finite learning rate in (0, 10], betas in [0, 1), a
/// positive ε.
pub fn check_adam(a: &AdamConfig) -> Result<()> {
    if !(a.lr.is_finite() && a.lr > 0.0 && a.lr <= 10.0) {
        return Err(TrainError::Config(format!(
            "--lr {} is out of range: it must be a number in (0, 10]",
            a.lr
        )));
    }
    for (name, b) in [("beta1", a.beta1), ("beta2", a.beta2)] {
        if !(b.is_finite() && (0.0..1.0).contains(&b)) {
            return Err(TrainError::Config(format!(
                "Adam {name} {b} must be in [0, 1)"
            )));
        }
    }
    if !(a.eps.is_finite() && a.eps > 0.0) {
        return Err(TrainError::Config(format!(
            "Adam eps {} must be > 0",
            a.eps
        )));
    }
    Ok(())
}

/// The memory this machine has available now (`MemAvailable`), when known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a job whose largest allocations (`bytes`, estimated before any
/// work) would not fit in the memory available.
pub fn check_memory(what: &str, bytes: u64) -> Result<()> {
    if let Some(avail) = available_memory() {
        if bytes > avail / 10 * 8 {
            return Err(TrainError::Config(format!(
                "{what} needs about {:.1} GB, more than the {:.1} GB this machine has available: lower the size or the number of images",
                bytes as f64 / 1e9,
                avail as f64 / 1e9
            )));
        }
    }
    Ok(())
}
