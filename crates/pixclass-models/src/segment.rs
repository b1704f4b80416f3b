//! The segmentation models behind one interface: a pretrained DeepLabV3
//! (ResNet-50/101 in torchvision's layout, or the offline MobileNetV2 VOC
//! model) split into its frozen part ([`SegBackbone::features_t`]: everything
//! before the final 1x1 conv) and a [`SegHead`] (the 1x1 conv + bilinear
//! resize) that fine-tuning replaces (SPEC §B.2).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::deeplab::{DeepLabConfig, DeepLabV3, ResNetDepth};
use crate::error::{ModelError, Result};
use crate::init::seeded_var_builder;
use crate::layers::{Conv2d, Conv2dConfig};
use crate::mobilenet::{self, MobileNetV2DeepLab};
use crate::weights::{expected_tensors, read_tensors, validate};
use pixclass_ops as ops;

/// The segmentation models pixclass knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SegModelKind {
    /// torchvision `deeplabv3_resnet101` (SPEC §B.2).
    Deeplabv3Resnet101,
    /// torchvision `deeplabv3_resnet50`.
    Deeplabv3Resnet50,
    /// TensorFlow's DeepLabV3-MobileNetV2 (VOC), shipped in `assets/`.
    Deeplabv3Mobilenetv2Voc,
}

impl SegModelKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SegModelKind::Deeplabv3Resnet101 => "deeplabv3-resnet101",
            SegModelKind::Deeplabv3Resnet50 => "deeplabv3-resnet50",
            SegModelKind::Deeplabv3Mobilenetv2Voc => "deeplabv3-mobilenetv2-voc",
        }
    }

    /// The input side the pretrained model was made for: 257 for
    /// TensorFlow's MobileNetV2 VOC model, 520 for torchvision's ResNets
    /// (what `segment predict --model` feeds them).
    pub fn native_size(self) -> u32 {
        match self {
            SegModelKind::Deeplabv3Mobilenetv2Voc => 257,
            SegModelKind::Deeplabv3Resnet101 | SegModelKind::Deeplabv3Resnet50 => 520,
        }
    }

    /// The input side fine-tuning and zero-shot evaluation use by default:
    /// the native 257 for the MobileNet model; the study's 224 for the
    /// ResNets (the reference's protocol; 520 is their native size, used by
    /// `segment predict --model`).
    pub fn finetune_size(self) -> u32 {
        match self {
            SegModelKind::Deeplabv3Mobilenetv2Voc => 257,
            SegModelKind::Deeplabv3Resnet101 | SegModelKind::Deeplabv3Resnet50 => 224,
        }
    }

    /// The registered weights name used when none is given (`None`: the
    /// embedded weights).
    pub fn default_weights(self) -> Option<&'static str> {
        match self {
            SegModelKind::Deeplabv3Resnet101 => Some("deeplabv3-resnet101-coco"),
            SegModelKind::Deeplabv3Resnet50 => Some("deeplabv3-resnet50-coco"),
            SegModelKind::Deeplabv3Mobilenetv2Voc => None,
        }
    }
}

/// A pretrained DeepLabV3 with its own 21-class head.
pub enum SegBackbone {
    /// ResNet backbone, torchvision layout.
    ResNet(Box<DeepLabV3>),
    /// MobileNetV2 (VOC), BatchNorm folded.
    MobileNet(Box<MobileNetV2DeepLab>),
}

/// Loads a torchvision DeepLabV3-ResNet checkpoint (`.pth` or
/// `.safetensors`), checking every tensor; the class count and the aux head
/// follow the file.
pub fn load_resnet(path: &Path, depth: ResNetDepth, device: &Device) -> Result<DeepLabV3> {
    let found = read_tensors(path, device)?;
    let num_classes = found
        .get("classifier.4.weight")
        .map(|t| t.dim(0))
        .transpose()?
        .ok_or_else(|| ModelError::Weights {
            path: path.to_path_buf(),
            reason: "missing tensor classifier.4.weight: not a torchvision DeepLabV3 checkpoint"
                .into(),
        })?;
    let cfg = DeepLabConfig {
        depth,
        num_classes,
        aux: found.keys().any(|k| k.starts_with("aux_classifier.")),
    };
    let expected = expected_tensors(|vb| DeepLabV3::new(cfg, vb).map(|_| ()))?;
    validate(path, &expected, &found, &[])?;
    DeepLabV3::new(cfg, VarBuilder::from_tensors(found, DType::F32, device))
}

/// Loads a DeepLabV3-ResNet checkpoint into a model with `cfg.num_classes`
/// classes: the backbone (everything but `classifier.4` and
/// `aux_classifier.4`) must match; those two heads are re-initialised from
/// `seed` (PyTorch's default init) when their class count differs.
pub fn load_resnet_with_classes(
    path: &Path,
    cfg: DeepLabConfig,
    seed: u64,
    device: &Device,
) -> Result<DeepLabV3> {
    let mut found = read_tensors(path, device)?;
    let heads = ["classifier.4.", "aux_classifier.4."];
    let expected = expected_tensors(|vb| DeepLabV3::new(cfg, vb).map(|_| ()))?;
    let found_aux = found.keys().any(|k| k.starts_with("aux_classifier."));
    if found_aux && !cfg.aux {
        found.retain(|k, _| !k.starts_with("aux_classifier."));
    }
    validate(path, &expected, &found, &heads)?;
    let fresh = VarMap::new();
    DeepLabV3::new(cfg, seeded_var_builder(&fresh, seed, DType::F32, device))?;
    let fresh = fresh
        .data()
        .lock()
        .map_err(|_| ModelError::Config("varmap poisoned".into()))?
        .clone();
    for (name, shape) in &expected {
        if heads.iter().any(|h| name.starts_with(h)) {
            let keep = found
                .get(name)
                .is_some_and(|t| t.dims() == shape.as_slice());
            if !keep {
                if let Some(v) = fresh.get(name) {
                    found.insert(name.clone(), v.as_tensor().clone());
                }
            }
        }
    }
    DeepLabV3::new(cfg, VarBuilder::from_tensors(found, DType::F32, device))
}

impl SegBackbone {
    /// Loads `kind` with weights from `path` (`None`: MobileNet's embedded
    /// weights; a ResNet needs a file).
    pub fn load(kind: SegModelKind, path: Option<&Path>, device: &Device) -> Result<Self> {
        Ok(match kind {
            SegModelKind::Deeplabv3Mobilenetv2Voc => {
                let tensors = match path {
                    Some(p) => mobilenet::load_tflite_weights(p, device)?,
                    None => mobilenet::embedded_weights(device)?,
                };
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                SegBackbone::MobileNet(Box::new(MobileNetV2DeepLab::new(
                    vb,
                    Some(mobilenet::VOC_LABELS.len()),
                )?))
            }
            SegModelKind::Deeplabv3Resnet101 | SegModelKind::Deeplabv3Resnet50 => {
                let depth = if kind == SegModelKind::Deeplabv3Resnet101 {
                    ResNetDepth::ResNet101
                } else {
                    ResNetDepth::ResNet50
                };
                let path = path.ok_or_else(|| {
                    ModelError::Config(format!(
                        "{} needs a weights file (`pixclass weights fetch {}` or --weights PATH)",
                        kind.name(),
                        kind.default_weights().unwrap_or_default()
                    ))
                })?;
                SegBackbone::ResNet(Box::new(load_resnet(path, depth, device)?))
            }
        })
    }

    /// Input normalisation `(x - mean) / std` for `x` in `[0, 1]`.
    pub fn normalisation(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            SegBackbone::ResNet(_) => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            SegBackbone::MobileNet(_) => (mobilenet::MEAN, mobilenet::STD),
        }
    }

    /// Whether the logits are resized with align_corners=True.
    pub fn align_corners(&self) -> bool {
        matches!(self, SegBackbone::MobileNet(_))
    }

    /// Channels of [`SegBackbone::features_t`].
    pub fn feature_channels(&self) -> usize {
        256
    }

    /// Whether train mode computes something else than eval mode (false for
    /// the MobileNet model: BatchNorm folded, no dropout).
    pub fn has_train_mode(&self) -> bool {
        matches!(self, SegBackbone::ResNet(_))
    }

    /// Everything before the final 1x1 conv. `train`: BatchNorm with batch
    /// statistics (updating running stats) and active dropout, like the
    /// reference's frozen layers (ResNet only).
    ///
    /// # Shapes
    /// `[N, 3, H, W]` normalised -> `[N, 256, ceil(H/8), ceil(W/8)]`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            SegBackbone::ResNet(m) => m.features_t(x, train),
            SegBackbone::MobileNet(m) => m.features(x),
        }
    }

    /// Rows `rows` of the model's own final 1x1 conv (the ResNets'
    /// `classifier.4`, the MobileNet's logits layer): weight
    /// `[rows.len(), 256, 1, 1]` and bias `[rows.len()]`, e.g. background
    /// and one VOC class to start a 2-class head from.
    pub fn classifier_rows(&self, rows: &[usize]) -> Result<(Tensor, Tensor)> {
        let (w, b) = match self {
            SegBackbone::ResNet(m) => {
                let (w, b) = m.classifier();
                let b = match b {
                    Some(b) => b.clone(),
                    None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
                };
                (w.clone(), b)
            }
            SegBackbone::MobileNet(m) => {
                let (w, b) = m.classifier().ok_or_else(|| {
                    ModelError::Config("this model was built without its logits layer".into())
                })?;
                (w.clone(), b.clone())
            }
        };
        let classes = w.dim(0)?;
        if let Some(&r) = rows.iter().find(|&&r| r >= classes) {
            return Err(ModelError::Config(format!(
                "class {r} is out of range: the pretrained head has {classes} classes"
            )));
        }
        let idx = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            w.device(),
        )?;
        Ok((w.index_select(&idx, 0)?, b.index_select(&idx, 0)?))
    }

    /// Logits of the model's own head (21 VOC classes for the pretrained
    /// weights), in eval mode.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` normalised -> `[N, classes, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            SegBackbone::ResNet(m) => m.forward_t(x, false),
            SegBackbone::MobileNet(m) => m.forward(x),
        }
    }
}

/// The replaceable head: an optional fixed per-channel standardisation of
/// the features, a 1x1 conv, and a bilinear resize to the input size.
#[derive(Debug, Clone)]
pub struct SegHead {
    conv: Conv2d,
    align_corners: bool,
    /// `(mean, std)`, `[1, C, 1, 1]` each: buffers, not trained.
    norm: Option<(Tensor, Tensor)>,
}

impl SegHead {
    /// A `in_c -> classes` 1x1 conv with bias under `vb` (`weight`, `bias`).
    /// With `standardise`, the features are first mapped to
    /// `(f - feature_mean) / feature_std` with two buffers under `vb`
    /// (identity until set, e.g. to the training set's statistics).
    pub fn new(
        in_c: usize,
        classes: usize,
        align_corners: bool,
        standardise: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let norm = if standardise {
            Some((
                vb.get_with_hints((1, in_c, 1, 1), "feature_mean", candle_nn::Init::Const(0.0))?,
                vb.get_with_hints((1, in_c, 1, 1), "feature_std", candle_nn::Init::Const(1.0))?,
            ))
        } else {
            None
        };
        let conv = Conv2d::new(in_c, classes, 1, Conv2dConfig::default(), vb)?;
        Ok(Self {
            conv,
            align_corners,
            norm,
        })
    }

    /// The 1x1 conv of the standardised features. The standardisation is
    /// folded into the weights (`W/s`, `b - Σ W·m/s`): the same function and
    /// gradients without touching the large feature tensor.
    fn conv_forward(&self, features: &Tensor) -> Result<Tensor> {
        let Some((m, s)) = &self.norm else {
            return Ok(self.conv.forward(features)?);
        };
        let (o, c) = (self.conv.weight().dim(0)?, self.conv.weight().dim(1)?);
        let w = self
            .conv
            .weight()
            .reshape((o, c))?
            .broadcast_div(&s.reshape((1, c))?)?;
        let shift = w.matmul(&m.reshape((c, 1))?)?.reshape(o)?;
        let b = match self.conv.bias() {
            Some(b) => (b - shift)?,
            None => shift.neg()?,
        };
        let w = w.reshape((o, c, 1, 1))?;
        Ok(ops::conv2d_bias(
            features,
            &w,
            Some(&b),
            (0, 0),
            (0, 0),
            1,
            1,
            1,
        )?)
    }

    /// Logits at `out_h x out_w`.
    ///
    /// # Shapes
    /// `[N, C, h, w]` -> `[N, classes, out_h, out_w]`.
    pub fn forward(&self, features: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let y = self.conv_forward(features)?;
        Ok(ops::resize_bilinear(&y, out_h, out_w, self.align_corners)?)
    }

    /// For a 2-class head: the margin `logit_1 - logit_0` at `out_h x out_w`.
    /// Conv and resize are linear, so this is the difference of
    /// [`SegHead::forward`]'s two channels, computed at the low resolution
    /// and resized once; argmax is `margin > 0`.
    ///
    /// # Shapes
    /// `[N, C, h, w]` -> `[N, out_h, out_w]`.
    pub fn forward_margin(&self, features: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let y = self.conv_forward(features)?;
        if y.dim(1)? != 2 {
            return Err(ModelError::Config(format!(
                "forward_margin needs a 2-class head, this one has {}",
                y.dim(1)?
            )));
        }
        let d = (y.narrow(1, 1, 1)? - y.narrow(1, 0, 1)?)?;
        Ok(ops::resize_bilinear(&d, out_h, out_w, self.align_corners)?.squeeze(1)?)
    }
}
