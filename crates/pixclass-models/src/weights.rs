//! Reading and checking checkpoints: safetensors or PyTorch `.pth` (zip
//! format, read without Python), compared tensor by tensor with what a model
//! expects, so a wrong file fails with the tensor's name and both shapes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};

/// Tensors that are never an error when present or absent
/// (`num_batches_tracked` of PyTorch's BatchNorm).
pub fn is_ignored(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

fn weights_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads every tensor of a `.safetensors` file or a PyTorch zip checkpoint
/// (`.pth`/`.pt`/`.bin`, told apart by their first bytes), as f32 on
/// `device`. A state dict nested under `state_dict` or `model` is found too.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| weights_err(path, e.to_string()))?;
        f.read_exact(&mut head)
            .map_err(|e| weights_err(path, format!("too short to be a checkpoint: {e}")))?;
    }
    let tensors: Vec<(String, Tensor)> = if head == *b"PK\x03\x04" {
        let mut found = Vec::new();
        for key in [None, Some("state_dict"), Some("model")] {
            found = candle_core::pickle::read_all_with_key(path, key).map_err(|e| {
                weights_err(path, format!("not a readable PyTorch checkpoint: {e}"))
            })?;
            if !found.is_empty() {
                break;
            }
        }
        found
    } else {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| weights_err(path, format!("not a safetensors or PyTorch zip file: {e}")))?
            .into_iter()
            .collect()
    };
    if tensors.is_empty() {
        return Err(weights_err(path, "holds no tensors"));
    }
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    check_finite(path, &tensors)?;
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect()
}

/// Every floating-point tensor of `tensors` (read from `path`) holds only
/// finite values; the error names the first that does not (in name order).
pub fn check_finite(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        // In the tensor's own precision: no f64 copy of a 244 MB checkpoint.
        let flat = t.flatten_all()?;
        let bad = match t.dtype() {
            DType::F64 => flat
                .to_vec1::<f64>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count(),
            _ => flat
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count(),
        };
        if bad > 0 {
            return Err(weights_err(
                path,
                format!("tensor {name} holds {bad} non-finite values (NaN or infinity): the file is damaged"),
            ));
        }
    }
    Ok(())
}

/// Writes tensors to a safetensors file (sorted by name).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| weights_err(path, e.to_string()))
}

type Seen = std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<usize>>>>;

/// A `VarBuilder` backend that records the names and shapes a model asks
/// for and hands out zeros (cheap: no random initialisation).
struct Recorder(Seen);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut m) = self.0.lock() {
            m.insert(name.to_string(), s.dims().to_vec());
        }
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recorder: {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The tensors (name -> shape) a model built by `build` expects.
pub fn expected_tensors(
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let seen = Seen::default();
    let vb = VarBuilder::from_backend(Box::new(Recorder(seen.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let m = seen
        .lock()
        .map_err(|_| ModelError::Config("recorder poisoned".into()))?
        .clone();
    Ok(m)
}

/// Checks `found` against `expected`: every expected tensor present with
/// its shape, nothing unexpected. Names under a `skip` prefix are not
/// checked (a head to re-initialise); [`is_ignored`] names never are.
pub fn validate(
    path: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    found: &HashMap<String, Tensor>,
    skip: &[&str],
) -> Result<()> {
    let skipped = |n: &str| skip.iter().any(|p| n.starts_with(p)) || is_ignored(n);
    for (name, shape) in expected {
        if skipped(name) {
            continue;
        }
        match found.get(name) {
            None => {
                return Err(weights_err(
                    path,
                    format!("missing tensor {name} (expected shape {shape:?})"),
                ))
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(weights_err(
                    path,
                    format!(
                        "tensor {name}: expected shape {shape:?}, found {:?}",
                        t.dims()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = found
        .keys()
        .filter(|n| !expected.contains_key(*n) && !skipped(n))
        .collect();
    unexpected.sort();
    if let Some(first) = unexpected.first() {
        return Err(weights_err(
            path,
            format!(
                "unexpected tensor {first} with shape {:?} ({} unexpected in all); is this the right model?",
                found[*first].dims(),
                unexpected.len()
            ),
        ));
    }
    Ok(())
}
