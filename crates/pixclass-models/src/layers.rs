//! Layers in candle-nn style: a config struct with defaults, a struct, and a
//! constructor taking a `VarBuilder`. Parameter names follow PyTorch
//! (`weight`, `bias`, `running_mean`, `running_var`) so state dicts load
//! unchanged. Initialisation follows PyTorch's defaults.

use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::ops::{self, Pad};

/// Padding of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Padding {
    /// The same number of zeros on every side.
    Symmetric(usize),
    /// PyTorch's `padding="same"` (stride 1): output size = input size.
    Same,
}

/// Configuration of [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Zero padding.
    pub padding: Padding,
    /// Stride (both dimensions).
    pub stride: usize,
    /// Dilation (both dimensions).
    pub dilation: usize,
    /// Groups (`in_channels` for depthwise).
    pub groups: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            padding: Padding::Symmetric(0),
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
}

/// PyTorch's default bias init for a layer with `fan_in` inputs per output:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn uniform_bound(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// PyTorch's default conv weight init, `kaiming_uniform_(a = sqrt 5)`:
/// U(-b, b) with `b = sqrt(3) · gain / sqrt(fan_in)`, `gain = sqrt(2 / (1 + a²))`
/// (= 1/sqrt(fan_in) up to rounding). `fan_in` = the product of the weight's
/// dimensions after the first, as in PyTorch.
pub const TORCH_CONV_WEIGHT_INIT: Init = Init::Kaiming {
    dist: candle_nn::init::NormalOrUniform::Uniform,
    fan: candle_nn::init::FanInOut::FanIn,
    non_linearity: candle_nn::init::NonLinearity::ExplicitGain(TORCH_CONV_GAIN),
};

/// `sqrt(2 / (1 + a²))` for `a = sqrt(5)`, as Python computes it.
const TORCH_CONV_GAIN: f64 = 0.5773502691896257;

/// A 2-D convolution (`torch.nn.Conv2d`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// Creates (or loads) `weight` `[out, in/groups, k, k]` and `bias` `[out]`.
    pub fn new(
        in_c: usize,
        out_c: usize,
        k: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        if cfg.groups == 0 || in_c % cfg.groups != 0 || out_c % cfg.groups != 0 {
            candle_core::bail!(
                "conv2d: groups {} must divide {in_c} and {out_c}",
                cfg.groups
            );
        }
        let fan_in = in_c / cfg.groups * k * k;
        let weight = vb.get_with_hints(
            (out_c, in_c / cfg.groups, k, k),
            "weight",
            TORCH_CONV_WEIGHT_INIT,
        )?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(out_c, "bias", uniform_bound(fan_in))?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }

    /// The weight `[out, in/groups, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    fn pads(&self) -> (Pad, Pad) {
        let k = self.weight.dim(2).unwrap_or(1);
        match self.cfg.padding {
            Padding::Symmetric(p) => ((p, p), (p, p)),
            Padding::Same => {
                let p = ops::same_padding(k, self.cfg.dilation);
                (p, p)
            }
        }
    }

    /// Output size of one spatial dimension for input size `n`.
    pub fn out_size(&self, n: usize) -> usize {
        let k = self.weight.dim(2).unwrap_or(1);
        let (p, _) = self.pads();
        let span = self.cfg.dilation * (k - 1) + 1;
        (n + p.0 + p.1).saturating_sub(span) / self.cfg.stride + 1
    }
}

impl Module for Conv2d {
    /// # Shapes
    /// `[N, C_in, H, W]` -> `[N, C_out, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.pads();
        ops::conv2d_bias(
            x,
            &self.weight,
            self.bias.as_ref(),
            ph,
            pw,
            self.cfg.stride,
            self.cfg.dilation,
            self.cfg.groups,
        )
    }
}

/// Configuration of [`ConvTranspose2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose2dConfig {
    /// Padding removed from each side of the full output.
    pub padding: usize,
    /// Extra rows/columns added on one side (0 <= op < stride).
    pub output_padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
}

impl Default for ConvTranspose2dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            output_padding: 0,
            stride: 1,
            dilation: 1,
        }
    }
}

/// A transposed 2-D convolution (`torch.nn.ConvTranspose2d`).
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    cfg: ConvTranspose2dConfig,
}

impl ConvTranspose2d {
    /// Creates (or loads) `weight` `[in, out, k, k]` and `bias` `[out]`.
    pub fn new(
        in_c: usize,
        out_c: usize,
        k: usize,
        cfg: ConvTranspose2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        // PyTorch computes fan_in from weight.size(1) = out channels.
        let fan_in = out_c * k * k;
        let weight = vb.get_with_hints((in_c, out_c, k, k), "weight", TORCH_CONV_WEIGHT_INIT)?;
        let bias = vb.get_with_hints(out_c, "bias", uniform_bound(fan_in))?;
        Ok(Self { weight, bias, cfg })
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    /// Kernel size.
    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[2]
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.bias.elem_count()
    }

    /// The configuration.
    pub fn config(&self) -> &ConvTranspose2dConfig {
        &self.cfg
    }
}

impl Module for ConvTranspose2d {
    /// # Shapes
    /// `[N, C_in, H, W]` -> `[N, C_out, (H-1)·s - 2p + d·(k-1) + op + 1, ...]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.cfg;
        ops::conv_transpose2d_bias(
            x,
            &self.weight,
            Some(&self.bias),
            c.padding,
            c.output_padding,
            c.stride,
            c.dilation,
        )
    }
}

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

    fn update_running(&self, mean: &Tensor, var_biased: &Tensor, count: usize) -> Result<()> {
        let m = self.cfg.momentum;
        let dt = self.running_mean.dtype();
        let unbiased = (var_biased * (count as f64 / (count as f64 - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_dtype(dt)? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased.to_dtype(dt)? * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool, kernels: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if !train {
            let mean = self
                .running_mean
                .as_tensor()
                .detach()
                .reshape((1, c, 1, 1))?
                .to_dtype(x.dtype())?;
            let var = self
                .running_var
                .as_tensor()
                .detach()
                .reshape((1, c, 1, 1))?;
            let inv = (var + self.cfg.eps)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
            if kernels && crate::ops::cpu_float(x) {
                // One pass: y = x·scale + shift, the statistics folded in
                // (gradients still reach weight and bias through scale/shift).
                let inv = inv.flatten_all()?;
                let mean = mean.flatten_all()?;
                let (scale, shift) = match (&self.weight, &self.bias) {
                    (Some(w), Some(b)) => {
                        let scale = w.to_dtype(x.dtype())?.mul(&inv)?;
                        let shift = b.to_dtype(x.dtype())?.sub(&mean.mul(&scale)?)?;
                        (scale, shift)
                    }
                    _ => (inv.clone(), mean.mul(&inv)?.neg()?),
                };
                return x.contiguous()?.apply_op3(
                    &scale.contiguous()?,
                    &shift.contiguous()?,
                    crate::cpu_kernels::ChannelAffine { relu },
                );
            }
            let y = self.affine(x.broadcast_sub(&mean)?.broadcast_mul(&inv)?, c)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!(
                "batch norm in train mode needs more than one value per channel, got input {:?}",
                x.dims()
            );
        }
        if let (true, Some(g), Some(b)) = (
            kernels && crate::ops::cpu_float(x),
            &self.weight,
            &self.bias,
        ) {
            let (y, mean, var) = crate::cpu_kernels::batch_norm_train(x, g, b, self.cfg.eps, relu)?;
            let dev = x.device();
            self.update_running(
                &Tensor::new(mean.as_slice(), dev)?,
                &Tensor::new(var.as_slice(), dev)?,
                count,
            )?;
            return Ok(y);
        }
        // Portable path (CUDA, Metal): sums one dimension at a time.
        let sum = |t: &Tensor| t.sum_keepdim(3)?.sum_keepdim(2)?.sum_keepdim(0);
        let mean = (sum(x)? / count as f64)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (sum(&xc.sqr()?)? / count as f64)?;
        self.update_running(
            &mean.detach().flatten_all()?,
            &var.detach().flatten_all()?,
            count,
        )?;
        let inv = (var + self.cfg.eps)?.sqrt()?.recip()?;
        let y = self.affine(xc.broadcast_mul(&inv)?, c)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn affine(&self, y: Tensor, c: usize) -> Result<Tensor> {
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => y
                .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
                .broadcast_add(&b.reshape((1, c, 1, 1))?),
            _ => Ok(y),
        }
    }
}

/// Counts the scalars of the trainable parameters of a `VarMap`: every
/// variable except BatchNorm running statistics.
pub fn trainable_scalars(varmap: &candle_nn::VarMap) -> usize {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// The trainable variables of a `VarMap` (sorted by name): every variable
/// except BatchNorm running statistics (PyTorch's buffers).
pub fn trainable_vars(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// True for names of non-trainable buffers (`running_mean`, `running_var`,
/// `num_batches_tracked`, and a segmentation head's fixed feature
/// statistics `feature_mean`/`feature_std`).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
        || name.ends_with("feature_mean")
        || name.ends_with("feature_std")
}
