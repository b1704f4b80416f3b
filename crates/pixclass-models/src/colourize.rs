//! The three colourization networks of the study (SPEC §A.3):
//! [`ColourModelKind::PoolUpsample`], [`ColourModelKind::ConvTranspose`] and
//! [`ColourModelKind::UNet`], built by [`ColourNet::new`].
//!
//! Parameter names follow the equivalent PyTorch modules (`layer1.0.weight`,
//! `layer1.2.running_mean`, ..., `layer5.bias`; see
//! `tests/golden/make_colour_golden.py`), so PyTorch state dicts load
//! unchanged. The nets are fully convolutional: any input whose height and
//! width are divisible by 4 gives logits of the same size.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::layers::{
    BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
    Padding,
};
use crate::summary::{LayerKind, Summary, Trace};
use pixclass_ops as ops;

/// Which of the three networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ColourModelKind {
    /// Conv → MaxPool/Upsample → BN → ReLU blocks.
    PoolUpsample,
    /// Strided convs down, transposed convs up.
    ConvTranspose,
    /// ConvTranspose with two concatenation skips.
    #[serde(rename = "unet")]
    #[cfg_attr(feature = "clap", value(name = "unet"))]
    UNet,
}

impl ColourModelKind {
    /// All kinds, in the study's order.
    pub const ALL: [ColourModelKind; 3] = [Self::PoolUpsample, Self::ConvTranspose, Self::UNet];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PoolUpsample => "pool-upsample",
            Self::ConvTranspose => "conv-transpose",
            Self::UNet => "unet",
        }
    }

    /// The study's class name.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::PoolUpsample => "PoolUpsampleNet",
            Self::ConvTranspose => "ConvTransposeNet",
            Self::UNet => "UNet",
        }
    }
}

impl std::str::FromStr for ColourModelKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "unknown model {s:?}: pool-upsample, conv-transpose or unet"
                ))
            })
    }
}

impl std::fmt::Display for ColourModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Hyperparameters of a colourization net (defaults: the study's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColourNetConfig {
    /// Which network.
    pub kind: ColourModelKind,
    /// Kernel size k (>= 2).
    pub kernel: usize,
    /// NF: filters of the first block.
    pub num_filters: usize,
    /// NC: colour classes.
    pub num_colours: usize,
    /// NIC: input channels (1 = grey).
    pub in_channels: usize,
}

impl Default for ColourNetConfig {
    fn default() -> Self {
        Self {
            kind: ColourModelKind::PoolUpsample,
            kernel: 3,
            num_filters: 32,
            num_colours: 24,
            in_channels: 1,
        }
    }
}

/// Padding of the stride-2 convolutions: the p with
/// `floor((H + 2p - k)/2) + 1 = H/2`, i.e. `2p ∈ {k-2, k-1}`.
pub fn strided_padding(k: usize) -> usize {
    (k - 1) / 2
}

/// Output padding of the stride-2 transposed convolutions, so that
/// `(H/2 - 1)·2 - 2p + k + op = H`: `op = 2 + 2p - k` (1 for odd k, 0 for even).
pub fn transposed_output_padding(k: usize) -> usize {
    2 + 2 * strided_padding(k) - k
}

impl ColourNetConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.kernel < 2 {
            return Err(ModelError::Config(format!(
                "kernel size must be >= 2, got {}",
                self.kernel
            )));
        }
        for (name, v) in [
            ("num_filters", self.num_filters),
            ("num_colours", self.num_colours),
            ("in_channels", self.in_channels),
        ] {
            if v == 0 {
                return Err(ModelError::Config(format!("{name} must be >= 1")));
            }
        }
        Ok(())
    }
}

enum Op {
    Conv(Conv2d),
    ConvT(ConvTranspose2d),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Resample {
    Pool,
    Up,
}

/// `Sequential(op, [resample], BatchNorm2d, ReLU)`, named like PyTorch's.
struct Block {
    name: String,
    op: Op,
    resample: Option<Resample>,
    bn: BatchNorm2d,
}

impl Block {
    fn new(
        name: &str,
        op: Op,
        resample: Option<Resample>,
        out_c: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let bn_idx = if resample.is_some() { 2 } else { 1 };
        let bn = BatchNorm2d::new(out_c, BatchNormConfig::default(), vb.pp(name).pp(bn_idx))?;
        Ok(Self {
            name: name.to_string(),
            op,
            resample,
            bn,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let n = &self.name;
        // Training without a layer summary: the convolution, the
        // resampling and the normalisation as one node.
        if let (true, None) = (train, trace.as_deref()) {
            let fused = match &self.op {
                Op::Conv(c) => c.spec().zip(c.bias()).map(|(s, b)| (c.weight(), b, s)),
                Op::ConvT(c) => Some((c.weight(), c.bias(), c.spec())),
            };
            let how = self.resample.map(|r| match r {
                Resample::Pool => ops::Resample::MaxPool(2),
                Resample::Up => ops::Resample::Upsample(2),
            });
            if let Some((w, b, spec)) = fused {
                let bn = &self.bn;
                return Ok(bn.forward_relu_after_conv_t(x, (w, b), spec, how, train)?);
            }
        }
        let y = match &self.op {
            Op::Conv(c) => c.forward(x)?,
            Op::ConvT(c) => c.forward(x)?,
        };
        if let Some(t) = trace.as_deref_mut() {
            let kind = match &self.op {
                Op::Conv(c) => LayerKind::Conv {
                    k: c.weight().dim(2)?,
                    in_per_group: c.weight().dim(1)?,
                    stride: c.config().stride,
                },
                Op::ConvT(c) => LayerKind::ConvTranspose {
                    k: c.kernel_size(),
                    out_channels: c.out_channels(),
                    stride: c.config().stride,
                },
            };
            let params = match &self.op {
                Op::Conv(c) => c.num_params(),
                Op::ConvT(c) => c.num_params(),
            };
            t.push(&format!("{n}.0"), kind, params, x, &y);
        }
        let (y2, next) = match self.resample {
            Some(Resample::Pool) => (ops::max_pool2d(&y, 2)?, 2),
            Some(Resample::Up) => (ops::upsample_nearest(&y, 2)?, 2),
            None => (y.clone(), 1),
        };
        if let (Some(t), Some(r)) = (trace.as_deref_mut(), self.resample) {
            let kind = match r {
                Resample::Pool => LayerKind::MaxPool { k: 2 },
                Resample::Up => LayerKind::Upsample { factor: 2 },
            };
            t.push(&format!("{n}.1"), kind, 0, &y, &y2);
        }
        let r = self.bn.forward_relu_t(&y2, train)?;
        if let Some(t) = trace {
            t.push(
                &format!("{n}.{next}"),
                LayerKind::BatchNorm,
                self.bn.num_params(),
                &y2,
                &r,
            );
            t.push(&format!("{n}.{}", next + 1), LayerKind::Relu, 0, &r, &r);
        }
        Ok(r)
    }
}

/// One of the three colourization networks.
pub struct ColourNet {
    cfg: ColourNetConfig,
    blocks: [Block; 4],
    layer5: Conv2d,
}

impl ColourNet {
    /// Builds the network described by `cfg`, creating or loading its
    /// parameters through `vb`.
    pub fn new(cfg: ColourNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (k, nf, nc, nic) = (
            cfg.kernel,
            cfg.num_filters,
            cfg.num_colours,
            cfg.in_channels,
        );
        let same = Conv2dConfig {
            padding: Padding::Same,
            ..Default::default()
        };
        let conv = |name: &str, i, o, c: Conv2dConfig| Conv2d::new(i, o, k, c, vb.pp(name).pp(0));
        let blocks = match cfg.kind {
            ColourModelKind::PoolUpsample => [
                Block::new(
                    "layer1",
                    Op::Conv(conv("layer1", nic, nf, same)?),
                    Some(Resample::Pool),
                    nf,
                    &vb,
                )?,
                Block::new(
                    "layer2",
                    Op::Conv(conv("layer2", nf, 2 * nf, same)?),
                    Some(Resample::Pool),
                    2 * nf,
                    &vb,
                )?,
                Block::new(
                    "layer3",
                    Op::Conv(conv("layer3", 2 * nf, nf, same)?),
                    Some(Resample::Up),
                    nf,
                    &vb,
                )?,
                Block::new(
                    "layer4",
                    Op::Conv(conv("layer4", nf, nc, same)?),
                    Some(Resample::Up),
                    nc,
                    &vb,
                )?,
            ],
            ColourModelKind::ConvTranspose | ColourModelKind::UNet => {
                let down = Conv2dConfig {
                    padding: Padding::Symmetric(strided_padding(k)),
                    stride: 2,
                    ..Default::default()
                };
                let up = ConvTranspose2dConfig {
                    padding: strided_padding(k),
                    output_padding: transposed_output_padding(k),
                    stride: 2,
                    dilation: 1,
                };
                let skip = cfg.kind == ColourModelKind::UNet;
                let convt = |name: &str, i, o| ConvTranspose2d::new(i, o, k, up, vb.pp(name).pp(0));
                [
                    Block::new(
                        "layer1",
                        Op::Conv(conv("layer1", nic, nf, down)?),
                        None,
                        nf,
                        &vb,
                    )?,
                    Block::new(
                        "layer2",
                        Op::Conv(conv("layer2", nf, 2 * nf, down)?),
                        None,
                        2 * nf,
                        &vb,
                    )?,
                    Block::new(
                        "layer3",
                        Op::ConvT(convt("layer3", 2 * nf, nf)?),
                        None,
                        nf,
                        &vb,
                    )?,
                    Block::new(
                        "layer4",
                        Op::ConvT(convt("layer4", if skip { 2 * nf } else { nf }, nc)?),
                        None,
                        nc,
                        &vb,
                    )?,
                ]
            }
        };
        let final_in = if cfg.kind == ColourModelKind::UNet {
            nc + nic
        } else {
            nc
        };
        let layer5 = Conv2d::new(final_in, nc, k, same, vb.pp("layer5"))?;
        Ok(Self {
            cfg,
            blocks,
            layer5,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ColourNetConfig {
        &self.cfg
    }

    /// Logits of every pixel. `train` selects batch statistics (and updates
    /// running statistics) in BatchNorm.
    ///
    /// # Shapes
    /// `[N, NIC, H, W]` with H and W divisible by 4 -> `[N, NC, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, None)
    }

    /// The layer summary for an input of `h x w` pixels, recorded from a real
    /// (eval-mode) forward pass on zeros.
    pub fn summary(&self, h: usize, w: usize) -> Result<Summary> {
        let x = Tensor::zeros(
            (1, self.cfg.in_channels, h, w),
            candle_core::DType::F32,
            &self.device(),
        )?;
        let mut trace = Trace::default();
        self.forward_impl(&x, false, Some(&mut trace))?;
        Ok(trace.finish(self.cfg.kind.display_name(), [self.cfg.in_channels, h, w]))
    }

    fn device(&self) -> candle_core::Device {
        self.layer5.weight().device().clone()
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let dims = x.dims();
        let shape_err = |reason: String| ModelError::InputShape {
            model: self.cfg.kind.display_name().into(),
            shape: dims.to_vec(),
            reason,
        };
        if dims.len() != 4 {
            return Err(shape_err("expected [N, C, H, W]".into()));
        }
        if dims[1] != self.cfg.in_channels {
            return Err(shape_err(format!(
                "expected {} input channel(s)",
                self.cfg.in_channels
            )));
        }
        if !dims[2].is_multiple_of(4) || !dims[3].is_multiple_of(4) || dims[2] == 0 || dims[3] == 0
        {
            return Err(shape_err(
                "height and width must be positive multiples of 4".into(),
            ));
        }
        let [b1, b2, b3, b4] = &self.blocks;
        let unet = self.cfg.kind == ColourModelKind::UNet;
        let h1 = b1.forward(x, train, trace.as_deref_mut())?;
        let h2 = b2.forward(&h1, train, trace.as_deref_mut())?;
        let h3 = b3.forward(&h2, train, trace.as_deref_mut())?;
        let h3 = if unet {
            self.concat(&[&h3, &h1], &mut trace)?
        } else {
            h3
        };
        let h4 = b4.forward(&h3, train, trace.as_deref_mut())?;
        // The last skip: the convolution reads the features and the grey
        // input as one concatenation without building it (the layer summary
        // still shows the concatenation).
        let out = if unet {
            let out = self.layer5.forward_concat(&[&h4, x])?;
            if trace.is_some() {
                let h4 = self.concat(&[&h4, x], &mut trace)?;
                self.trace_layer5(&h4, &out, trace)?;
            }
            out
        } else {
            let out = self.layer5.forward(&h4)?;
            self.trace_layer5(&h4, &out, trace)?;
            out
        };
        Ok(out)
    }

    fn trace_layer5(&self, h4: &Tensor, out: &Tensor, trace: Option<&mut Trace>) -> Result<()> {
        if let Some(t) = trace {
            let w = self.layer5.weight();
            t.push(
                "layer5",
                LayerKind::Conv {
                    k: w.dim(2)?,
                    in_per_group: w.dim(1)?,
                    stride: 1,
                },
                self.layer5.num_params(),
                h4,
                out,
            );
        }
        Ok(())
    }

    fn concat(&self, parts: &[&Tensor], trace: &mut Option<&mut Trace>) -> Result<Tensor> {
        let y = Tensor::cat(parts, 1)?;
        if let Some(t) = trace.as_deref_mut() {
            t.push("concat", LayerKind::Concat, 0, parts[0], &y);
        }
        Ok(y)
    }
}

impl candle_nn::ModuleT for ColourNet {
    /// [`ColourNet::forward_t`] behind candle-nn's trait.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(ColourNet::forward_t(self, x, train)?)
    }
}
