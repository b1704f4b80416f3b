//! `BatchNorm2d`: PyTorch's parameters, buffers and momentum update; the
//! normalisation itself is `pixclass_ops::batch_norm_train` / `_eval`.

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

/// Configuration of [`BatchNorm2d`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f64,
    /// Whether the layer has `weight` and `bias`.
    pub affine: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

/// Batch normalisation over `[N, C, H, W]` (`torch.nn.BatchNorm2d`).
///
/// Train mode normalises with the batch's biased variance and updates the
/// running statistics with the unbiased one (momentum update); eval mode uses
/// the running statistics. A training batch with one value per channel is an
/// error (PyTorch refuses it too; the unbiased variance would be NaN).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Var,
    running_var: Var,
    cfg: BatchNormConfig,
}

impl BatchNorm2d {
    /// Creates (or loads) `weight`, `bias`, `running_mean`, `running_var`.
    pub fn new(c: usize, cfg: BatchNormConfig, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if cfg.affine {
            (
                Some(vb.get_with_hints(c, "weight", Init::Const(1.0))?),
                Some(vb.get_with_hints(c, "bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        let rm = vb.get_with_hints(c, "running_mean", Init::Const(0.0))?;
        let rv = vb.get_with_hints(c, "running_var", Init::Const(1.0))?;
        // For a VarMap-backed builder these share the map's storage, so
        // running-stat updates are visible to checkpoints.
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&rm)?,
            running_var: Var::from_tensor(&rv)?,
            cfg,
        })
    }

    /// Number of trainable scalars (weight and bias).
    pub fn num_params(&self) -> usize {
        self.weight.as_ref().map_or(0, |w| w.elem_count())
            + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }

    /// The running mean `[C]`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance `[C]`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false, true)
    }

    /// [`BatchNorm2d::forward_t`] (with an optional ReLU) through candle
    /// primitives only: the path CUDA and Metal take.
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_portable_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.forward_impl(x, train, relu, false)
    }

    /// `relu(batch_norm(x))`, fused into one kernel on the CPU.
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true, true)
    }

    fn affine(&self) -> Option<(&Tensor, &Tensor)> {
        self.weight.as_ref().zip(self.bias.as_ref())
    }

    fn update_running(&self, mean: &Tensor, var_biased: &Tensor, count: usize) -> Result<()> {
        let m = self.cfg.momentum;
        let dt = self.running_mean.dtype();
        let unbiased = (var_biased * (count as f64 / (count as f64 - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_dtype(dt)? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased.to_dtype(dt)? * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }

    /// `fused`: the ops' dispatching entry points (CPU kernels where they
    /// apply); otherwise their portable formulations.
    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool, fused: bool) -> Result<Tensor> {
        let eps = self.cfg.eps;
        if !train {
            let (rm, rv) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
            return if fused {
                pixclass_ops::batch_norm_eval(x, rm, rv, self.affine(), eps, relu)
            } else {
                pixclass_ops::batch_norm_eval_portable(x, rm, rv, self.affine(), eps, relu)
            };
        }
        let out = if fused {
            pixclass_ops::batch_norm_train(x, self.affine(), eps, relu)?
        } else {
            pixclass_ops::batch_norm_train_portable(x, self.affine(), eps, relu)?
        };
        let (n, _, h, w) = x.dims4()?;
        self.update_running(&out.mean, &out.var, n * h * w)?;
        Ok(out.y)
    }
}

impl ModuleT for BatchNorm2d {
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm2d::forward_t(self, x, train)
    }
}
