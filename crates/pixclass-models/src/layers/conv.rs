//! `Conv2d` and `ConvTranspose2d` (PyTorch's names, shapes and default
//! initialisation), computed by `pixclass-ops`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use pixclass_ops::{self as ops, Pad};

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
        if cfg.groups == 0 || !in_c.is_multiple_of(cfg.groups) || !out_c.is_multiple_of(cfg.groups)
        {
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

    /// The convolution as an [`ops::ConvSpec`] (for an op that fuses it
    /// with what follows); `None` for a grouped one.
    pub fn spec(&self) -> Option<ops::ConvSpec> {
        let (pad_h, pad_w) = self.pads();
        (self.cfg.groups == 1).then_some(ops::ConvSpec::Conv2d {
            pad_h,
            pad_w,
            stride: self.cfg.stride,
            dilation: self.cfg.dilation,
        })
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

impl Conv2d {
    /// This layer's convolution (padding, stride, dilation, groups) with
    /// another weight and bias, clamped to `bounds` in the same kernel: the
    /// layer with a BatchNorm folded into it ([`super::BatchNorm2d::forward_conv_t`]).
    ///
    /// # Shapes
    /// `x` `[N, C_in, H, W]`, `weight` as this layer's, `bias` `[C_out]` ->
    /// `[N, C_out, H', W']`.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        bounds: (f64, f64),
    ) -> Result<Tensor> {
        let (ph, pw) = self.pads();
        let c = &self.cfg;
        ops::conv2d_bias_clamp(
            x, weight, bias, ph, pw, c.stride, c.dilation, c.groups, bounds,
        )
    }

    /// The convolution of the channel concatenation of `parts` (what
    /// `forward(&Tensor::cat(parts, 1))` computes) without building it: the
    /// sum of each part's convolution with its slice of the filters, the
    /// bias added once. A skip connection's concatenation then costs no
    /// copy in the forward and no strided slicing of its gradient in the
    /// backward, and each part gets the kernel that suits its channel count
    /// (the UNet's last layer: 24 feature channels through the Winograd
    /// kernel, the 1-channel grey input through a direct one). Two parts
    /// whose second needs no gradient (that grey input) are one op
    /// ([`ops::conv2d_bias_clamp_const_tail`]), so autograd keeps one
    /// output-sized gradient, not three. Grouped convolutions concatenate.
    ///
    /// # Shapes
    /// `parts[i]` `[N, C_i, H, W]` with `Σ C_i = C_in` -> `[N, C_out, H', W']`.
    pub fn forward_concat(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let in_c = self.weight.dim(1)? * self.cfg.groups;
        let channels = parts.iter().map(|p| p.dim(1)).collect::<Result<Vec<_>>>()?;
        if channels.iter().sum::<usize>() != in_c {
            candle_core::bail!(
                "conv2d: the parts' channels {channels:?} do not add up to the layer's {in_c}"
            );
        }
        if self.cfg.groups != 1 || parts.len() < 2 {
            return self.forward(&Tensor::cat(parts, 1)?);
        }
        let (ph, pw) = self.pads();
        // Two parts, the second a constant (the network's input image) and
        // a bias to add: one op, whose backward leaves the constant alone.
        if let ([x, tail], Some(bias)) = (parts, &self.bias) {
            if !tail.track_op() {
                let (s, d) = (self.cfg.stride, self.cfg.dilation);
                let b = ops::NO_CLAMP;
                return ops::conv2d_bias_clamp_const_tail(
                    x,
                    tail,
                    &self.weight,
                    bias,
                    ph,
                    pw,
                    s,
                    d,
                    b,
                );
            }
        }
        let mut sum: Option<Tensor> = None;
        let mut start = 0;
        for (i, (part, c)) in parts.iter().zip(channels).enumerate() {
            let w = self.weight.narrow(1, start, c)?;
            let bias = if i == 0 { self.bias.as_ref() } else { None };
            let y = ops::conv2d_bias(
                part,
                &w,
                bias,
                ph,
                pw,
                self.cfg.stride,
                self.cfg.dilation,
                1,
            )?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
            start += c;
        }
        sum.ok_or_else(|| candle_core::Error::Msg("conv2d: no input parts".into()))
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

    /// The weight `[in, out, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The transposed convolution as an [`ops::ConvSpec`].
    pub fn spec(&self) -> ops::ConvSpec {
        let c = self.cfg;
        ops::ConvSpec::ConvTranspose2d {
            padding: c.padding,
            output_padding: c.output_padding,
            stride: c.stride,
            dilation: c.dilation,
        }
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
