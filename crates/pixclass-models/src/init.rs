//! Seeded parameter initialisation.
//!
//! candle's CPU random numbers come from an unseedable thread RNG, so two
//! runs would start from different weights. Two seeded `VarBuilder`s over a
//! `VarMap` fix that:
//! - [`seeded_var_builder`]: each new variable drawn from ChaCha8 seeded by
//!   `(seed, parameter name)`: the same weights on every device and in any
//!   creation order;
//! - [`torch_var_builder`]: PyTorch's CPU generator after
//!   `torch.manual_seed(seed)` (MT19937), drawn in creation order with
//!   PyTorch's `uniform_` arithmetic: a model built in the same module order
//!   as its PyTorch twin starts from bit-identical weights.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;

/// Where new variables' values come from: one of the two seeded schemes.
trait Draw: Send + Sync + 'static {
    /// Values for the new variable `name` of shape `shape` (on the CPU).
    fn draw(&self, init: Init, shape: &Shape, name: &str) -> Result<Tensor>;
}

/// A `VarMap` backend: existing variables are returned, new ones drawn.
struct Seeded<D> {
    map: VarMap,
    draw: D,
}

/// Per-parameter ChaCha8 streams seeded by `(seed, name)`.
struct ChaChaDraw {
    seed: u64,
}

impl Draw for ChaChaDraw {
    fn draw(&self, init: Init, shape: &Shape, name: &str) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv(name));
        Tensor::from_vec(sample(init, shape, &mut rng)?, shape, &Device::Cpu)
    }
}

/// FNV-1a hash of a name, to derive one RNG stream per parameter.
fn fnv(name: &str) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn sample(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Result<Vec<f64>> {
    let n = shape.elem_count();
    Ok(match init {
        Init::Const(v) => vec![v; n],
        Init::Uniform { lo, up } => (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                // Box-Muller.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                mean + stdev * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect(),
        Init::Kaiming { .. } => {
            // PyTorch's default conv/linear init: U(-1/sqrt(fan_in), ..).
            let dims = shape.dims();
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let b = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| -b + 2.0 * b * rng.random::<f64>()).collect()
        }
    })
}

/// The variable `name` of `map`, if it exists with shape `s`.
fn existing(map: &VarMap, s: &Shape, name: &str) -> Result<Option<Tensor>> {
    let data = map.data().lock().unwrap_or_else(|e| e.into_inner());
    match data.get(name) {
        Some(v) if v.as_tensor().shape() != s => candle_core::bail!(
            "parameter {name}: shape {:?} requested, {:?} exists",
            s.dims(),
            v.as_tensor().dims()
        ),
        Some(v) => Ok(Some(v.as_tensor().clone())),
        None => Ok(None),
    }
}

/// Stores `values` (on the CPU) as the new variable `name` of `map`.
fn insert(map: &VarMap, name: &str, values: Tensor, dtype: DType, dev: &Device) -> Result<Tensor> {
    let var = Var::from_tensor(&values.to_dtype(dtype)?.to_device(dev)?)?;
    let out = var.as_tensor().clone();
    let mut data = map.data().lock().unwrap_or_else(|e| e.into_inner());
    data.insert(name.to_string(), var);
    Ok(out)
}

fn get_unchecked(map: &VarMap, name: &str, dtype: DType) -> Result<Tensor> {
    let data = map.data().lock().unwrap_or_else(|e| e.into_inner());
    match data.get(name) {
        Some(v) => v.as_tensor().to_dtype(dtype),
        None => candle_core::bail!("no parameter named {name}"),
    }
}

fn contains(map: &VarMap, name: &str) -> bool {
    map.data()
        .lock()
        .map(|d| d.contains_key(name))
        .unwrap_or(false)
}

impl<D: Draw> SimpleBackend for Seeded<D> {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(t) = existing(&self.map, &s, name)? {
            return t.to_dtype(dtype);
        }
        let values = self.draw.draw(h, &s, name)?;
        insert(&self.map, name, values, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        get_unchecked(&self.map, name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        contains(&self.map, name)
    }
}

/// A `VarBuilder` creating seeded variables in `map` (existing ones are
/// returned as they are, so loading weights into `map` first works too).
pub fn seeded_var_builder(
    map: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            map: map.clone(),
            draw: ChaChaDraw { seed },
        }),
        dtype,
        device.clone(),
    )
}

/// Seeded weights as plain tensors, not variables: a frozen network, like
/// one loaded from a checkpoint (`VarBuilder::from_tensors`). Nothing is
/// trainable, so candle records no autograd graph through it and an eval
/// forward frees each activation as soon as the next layer has read it
/// (with variables, every intermediate of the forward stays alive until the
/// output is dropped). For benchmarks and tests of frozen backbones.
pub fn seeded_frozen_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Frozen {
            draw: ChaChaDraw { seed },
        }),
        dtype,
        device.clone(),
    )
}

/// The backend of [`seeded_frozen_builder`]: every request draws the
/// parameter's `(seed, name)` stream afresh, so a name always gives the
/// same values.
struct Frozen {
    draw: ChaChaDraw,
}

impl SimpleBackend for Frozen {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.draw.draw(h, &s, name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter {name}: a seeded frozen builder needs the shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// PyTorch's `uniform_(from, to)` for f32 tensors on the CPU: 24 random bits
/// of one 32-bit draw, bounds rounded to f32, the affine map in f64 (its
/// accumulation type), the result rounded to f32.
fn torch_uniform(rng: &mut rand_mt::Mt, from: f64, to: f64, n: usize) -> Vec<f32> {
    let (from, to) = (f64::from(from as f32), f64::from(to as f32));
    (0..n)
        .map(|_| {
            let x = f64::from(rng.next_u32() & 0x00ff_ffff) * (1.0 / 16_777_216.0);
            (x * (to - from) + from) as f32
        })
        .collect()
}

/// PyTorch's CPU generator: one MT19937 stream drawn in creation order.
struct TorchDraw {
    rng: Mutex<rand_mt::Mt>,
}

impl Draw for TorchDraw {
    fn draw(&self, init: Init, shape: &Shape, name: &str) -> Result<Tensor> {
        let values = self.sample(init, shape, name)?;
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}

impl TorchDraw {
    fn sample(&self, init: Init, shape: &Shape, name: &str) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => torch_uniform(&mut rng, lo, up, n),
            Init::Kaiming {
                dist: candle_nn::init::NormalOrUniform::Uniform,
                fan: candle_nn::init::FanInOut::FanIn,
                non_linearity,
            } => {
                // torch.nn.init.kaiming_uniform_: std = gain / sqrt(fan),
                // bound = sqrt(3) * std, fan_in = size(1) * receptive field.
                let fan_in: usize = shape.dims().iter().skip(1).product::<usize>().max(1);
                let std = non_linearity.gain() / (fan_in as f64).sqrt();
                let bound = 3f64.sqrt() * std;
                torch_uniform(&mut rng, -bound, bound, n)
            }
            other => candle_core::bail!(
                "parameter {name}: init {other:?} has no PyTorch-compatible draw (uniform and kaiming-uniform only)"
            ),
        })
    }
}

/// A `VarBuilder` creating variables in `map` from PyTorch's CPU generator
/// seeded with `seed` (`torch.manual_seed(seed)`), one shared stream drawn in
/// creation order; uniform and kaiming-uniform inits draw exactly like
/// PyTorch's `uniform_` on f32 tensors, constants draw nothing. Existing
/// variables are returned as they are (and draw nothing).
pub fn torch_var_builder(
    map: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    // torch.manual_seed keeps the low 32 bits for the MT19937 state.
    let rng = rand_mt::Mt::new(seed as u32);
    VarBuilder::from_backend(
        Box::new(Seeded {
            map: map.clone(),
            draw: TorchDraw {
                rng: Mutex::new(rng),
            },
        }),
        dtype,
        device.clone(),
    )
}
