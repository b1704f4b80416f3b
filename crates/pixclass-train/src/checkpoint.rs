//! Checkpoints: model variables (parameters and BatchNorm statistics),
//! optimiser moments, and the run's state (epoch, Adam step, metrics so far,
//! RNG state) in one safetensors file, written atomically (a temporary file
//! unique to the process, fsync, rename) so a crash mid-write never leaves a
//! corrupt file as the latest.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use pixclass_runs::EpochRecord;

use crate::error::{Result, TrainError};

/// File name of the latest checkpoint in a run directory.
pub const LATEST: &str = "checkpoint.safetensors";
/// File name of the best checkpoint (by the run's named metric).
pub const BEST: &str = "best.safetensors";
const STATE_KEY: &str = "pixclass_state";

/// The run state stored with the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Last completed epoch.
    pub epoch: usize,
    /// Adam steps taken.
    pub adam_step: u64,
    /// The task's metric names, in column order.
    pub metrics: Vec<String>,
    /// Every completed epoch, metrics by name.
    pub rows: Vec<EpochRecord>,
    /// State of the training RNG (shuffles, dropout), when the task has one.
    pub rng: u64,
}

/// Writes bytes atomically (a temporary file unique to this process,
/// fsync, rename over `path`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(pixclass_runs::write_atomic(path, bytes)?)
}

/// Saves every variable of `varmap` as `model.<name>`, the `extra` tensors
/// (optimiser state) under their own names, and `state`.
pub fn save(
    path: &Path,
    varmap: &VarMap,
    extra: &HashMap<String, Tensor>,
    state: &RunState,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in data.iter() {
            tensors.push((
                format!("model.{name}"),
                var.as_tensor().to_device(&Device::Cpu)?,
            ));
        }
    }
    for (k, t) in extra {
        tensors.push((k.clone(), t.to_device(&Device::Cpu)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([(
        STATE_KEY.to_string(),
        serde_json::to_string(state).map_err(|e| TrainError::Config(e.to_string()))?,
    )]);
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// A loaded checkpoint.
pub struct Loaded {
    /// Model variables by name (without the `model.` prefix).
    pub model: HashMap<String, Tensor>,
    /// Every other tensor (optimiser state).
    pub extra: HashMap<String, Tensor>,
    /// The run state.
    pub state: RunState,
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Loaded> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let state_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            bad("no pixclass run state in the metadata (not a pixclass checkpoint?)".into())
        })?;
    let state: RunState = serde_json::from_str(state_json).map_err(|e| {
        bad(format!(
            "bad run state ({e}); a checkpoint of an older pixclass without named metrics cannot be resumed"
        ))
    })?;
    let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    let mut model = HashMap::new();
    let mut extra = HashMap::new();
    for (k, t) in all {
        match k.strip_prefix("model.") {
            Some(name) => {
                model.insert(name.to_string(), t);
            }
            None => {
                extra.insert(k, t);
            }
        }
    }
    pixclass_models::weights::check_finite(path, &model)?;
    Ok(Loaded {
        model,
        extra,
        state,
    })
}

/// Copies `tensors` into the variables of `varmap`: every variable must be
/// present with its shape; tensors that match no variable are an error.
pub fn restore_vars(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
) -> Result<()> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: origin.to_path_buf(),
        reason,
    };
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} missing")))?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "tensor {name}: expected shape {:?}, found {:?}",
                var.dims(),
                t.dims()
            )));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = tensors.keys().find(|k| !data.contains_key(*k)) {
        return Err(bad(format!("unexpected tensor {extra}")));
    }
    Ok(())
}
