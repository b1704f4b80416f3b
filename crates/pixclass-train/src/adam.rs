//! Adam exactly like `torch.optim.Adam` (no weight decay, no amsgrad), with
//! its state exposed for checkpoints.
//!
//! Step t: `m = β1 m + (1-β1) g`, `v = β2 v + (1-β2) g²`,
//! `p -= lr / (1-β1^t) · m / (sqrt(v) / sqrt(1-β2^t) + eps)`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Adam's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The optimiser over a named set of variables.
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl Adam {
    /// Adam over `vars` (name, variable); moments start at zero.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.as_tensor().zeros_like()?;
                let v = var.as_tensor().zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Changes the learning rate (for schedules such as a warm-up).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One update from the gradients of the last backward pass. Variables
    /// without a gradient are left alone (their moments too), like PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2 = 1.0 - beta2.powi(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?;
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((slot.v.sqrt()? / bc2_sqrt)? + eps)?;
            let update = (slot.m.div(&denom)? * step_size)?;
            let p = slot.var.as_tensor().detach();
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adam.m.<name>`, `adam.v.<name>`).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("adam.m.{}", s.name), s.m.clone());
            out.insert(format!("adam.v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores moments and step count saved by [`Adam::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            let dev = s.var.device().clone();
            let get = |k: String| -> Result<Tensor> {
                tensors
                    .get(&k)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimiser state {k} missing")))?
                    .to_device(&dev)
            };
            s.m = get(format!("adam.m.{}", s.name))?;
            s.v = get(format!("adam.v.{}", s.name))?;
        }
        self.step = step;
        Ok(())
    }
}
