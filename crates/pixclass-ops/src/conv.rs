//! Convolutions: 2-D (any per-side padding, stride, dilation, groups),
//! transposed and depthwise, with the layer's bias fused in on the CPU.

use candle_core::{Result, Tensor};

use crate::elementwise::{
    add_channel_bias, add_channel_bias_clamp, check_bounds, clamp_portable, NO_CLAMP,
};
use crate::{cpu_float, kernels};

/// Padding of one spatial dimension: `(before, after)` zeros.
pub type Pad = (usize, usize);

/// PyTorch's `padding="same"` for a stride-1 convolution: total
/// `dilation·(k-1)`, the odd one extra after.
pub fn same_padding(k: usize, dilation: usize) -> Pad {
    let total = dilation * (k - 1);
    (total / 2, total - total / 2)
}

/// 2-D convolution (cross-correlation like PyTorch) with per-side padding,
/// stride, dilation and groups, whose backward works for every input shape.
///
/// On the CPU (f32/f64, groups 1) this runs the GEMM kernels of
/// the GEMM kernels; elsewhere [`conv2d_portable`].
///
/// # Shapes
/// `x`: `[N, C_in, H, W]`, `weight`: `[C_out, C_in / groups, KH, KW]` ->
/// `[N, C_out, (H + pads - d·(KH-1) - 1) / s + 1, ...]`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    conv2d_bias(x, weight, None, pad_h, pad_w, stride, dilation, groups)
}

/// [`conv2d`] plus an optional per-output-channel bias: fused into the
/// convolution kernel on the CPU (groups 1), [`add_channel_bias`] elsewhere.
///
/// # Shapes
/// As [`conv2d`]; `bias` `[O]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bias(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let bias = bias.map(|b| (b, NO_CLAMP));
    conv2d_epilogue(x, weight, bias, pad_h, pad_w, stride, dilation, groups)
}

/// [`conv2d_bias`] with the layer's activation fused in:
/// `clamp(conv(x) + bias, lo, hi)` (`(0, inf)` a ReLU, `(0, 6)` ReLU6). On
/// the CPU (groups 1) the clamp is one in-place pass over the kernel's
/// output, instead of a separate op that reads it and writes a new tensor;
/// the gradient passes where `lo < y < hi` (PyTorch's `hardtanh` rule).
/// Elsewhere [`conv2d_portable`] and [`add_channel_bias_clamp`].
///
/// # Shapes
/// As [`conv2d`]; `bias` `[O]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bias_clamp(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    groups: usize,
    (lo, hi): (f64, f64),
) -> Result<Tensor> {
    check_bounds((lo, hi), "conv2d_bias_clamp")?;
    let bias = Some((bias, (lo, hi)));
    conv2d_epilogue(x, weight, bias, pad_h, pad_w, stride, dilation, groups)
}

/// [`conv2d_bias_clamp`] of the channel concatenation `[x, tail]` whose
/// second part is a constant (needs no gradient: a UNet's skip connection
/// from its input image), without building the concatenation:
/// `clamp(conv(x, w_x) + bias + conv(tail, w_tail), lo, hi)`, `w_x` and
/// `w_tail` the weight's first `C_x` and last `C_tail` input channels. On
/// the CPU (f32/f64) one op whose backward gives `x` its gradient and the
/// weight both parts' filter gradients, so autograd holds one output-sized
/// gradient instead of three; elsewhere the sum of two [`conv2d_bias`]
/// calls. A tracked `tail`, or one whose batch or size differs from `x`'s,
/// is an error.
///
/// # Shapes
/// `x` `[N, C_x, H, W]`, `tail` `[N, C_tail, H, W]`, `weight` `[O, C_x +
/// C_tail, KH, KW]`, `bias` `[O]` -> as [`conv2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bias_clamp_const_tail(
    x: &Tensor,
    tail: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    (lo, hi): (f64, f64),
) -> Result<Tensor> {
    check_bounds((lo, hi), "conv2d_bias_clamp_const_tail")?;
    let (n, cx, h, w) = x.dims4()?;
    let (tn, ct, th, tw) = tail.dims4()?;
    if tail.track_op() {
        candle_core::bail!(
            "conv2d_bias_clamp_const_tail: the tail {:?} needs a gradient",
            tail.dims()
        );
    }
    if (tn, th, tw) != (n, h, w) || weight.rank() != 4 || weight.dim(1)? != cx + ct {
        candle_core::bail!(
            "conv2d_bias_clamp_const_tail: x {:?} and tail {:?} do not make the weight's {:?} input channels",
            x.dims(),
            tail.dims(),
            weight.dims()
        );
    }
    let same_dtype = [tail, weight, bias].iter().all(|t| t.dtype() == x.dtype());
    if cpu_float(x) && same_dtype && tail.device().same_device(x.device()) {
        ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
        let pad = (pad_h, pad_w);
        return kernels::conv::conv2d_bias_tail(
            (x, tail),
            weight,
            bias,
            pad,
            stride,
            dilation,
            (lo, hi),
        );
    }
    let head = conv2d_bias(
        x,
        &weight.narrow(1, 0, cx)?,
        Some(bias),
        pad_h,
        pad_w,
        stride,
        dilation,
        1,
    )?;
    let rest = conv2d(
        tail,
        &weight.narrow(1, cx, ct)?,
        pad_h,
        pad_w,
        stride,
        dilation,
        1,
    )?;
    clamp_portable((head + rest)?, (lo, hi))
}

/// A convolution (groups 1) in front of a BatchNorm
/// ([`batch_norm_train_after_conv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvSpec {
    /// [`conv2d`] with these paddings, stride and dilation.
    Conv2d {
        /// Rows of zeros above and below.
        pad_h: Pad,
        /// Columns of zeros left and right.
        pad_w: Pad,
        /// Stride.
        stride: usize,
        /// Dilation.
        dilation: usize,
    },
    /// [`conv_transpose2d`] with these settings.
    ConvTranspose2d {
        /// Padding removed from each side.
        padding: usize,
        /// Extra rows/columns on one side.
        output_padding: usize,
        /// Stride.
        stride: usize,
        /// Dilation.
        dilation: usize,
    },
}

impl ConvSpec {
    /// The convolution of `x` with `weight`, plus `bias` per output channel
    /// ([`conv2d_bias`] or [`conv_transpose2d_bias`]).
    pub fn apply(self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Conv2d {
                pad_h,
                pad_w,
                stride,
                dilation,
            } => conv2d_bias(x, weight, bias, pad_h, pad_w, stride, dilation, 1),
            Self::ConvTranspose2d {
                padding,
                output_padding,
                stride,
                dilation,
            } => conv_transpose2d_bias(x, weight, bias, padding, output_padding, stride, dilation),
        }
    }
}

/// [`crate::batch_norm_train`] of `conv.apply(x, weight, Some(bias))`,
/// resampled first when `resample` says (a block of a colourization net):
/// the same values, statistics and gradients. On the CPU (f32/f64, with `γ`
/// and `β`, a pooling window that tiles the convolution's output) one
/// autograd node: the intermediate tensors are computed without nodes of
/// their own, and the backward goes from the normalisation's kernel
/// (through the resampling's) straight into the convolution's, sparing
/// autograd output-sized gradients to zero and accumulate. Otherwise the
/// ops one after the other.
///
/// # Shapes
/// `x` and `weight` as `conv` takes them, `bias` `[C_out]` -> the
/// (resampled) convolution's `[N, C_out, H', W']` (and `[C_out]` statistics).
pub fn batch_norm_train_after_conv(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    conv: ConvSpec,
    resample: Option<crate::Resample>,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<crate::BatchNormTrain> {
    let one_dtype = [weight, bias].iter().all(|t| t.dtype() == x.dtype());
    let apart = || -> Result<crate::BatchNormTrain> {
        let y = conv.apply(x, weight, Some(bias))?;
        let y = match resample {
            Some(how) => how.apply(&y)?,
            None => y,
        };
        crate::batch_norm_train(&y, affine, eps, relu)
    };
    let (Some(affine), true) = (affine, cpu_float(x) && one_dtype) else {
        return apart();
    };
    let kernel = match conv {
        ConvSpec::Conv2d {
            pad_h,
            pad_w,
            stride,
            dilation,
        } => {
            ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
            kernels::conv::conv2d_kernel(x, weight, (pad_h, pad_w), stride, dilation)?
        }
        ConvSpec::ConvTranspose2d {
            padding,
            output_padding,
            stride,
            dilation,
        } => kernels::conv::conv_transpose2d_kernel(
            x,
            weight,
            padding,
            output_padding,
            stride,
            dilation,
        )?,
    };
    let (n, c, ho, wo) = kernel.shape().dims4()?;
    let (ho, wo) = match resample.map(|how| how.out_size(ho, wo)) {
        Some(Some(size)) => size,
        Some(None) => return apart(),
        None => (ho, wo),
    };
    crate::norm::check_dims(&[n, c, ho, wo])?;
    let (y, mean, var) = kernels::conv_bn::conv_batch_norm_train(
        (x, weight, bias),
        kernel,
        resample,
        affine,
        eps,
        relu,
    )?;
    let dev = x.device();
    Ok(crate::BatchNormTrain {
        y,
        mean: Tensor::new(mean.as_slice(), dev)?,
        var: Tensor::new(var.as_slice(), dev)?,
    })
}

/// [`conv2d`] then, when there is a bias, `clamp(y + bias, lo, hi)`: fused
/// into the kernel on the CPU (groups 1), [`add_channel_bias_clamp`]
/// elsewhere.
#[allow(clippy::too_many_arguments)]
fn conv2d_epilogue(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<(&Tensor, (f64, f64))>,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    if cpu_float(x) && groups == 1 && bias.is_none_or(|(b, _)| b.dtype() == x.dtype()) {
        return kernels::conv::conv2d(x, weight, bias, (pad_h, pad_w), stride, dilation);
    }
    let y = conv2d_portable(x, weight, pad_h, pad_w, stride, dilation, groups)?;
    match bias {
        Some((b, (lo, hi))) => add_channel_bias_clamp(&y, b, lo, hi),
        None => Ok(y),
    }
}

/// [`depthwise_conv2d`] plus a per-channel bias and the layer's activation,
/// `clamp(conv(x) + bias, lo, hi)`: on the CPU applied to each output plane
/// inside the kernel while it is in cache (MobileNetV2's depthwise ReLU6);
/// elsewhere [`depthwise_conv2d_portable`] and [`add_channel_bias_clamp`].
/// The gradient passes where `lo < y < hi`.
///
/// # Shapes
/// As [`depthwise_conv2d`]; `bias` `[C]`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_bias_clamp(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    bounds: (f64, f64),
) -> Result<Tensor> {
    check_bounds(bounds, "depthwise_conv2d_bias_clamp")?;
    let g = depthwise_geometry(x, weight, pad_h, pad_w, stride, dilation)?;
    if cpu_float(x) && x.dtype() == weight.dtype() && x.dtype() == bias.dtype() {
        let op = kernels::depthwise::DepthwiseBias { g, bounds };
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    let y = depthwise_conv2d_portable(x, weight, pad_h, pad_w, stride, dilation)?;
    add_channel_bias_clamp(&y, bias, bounds.0, bounds.1)
}

/// Depthwise 2-D convolution (groups = channels, one filter per channel).
/// CPU (f32/f64): the direct kernel [`kernels::depthwise::Depthwise`];
/// elsewhere [`depthwise_conv2d_portable`].
///
/// # Shapes
/// `x`: `[N, C, H, W]`, `weight`: `[C, 1, KH, KW]` ->
/// `[N, C, (H + pads - d·(KH-1) - 1) / s + 1, ...]`.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let g = depthwise_geometry(x, weight, pad_h, pad_w, stride, dilation)?;
    if cpu_float(x) && x.dtype() == weight.dtype() {
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, kernels::depthwise::Depthwise(g));
    }
    depthwise_conv2d_portable(x, weight, pad_h, pad_w, stride, dilation)
}

/// The kernels' geometry of a depthwise convolution, after checking that
/// the weight fits the input.
fn depthwise_geometry(
    x: &Tensor,
    weight: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
) -> Result<kernels::Geometry> {
    let (n, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 {
        candle_core::bail!(
            "depthwise conv: weight {:?} does not fit input {:?} (expected [{c}, 1, KH, KW])",
            weight.dims(),
            x.dims()
        );
    }
    let e = ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    Ok(kernels::Geometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        stride,
        dilation,
        pad_top: pad_h.0,
        pad_left: pad_w.0,
        ho: (e.ph - e.span_h) / stride + 1,
        wo: (e.pw - e.span_w) / stride + 1,
    })
}

/// [`depthwise_conv2d`] from shifted slices of candle primitives, so its
/// backward is exact on every device.
///
/// # Shapes
/// As [`depthwise_conv2d`].
pub fn depthwise_conv2d_portable(
    x: &Tensor,
    weight: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    let e = ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    let xp = x
        .pad_with_zeros(2, pad_h.0, pad_h.1)?
        .pad_with_zeros(3, pad_w.0, pad_w.1)?;
    let ho = (e.ph - e.span_h) / stride + 1;
    let wo = (e.pw - e.span_w) / stride + 1;
    // Stride > 1: gather the rows/columns a tap reads (index_select needs a
    // contiguous input, which the padded tensor is).
    let taps = |start: usize, len: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..len).map(|r| (start + r * stride) as u32).collect();
        Tensor::new(idx, x.device())
    };
    let mut acc: Option<Tensor> = None;
    for i in 0..kh {
        for j in 0..kw {
            let s = if stride == 1 {
                xp.narrow(2, i * dilation, ho)?
                    .narrow(3, j * dilation, wo)?
            } else {
                xp.index_select(&taps(i * dilation, ho)?, 2)?
                    .index_select(&taps(j * dilation, wo)?, 3)?
            };
            let w = weight
                .narrow(2, i, 1)?
                .narrow(3, j, 1)?
                .reshape((1, c, 1, 1))?;
            let term = s.broadcast_mul(&w)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("depthwise conv: empty kernel".into()))
}

/// Kernel spans and padded input sizes of a convolution, checked to fit.
struct ConvExtent {
    kh: usize,
    kw: usize,
    span_h: usize,
    span_w: usize,
    ph: usize,
    pw: usize,
}

impl ConvExtent {
    fn new(x: &Tensor, weight: &Tensor, pad_h: Pad, pad_w: Pad, dilation: usize) -> Result<Self> {
        let (_, _, h, w) = x.dims4()?;
        let (_, _, kh, kw) = weight.dims4()?;
        let e = Self {
            kh,
            kw,
            span_h: dilation * (kh - 1) + 1,
            span_w: dilation * (kw - 1) + 1,
            ph: h + pad_h.0 + pad_h.1,
            pw: w + pad_w.0 + pad_w.1,
        };
        if e.ph < e.span_h || e.pw < e.span_w {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} (dilation {dilation}) does not fit the padded input {}x{}",
                e.ph,
                e.pw
            );
        }
        Ok(e)
    }
}

/// [`conv2d`] through candle's own convolution (used on CUDA and Metal, and
/// for grouped convolutions).
///
/// candle's backward derives the transposed conv's output padding from the
/// height only; when height and width differ in remainder it fails. Here the
/// rows and columns that no output reads are cut off first (they get a zero
/// gradient, which is exact), so the remainder is zero in both dimensions.
///
/// # Shapes
/// As [`conv2d`].
pub fn conv2d_portable(
    x: &Tensor,
    weight: &Tensor,
    pad_h: Pad,
    pad_w: Pad,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let ConvExtent {
        kh,
        kw,
        span_h,
        span_w,
        ph,
        pw,
    } = ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    let rem_h = (ph - span_h) % stride;
    let rem_w = (pw - span_w) % stride;
    let symmetric = pad_h.0 == pad_h.1 && pad_w.0 == pad_w.1 && pad_h.0 == pad_w.0;
    if symmetric && rem_h == rem_w && kh == kw {
        return x.conv2d(weight, pad_h.0, stride, dilation, groups);
    }
    // Explicit zero padding, then drop what no output window reaches, so the
    // remainder is zero in both dimensions.
    let mut xp = x.clone();
    if pad_h != (0, 0) {
        xp = xp.pad_with_zeros(2, pad_h.0, pad_h.1)?;
    }
    if pad_w != (0, 0) {
        xp = xp.pad_with_zeros(3, pad_w.0, pad_w.1)?;
    }
    if rem_h > 0 {
        xp = xp.narrow(2, 0, ph - rem_h)?;
    }
    if rem_w > 0 {
        xp = xp.narrow(3, 0, pw - rem_w)?;
    }
    xp.conv2d(weight, 0, stride, dilation, groups)
}

/// Transposed 2-D convolution (PyTorch's `ConvTranspose2d`, groups 1).
///
/// # Shapes
/// `x`: `[N, C_in, H, W]`, `weight`: `[C_in, C_out, K, K]` ->
/// `[N, C_out, (H-1)·s - 2p + d·(K-1) + op + 1, ...]`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    conv_transpose2d_bias(x, weight, None, padding, output_padding, stride, dilation)
}

/// [`conv_transpose2d`] plus an optional per-output-channel bias, fused into
/// the kernel on the CPU.
///
/// # Shapes
/// As [`conv_transpose2d`]; `bias` `[Cout]`.
pub fn conv_transpose2d_bias(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    if cpu_float(x) && bias.is_none_or(|b| b.dtype() == x.dtype()) {
        return kernels::conv::conv_transpose2d(
            x,
            weight,
            bias,
            padding,
            output_padding,
            stride,
            dilation,
        );
    }
    let y = x.conv_transpose2d(weight, padding, output_padding, stride, dilation)?;
    match bias {
        Some(b) => add_channel_bias(&y, b),
        None => Ok(y),
    }
}
