//! Seeded parameter initialisation.
//!
//! candle's CPU random numbers come from an unseedable thread RNG, so two
//! runs would start from different weights. [`seeded_var_builder`] creates a
//! `VarBuilder` over a `VarMap` whose new variables are drawn from ChaCha8
//! seeded by `(seed, parameter name)`: the same seed gives the same weights
//! on every device and in any creation order.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Seeded {
    map: VarMap,
    seed: u64,
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

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "parameter {name}: shape {:?} requested, {:?} exists",
                    s.dims(),
                    t.dims()
                );
            }
            return t.to_dtype(dtype);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv(name));
        let values = sample(h, &s, &mut rng)?;
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.map.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no parameter named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
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
            seed,
        }),
        dtype,
        device.clone(),
    )
}
