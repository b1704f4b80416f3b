//! DeepLabV3 with a ResNet backbone in torchvision's layout
//! (`torchvision.models.segmentation.deeplabv3_resnet{50,101}`): parameter
//! names equal torchvision's state-dict keys, so the official checkpoints
//! load unchanged (`num_batches_tracked` is ignored).
//!
//! Backbone: ResNet with dilation instead of stride in layer3 (2) and layer4
//! (4), output stride 8. Head (`classifier`): ASPP (1x1, atrous 12/24/36,
//! image pooling; 1x1 projection 1280->256, dropout 0.5), 3x3 conv, BN,
//! ReLU, final 1x1 conv. Optional FCN `aux_classifier` on layer3. Logits are
//! resized bilinearly (align_corners=False) to the input size.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::layers::{BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Padding};
use pixclass_ops as ops;

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResNetDepth {
    /// ResNet-50: blocks 3, 4, 6, 3.
    ResNet50,
    /// ResNet-101: blocks 3, 4, 23, 3.
    ResNet101,
}

impl ResNetDepth {
    /// Bottleneck blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Self::ResNet50 => [3, 4, 6, 3],
            Self::ResNet101 => [3, 4, 23, 3],
        }
    }
}

/// Configuration of [`DeepLabV3`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepLabConfig {
    /// Backbone depth.
    pub depth: ResNetDepth,
    /// Classes of the final 1x1 conv (21 for VOC labels).
    pub num_classes: usize,
    /// Build the auxiliary FCN head on layer3.
    pub aux: bool,
}

impl Default for DeepLabConfig {
    fn default() -> Self {
        Self {
            depth: ResNetDepth::ResNet101,
            num_classes: 21,
            aux: true,
        }
    }
}

/// A convolution named like torchvision's (all DeepLab convs are square).
#[allow(clippy::too_many_arguments)]
fn conv(
    vb: VarBuilder,
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    bias: bool,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: Padding::Symmetric(pad),
        stride,
        dilation,
        groups: 1,
        bias,
    };
    Ok(Conv2d::new(i, o, k, cfg, vb)?)
}

fn bn(vb: VarBuilder, c: usize) -> Result<BatchNorm2d> {
    Ok(BatchNorm2d::new(c, BatchNormConfig::default(), vb)?)
}

/// torchvision's `Bottleneck` (expansion 4, stride on the 3x3 conv).
struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Bottleneck {
    fn new(
        vb: VarBuilder,
        inplanes: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
        downsample: bool,
    ) -> Result<Self> {
        let out = planes * 4;
        Ok(Self {
            conv1: conv(vb.pp("conv1"), inplanes, planes, 1, 1, 0, 1, false)?,
            bn1: bn(vb.pp("bn1"), planes)?,
            conv2: conv(
                vb.pp("conv2"),
                planes,
                planes,
                3,
                stride,
                dilation,
                dilation,
                false,
            )?,
            bn2: bn(vb.pp("bn2"), planes)?,
            conv3: conv(vb.pp("conv3"), planes, out, 1, 1, 0, 1, false)?,
            bn3: bn(vb.pp("bn3"), out)?,
            downsample: if downsample {
                Some((
                    conv(
                        vb.pp("downsample").pp(0),
                        inplanes,
                        out,
                        1,
                        stride,
                        0,
                        1,
                        false,
                    )?,
                    bn(vb.pp("downsample").pp(1), out)?,
                ))
            } else {
                None
            },
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_conv_t(&self.conv1, x, train, true)?;
        let y = self.bn2.forward_conv_t(&self.conv2, &y, train, true)?;
        let y = self.bn3.forward_conv_t(&self.conv3, &y, train, false)?;
        let identity = match &self.downsample {
            Some((c, b)) => b.forward_conv_t(c, x, train, false)?,
            None => x.clone(),
        };
        Ok(ops::add_relu(&y, &identity)?)
    }
}

/// The dilated ResNet backbone (`backbone.*`).
struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Bottleneck>>,
}

impl ResNet {
    fn new(vb: VarBuilder, depth: ResNetDepth) -> Result<Self> {
        let conv1 = conv(vb.pp("conv1"), 3, 64, 7, 2, 3, 1, false)?;
        let bn1 = bn(vb.pp("bn1"), 64)?;
        // replace_stride_with_dilation = [False, True, True].
        let stages = [
            (64, 1, false),
            (128, 2, false),
            (256, 2, true),
            (512, 2, true),
        ];
        let mut inplanes = 64;
        let mut dilation = 1;
        let mut layers = Vec::new();
        for (i, ((planes, stride, dilate), n)) in stages.into_iter().zip(depth.blocks()).enumerate()
        {
            let vb_l = vb.pp(format!("layer{}", i + 1));
            let previous = dilation;
            let stride = if dilate {
                dilation *= stride;
                1
            } else {
                stride
            };
            let mut blocks = Vec::with_capacity(n);
            let down = stride != 1 || inplanes != planes * 4;
            blocks.push(Bottleneck::new(
                vb_l.pp(0),
                inplanes,
                planes,
                stride,
                previous,
                down,
            )?);
            inplanes = planes * 4;
            for b in 1..n {
                blocks.push(Bottleneck::new(
                    vb_l.pp(b),
                    inplanes,
                    planes,
                    1,
                    dilation,
                    false,
                )?);
            }
            layers.push(blocks);
        }
        Ok(Self { conv1, bn1, layers })
    }

    /// (layer3 output, layer4 output).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let y = self.bn1.forward_conv_t(&self.conv1, x, train, true)?;
        let mut y = ops::max_pool2d_strided(&y, 3, 2, 1)?;
        let mut l3 = None;
        for (i, blocks) in self.layers.iter().enumerate() {
            for b in blocks {
                y = b.forward_t(&y, train)?;
            }
            if i == 2 {
                l3 = Some(y.clone());
            }
        }
        let l3 = l3.ok_or_else(|| ModelError::Config("ResNet without layer3".into()))?;
        Ok((l3, y))
    }
}

/// `classifier.0`: atrous spatial pyramid pooling.
struct Aspp {
    branches: Vec<(Conv2d, BatchNorm2d)>,
    pool: (Conv2d, BatchNorm2d),
    project: (Conv2d, BatchNorm2d),
}

impl Aspp {
    fn new(vb: VarBuilder, in_c: usize, rates: [usize; 3]) -> Result<Self> {
        let convs = vb.pp("convs");
        let mut branches = vec![(
            conv(convs.pp(0).pp(0), in_c, 256, 1, 1, 0, 1, false)?,
            bn(convs.pp(0).pp(1), 256)?,
        )];
        for (i, r) in rates.into_iter().enumerate() {
            let v = convs.pp(i + 1);
            branches.push((
                conv(v.pp(0), in_c, 256, 3, 1, r, r, false)?,
                bn(v.pp(1), 256)?,
            ));
        }
        let pool = (
            conv(convs.pp(4).pp(1), in_c, 256, 1, 1, 0, 1, false)?,
            bn(convs.pp(4).pp(2), 256)?,
        );
        let project = (
            conv(vb.pp("project").pp(0), 5 * 256, 256, 1, 1, 0, 1, false)?,
            bn(vb.pp("project").pp(1), 256)?,
        );
        Ok(Self {
            branches,
            pool,
            project,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let mut outs = Vec::with_capacity(5);
        for (c, b) in &self.branches {
            outs.push(b.forward_conv_t(c, x, train, true)?);
        }
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        let p = self
            .pool
            .1
            .forward_conv_t(&self.pool.0, &pooled, train, true)?;
        // Bilinear resize of a 1x1 map is a broadcast.
        outs.push(p.broadcast_as((n, 256, h, w))?.contiguous()?);
        let cat = Tensor::cat(&outs, 1)?;
        let y = self
            .project
            .1
            .forward_conv_t(&self.project.0, &cat, train, true)?;
        Ok(if train {
            candle_nn::ops::dropout(&y, 0.5)?
        } else {
            y
        })
    }
}

/// The full model.
pub struct DeepLabV3 {
    cfg: DeepLabConfig,
    backbone: ResNet,
    aspp: Aspp,
    head_conv: Conv2d,
    head_bn: BatchNorm2d,
    classifier: Conv2d,
    aux: Option<(Conv2d, BatchNorm2d, Conv2d)>,
}

impl DeepLabV3 {
    /// Builds the model; parameters come from (or are created in) `vb` under
    /// torchvision's names.
    pub fn new(cfg: DeepLabConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_classes == 0 {
            return Err(ModelError::Config("num_classes must be >= 1".into()));
        }
        let backbone = ResNet::new(vb.pp("backbone"), cfg.depth)?;
        let c = vb.pp("classifier");
        let aspp = Aspp::new(c.pp(0), 2048, [12, 24, 36])?;
        let head_conv = conv(c.pp(1), 256, 256, 3, 1, 1, 1, false)?;
        let head_bn = bn(c.pp(2), 256)?;
        let classifier = conv(c.pp(4), 256, cfg.num_classes, 1, 1, 0, 1, true)?;
        let aux = if cfg.aux {
            let a = vb.pp("aux_classifier");
            Some((
                conv(a.pp(0), 1024, 256, 3, 1, 1, 1, false)?,
                bn(a.pp(1), 256)?,
                conv(a.pp(4), 256, cfg.num_classes, 1, 1, 0, 1, true)?,
            ))
        } else {
            None
        };
        Ok(Self {
            cfg,
            backbone,
            aspp,
            head_conv,
            head_bn,
            classifier,
            aux,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DeepLabConfig {
        &self.cfg
    }

    /// The final 1x1 conv (`classifier.4`): weight `[classes, 256, 1, 1]`
    /// and bias `[classes]`.
    pub fn classifier(&self) -> (&Tensor, Option<&Tensor>) {
        (self.classifier.weight(), self.classifier.bias())
    }

    /// Everything before the final 1x1 conv (`classifier.4`): the 256-channel
    /// features at output stride 8. In eval mode this is a fixed function of
    /// the image (what fine-tuning only the last conv can cache).
    ///
    /// # Shapes
    /// `[N, 3, H, W]` -> `[N, 256, ceil(H/8), ceil(W/8)]`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, l4) = self.backbone.forward_t(x, train)?;
        let y = self.aspp.forward_t(&l4, train)?;
        Ok(self
            .head_bn
            .forward_conv_t(&self.head_conv, &y, train, true)?)
    }

    /// The final 1x1 conv and the resize to `out_h x out_w`.
    ///
    /// # Shapes
    /// `[N, 256, h, w]` -> `[N, num_classes, out_h, out_w]`.
    pub fn head(&self, features: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let y = self.classifier.forward(features)?;
        Ok(ops::resize_bilinear(&y, out_h, out_w, false)?)
    }

    /// Logits at the input resolution.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` (ImageNet-normalised) -> `[N, num_classes, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let f = self.features_t(x, train)?;
        self.head(&f, h, w)
    }

    /// Logits of the auxiliary FCN head on layer3 (when built).
    ///
    /// # Shapes
    /// `[N, 3, H, W]` -> `[N, num_classes, H, W]`.
    pub fn aux_forward_t(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        let Some((c1, b, c2)) = &self.aux else {
            return Ok(None);
        };
        let (_, _, h, w) = x.dims4()?;
        let (l3, _) = self.backbone.forward_t(x, train)?;
        let y = b.forward_conv_t(c1, &l3, train, true)?;
        let y = if train {
            candle_nn::ops::dropout(&y, 0.1)?
        } else {
            y
        };
        Ok(Some(ops::resize_bilinear(&c2.forward(&y)?, h, w, false)?))
    }
}

impl candle_nn::ModuleT for DeepLabV3 {
    /// [`DeepLabV3::forward_t`] behind candle-nn's trait.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(DeepLabV3::forward_t(self, x, train)?)
    }
}
