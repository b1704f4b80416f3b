//! DeepLabV3 with a MobileNetV2 backbone (depth multiplier 0.5, output
//! stride 8): TensorFlow's `deeplabv3_257_mv_gpu` sample model, trained on
//! PASCAL VOC (21 classes), ported to candle.
//!
//! Parameters keep their TFLite names (`MobilenetV2/expanded_conv_3/expand/
//! weights`, `..._bias`), in PyTorch layouts: `[O, I, KH, KW]` for convs and
//! `[C, 1, KH, KW]` for depthwise convs. [`load_tflite_weights`] converts the
//! file's TFLite layouts (`[O, KH, KW, I]`, `[1, KH, KW, C]`) at load time.
//!
//! Differences from torchvision's models that matter: TF "SAME" padding
//! (the odd pixel goes after, and depends on the input size), BatchNorm
//! folded into conv biases (so train and eval mode are the same function),
//! ReLU6 activations, a light ASPP (image pooling + 1x1, concat, 1x1
//! projection to 256) and align_corners=True bilinear resizing. Input:
//! RGB scaled to `[-1, 1]` (`(x - 0.5) / 0.5` for `x` in `[0, 1]`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};
use pixclass_ops::{self as ops, Pad};

/// Name prefix of the backbone's tensors.
const BACKBONE: &str = "MobilenetV2";
/// Name of the final 1x1 conv (the layer fine-tuning replaces).
pub const LOGITS: &str = "logits/semantic";
/// Channels of the features before the final 1x1 conv.
pub const FEATURE_CHANNELS: usize = 256;
/// Input normalisation: `(x - MEAN) / STD` per RGB channel, `x` in `[0, 1]`.
pub const MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// See [`MEAN`].
pub const STD: [f32; 3] = [0.5, 0.5, 0.5];

/// TensorFlow's "SAME" padding of one dimension: `(before, after)` and the
/// output size `ceil(n / stride)`.
pub fn tf_same_padding(n: usize, k: usize, stride: usize, dilation: usize) -> (Pad, usize) {
    let span = (k - 1) * dilation + 1;
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + span).saturating_sub(n);
    ((total / 2, total - total / 2), out)
}

/// Activation fused into a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    /// The activation's output interval.
    fn bounds(self) -> (f64, f64) {
        match self {
            Act::None => ops::NO_CLAMP,
            Act::Relu => (0.0, f64::INFINITY),
            Act::Relu6 => (0.0, 6.0),
        }
    }
}

/// A conv (dense or depthwise) with bias, TF "SAME" padding and a fused
/// activation.
#[derive(Debug, Clone)]
struct TfConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    dilation: usize,
    depthwise: bool,
    act: Act,
}

impl TfConv {
    /// Dense conv `name/weights` `[out, in, k, k]` + `name/Conv2D_bias`.
    fn dense(
        vb: &VarBuilder,
        name: &str,
        (in_c, out_c, k): (usize, usize, usize),
        stride: usize,
        act: Act,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_c, in_c, k, k), &format!("{name}/weights"))?,
            bias: vb.get(out_c, &format!("{name}/Conv2D_bias"))?,
            stride,
            dilation: 1,
            depthwise: false,
            act,
        })
    }

    /// Depthwise 3x3 conv `name/depthwise_weights` `[c, 1, 3, 3]`.
    fn depthwise(
        vb: &VarBuilder,
        name: &str,
        c: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c, 1, 3, 3), &format!("{name}/depthwise_weights"))?,
            bias: vb.get(c, &format!("{name}/depthwise_bias"))?,
            stride,
            dilation,
            depthwise: true,
            act: Act::Relu6,
        })
    }

    /// # Shapes
    /// `[N, C_in, H, W]` -> `[N, C_out, ceil(H / stride), ceil(W / stride)]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let k = self.weight.dim(2)?;
        let (ph, _) = tf_same_padding(h, k, self.stride, self.dilation);
        let (pw, _) = tf_same_padding(w, k, self.stride, self.dilation);
        // The bias and the activation fused into the convolution kernel.
        let (w, b, bounds) = (&self.weight, &self.bias, self.act.bounds());
        let (s, d) = (self.stride, self.dilation);
        Ok(if self.depthwise {
            ops::depthwise_conv2d_bias_clamp(x, w, b, ph, pw, s, d, bounds)?
        } else {
            ops::conv2d_bias_clamp(x, w, b, ph, pw, s, d, 1, bounds)?
        })
    }
}

/// One MobileNetV2 inverted residual block: optional 1x1 expansion (ReLU6),
/// 3x3 depthwise (ReLU6), linear 1x1 projection, identity shortcut when the
/// shapes agree.
#[derive(Debug, Clone)]
struct Block {
    expand: Option<TfConv>,
    depthwise: TfConv,
    project: TfConv,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&y)?)?;
        Ok(if self.residual { (y + x)? } else { y })
    }
}

/// Per block: (expanded channels, output channels, depthwise stride,
/// depthwise dilation). Block 0 has no expansion layer.
const BLOCKS: [(usize, usize, usize, usize); 17] = [
    (16, 8, 1, 1),
    (48, 12, 2, 1),
    (72, 12, 1, 1),
    (72, 16, 2, 1),
    (96, 16, 1, 1),
    (96, 16, 1, 1),
    (96, 32, 1, 1),
    (192, 32, 1, 2),
    (192, 32, 1, 2),
    (192, 32, 1, 2),
    (192, 48, 1, 2),
    (288, 48, 1, 2),
    (288, 48, 1, 2),
    (288, 80, 1, 2),
    (480, 80, 1, 4),
    (480, 80, 1, 4),
    (480, 160, 1, 4),
];

/// DeepLabV3-MobileNetV2 (VOC). See the module documentation.
#[derive(Debug, Clone)]
pub struct MobileNetV2DeepLab {
    stem: TfConv,
    blocks: Vec<Block>,
    image_pooling: TfConv,
    aspp0: TfConv,
    projection: TfConv,
    logits: Option<TfConv>,
    num_classes: usize,
}

impl MobileNetV2DeepLab {
    /// Builds the model from `vb` (tensors under their TFLite names, in
    /// PyTorch layouts; see [`load_tflite_weights`]). With `num_classes` =
    /// `Some(k)` the final `logits/semantic` conv is loaded with `k`
    /// outputs; with `None` it is left out (for a replacement head).
    pub fn new(vb: VarBuilder, num_classes: Option<usize>) -> Result<Self> {
        // TFLite names use '/', so no `vb.pp` (which joins with '.').
        let b = &vb;
        let stem = TfConv::dense(b, &format!("{BACKBONE}/Conv"), (3, 16, 3), 2, Act::Relu6)?;
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        let mut in_c = 16;
        for (i, &(hidden, out_c, stride, dilation)) in BLOCKS.iter().enumerate() {
            let name = if i == 0 {
                format!("{BACKBONE}/expanded_conv")
            } else {
                format!("{BACKBONE}/expanded_conv_{i}")
            };
            let expand = if i == 0 {
                None
            } else {
                Some(TfConv::dense(
                    b,
                    &format!("{name}/expand"),
                    (in_c, hidden, 1),
                    1,
                    Act::Relu6,
                )?)
            };
            let depthwise =
                TfConv::depthwise(b, &format!("{name}/depthwise"), hidden, stride, dilation)?;
            let project = TfConv::dense(
                b,
                &format!("{name}/project"),
                (hidden, out_c, 1),
                1,
                Act::None,
            )?;
            blocks.push(Block {
                expand,
                depthwise,
                project,
                residual: stride == 1 && in_c == out_c,
            });
            in_c = out_c;
        }
        let image_pooling = TfConv::dense(&vb, "image_pooling", (in_c, 256, 1), 1, Act::Relu)?;
        let aspp0 = TfConv::dense(&vb, "aspp0", (in_c, 256, 1), 1, Act::Relu)?;
        let projection = TfConv::dense(
            &vb,
            "concat_projection",
            (512, FEATURE_CHANNELS, 1),
            1,
            Act::Relu,
        )?;
        let logits = match num_classes {
            Some(0) => return Err(ModelError::Config("num_classes must be >= 1".into())),
            Some(k) => Some(TfConv::dense(
                &vb,
                LOGITS,
                (FEATURE_CHANNELS, k, 1),
                1,
                Act::None,
            )?),
            None => None,
        };
        Ok(Self {
            stem,
            blocks,
            image_pooling,
            aspp0,
            projection,
            logits,
            num_classes: num_classes.unwrap_or(0),
        })
    }

    /// The pretrained VOC model from the embedded weights (21 classes, or
    /// without its logits layer when `with_logits` is false).
    pub fn pretrained(device: &Device, with_logits: bool) -> Result<Self> {
        let tensors = embedded_weights(device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(vb, with_logits.then_some(VOC_LABELS.len()))
    }

    /// Number of output classes of the built-in head (0 when left out).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Everything before the final 1x1 conv: 256-channel features at output
    /// stride 8. BatchNorm is folded, so there is no train mode: this is a
    /// fixed function of the image.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` (RGB in `[-1, 1]`) -> `[N, 256, ceil(H/8), ceil(W/8)]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            return Err(ModelError::InputShape {
                model: "deeplabv3-mobilenetv2-voc".into(),
                shape: x.dims().to_vec(),
                reason: "expected 3 (RGB) channels".into(),
            });
        }
        let mut y = self.stem.forward(x)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        let (_, _, h, w) = y.dims4()?;
        // Image pooling: global mean, 1x1 conv + ReLU, resized back
        // (align_corners from 1x1 = broadcast).
        let pooled = y.mean_keepdim(3)?.mean_keepdim(2)?;
        let pooled = self
            .image_pooling
            .forward(&pooled)?
            .broadcast_as(((y.dim(0)?), 256, h, w))?
            .contiguous()?;
        let a = self.aspp0.forward(&y)?;
        let cat = Tensor::cat(&[&pooled, &a], 1)?;
        self.projection.forward(&cat)
    }

    /// The logits layer (`logits/semantic`): weight `[classes, 256, 1, 1]`
    /// and bias `[classes]` (`None` when built without it).
    pub fn classifier(&self) -> Option<(&Tensor, &Tensor)> {
        self.logits.as_ref().map(|l| (&l.weight, &l.bias))
    }

    /// The built-in 1x1 classifier and the align_corners=True resize.
    ///
    /// # Shapes
    /// `[N, 256, h, w]` -> `[N, num_classes, out_h, out_w]`.
    pub fn head(&self, features: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let Some(logits) = &self.logits else {
            return Err(ModelError::Config(
                "this model was built without its logits layer (num_classes None)".into(),
            ));
        };
        let y = logits.forward(features)?;
        Ok(ops::resize_bilinear(&y, out_h, out_w, true)?)
    }

    /// Logits at the input resolution.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` (RGB in `[-1, 1]`) -> `[N, num_classes, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.head(&self.features(x)?, h, w)
    }
}

/// The pretrained weights, shipped in `assets/pretrained/` (TFLite names and
/// layouts, byte-identical to the file derived from the original `.tflite`;
/// Apache-2.0, TensorFlow model garden).
pub const EMBEDDED_WEIGHTS: &[u8] =
    include_bytes!("../../../assets/pretrained/deeplabv3_mobilenetv2_voc.safetensors");

/// The 21 PASCAL VOC class names in the model's output order (13 = horse).
pub const VOC_LABELS: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
];

/// Reads a weights file of this model (TFLite names and layouts) and
/// returns its tensors in PyTorch layouts, ready for
/// `VarBuilder::from_tensors`.
pub fn load_tflite_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let raw =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let raw: HashMap<String, Tensor> = raw.into_iter().collect();
    crate::weights::check_finite(path, &raw)?;
    tflite_to_torch_layouts(raw, device)
}

/// [`load_tflite_weights`] of the embedded weights.
pub fn embedded_weights(device: &Device) -> Result<HashMap<String, Tensor>> {
    let raw = candle_core::safetensors::load_buffer(EMBEDDED_WEIGHTS, &Device::Cpu)?;
    tflite_to_torch_layouts(raw, device)
}

/// Converts TFLite layouts to PyTorch's and moves the weights to `device`;
/// drops the graph's non-weight constants (resize sizes). `raw` is on the
/// CPU: those constants are i32, which CUDA cannot cast (candle has no
/// i32 cast kernel), and they are never needed on the device.
fn tflite_to_torch_layouts(
    raw: HashMap<String, Tensor>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(raw.len());
    for (name, t) in raw {
        let permutation = if name.ends_with("/depthwise_weights") {
            Some((3, 0, 1, 2)) // [1, KH, KW, C] -> [C, 1, KH, KW]
        } else if name.ends_with("/weights") {
            Some((0, 3, 1, 2)) // [O, KH, KW, I] -> [O, I, KH, KW]
        } else if name.ends_with("_bias") {
            None
        } else {
            continue;
        };
        let t = t.to_dtype(DType::F32)?;
        let t = match permutation {
            Some(p) => t.permute(p)?.contiguous()?,
            None => t,
        };
        out.insert(name, t.to_device(device)?);
    }
    Ok(out)
}
