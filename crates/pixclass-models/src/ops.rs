//! Differentiable building blocks whose gradients are proven right.
//!
//! candle 0.11's built-ins have silent gradient bugs that break exactly the
//! colourization nets (see `tests/gradients.rs`, which checks every op here
//! against finite differences and detects the bugs in the built-ins):
//! - `max_pool2d` backward is scaled by 1/(k·k);
//! - `upsample_nearest2d` backward overwrites gradients that were already
//!   accumulated for its input (U-Net skips);
//! - `candle_nn::ops::softmax_last_dim` has no backward at all;
//! - `conv2d` backward with stride > 1 fails when height and width differ in
//!   their remainder modulo the stride.
//!
//! Every op here is a composition of candle primitives whose backward is
//! correct (reshape, broadcast, narrow, pad, comparison masks, sums), so the
//! same code runs unchanged on CPU, CUDA and Metal. This module is the one
//! place where such work-arounds live. On the CPU, convolutions go through
//! the GEMM-based kernels of [`crate::cpu_kernels`] (same gradients, checked
//! by the same tests); other devices use candle's own paths.

use candle_core::{DType, Result, Tensor, D};

/// Max pooling with a square window `k` and stride `k` (PyTorch's
/// `MaxPool2d(k)`): trailing rows/columns that do not fill a window are
/// dropped. The gradient goes to the first maximum of each window in
/// row-major order, exactly like PyTorch, also on ties.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, H / k, W / k]`.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    if cpu_float(x) {
        let (_, _, h, w) = x.dims4()?;
        if h < k || w < k {
            candle_core::bail!("max_pool2d: window {k} is larger than the input {h}x{w}");
        }
        return crate::cpu_kernels::max_pool2d(x, k);
    }
    max_pool2d_portable(x, k)
}

/// True for f32/f64 tensors on the CPU, where the kernels of
/// [`crate::cpu_kernels`] run.
pub(crate) fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// [`max_pool2d`] from candle primitives (used on CUDA and Metal): windows
/// reshaped into a last dimension, a detached first-maximum mask, a sum.
///
/// # Shapes
/// As [`max_pool2d`].
pub fn max_pool2d_portable(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / k, w / k);
    if ho == 0 || wo == 0 {
        candle_core::bail!("max_pool2d: window {k} is larger than the input {h}x{w}");
    }
    let x = if ho * k != h || wo * k != w {
        x.narrow(2, 0, ho * k)?.narrow(3, 0, wo * k)?
    } else {
        x.clone()
    };
    // [N, C, Ho, k, Wo, k] -> [N, C, Ho, Wo, k*k]: one row per window.
    let win = x
        .reshape((n, c, ho, k, wo, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, ho, wo, k * k))?;
    let first = first_max_mask(&win.detach())?;
    win.mul(&first)?.sum(D::Minus1)
}

/// A 0/1 mask (same dtype) marking the first maximum along the last dim.
fn first_max_mask(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let is_max = x.broadcast_eq(&max)?.to_dtype(x.dtype())?;
    // Running count of maxima; the first maximum is where the count is 1.
    let count = is_max.cumsum(D::Minus1)?;
    let first = count.eq(1.0)?.to_dtype(x.dtype())?;
    is_max.mul(&first)
}

/// Nearest-neighbour upsampling by an integer factor (PyTorch's
/// `Upsample(scale_factor=f, mode="nearest")`), as a broadcast: its backward
/// sums each `f x f` block and accumulates with other uses of the input.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, f·H, f·W]`.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    if cpu_float(x) {
        return crate::cpu_kernels::upsample_nearest(x, f);
    }
    upsample_nearest_portable(x, f)
}

/// [`upsample_nearest`] from candle primitives (a broadcast; used on CUDA
/// and Metal).
///
/// # Shapes
/// As [`upsample_nearest`].
pub fn upsample_nearest_portable(x: &Tensor, f: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, f, w, f))?
        .reshape((n, c, h * f, w * f))
}

/// Softmax along `dim`, with the usual max shift (detached: it cancels out of
/// the gradient analytically).
///
/// # Shapes
/// Any shape; the output has the input's shape.
pub fn softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.detach().max_keepdim(dim)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    e.broadcast_div(&s)
}

/// Log-softmax along `dim`, numerically stable.
///
/// # Shapes
/// Any shape; the output has the input's shape.
pub fn log_softmax<Dm: candle_core::shape::Dim + Copy>(x: &Tensor, dim: Dm) -> Result<Tensor> {
    let max = x.detach().max_keepdim(dim)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(dim)?.log()?;
    shifted.broadcast_sub(&lse)
}

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
/// [`crate::conv_gemm`]; elsewhere [`conv2d_portable`].
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
    ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    if cpu_float(x) && groups == 1 && bias.is_none_or(|b| b.dtype() == x.dtype()) {
        return crate::conv_gemm::conv2d(x, weight, bias, (pad_h, pad_w), stride, dilation);
    }
    let y = conv2d_portable(x, weight, pad_h, pad_w, stride, dilation, groups)?;
    match bias {
        Some(b) => add_channel_bias(&y, b),
        None => Ok(y),
    }
}

/// Depthwise 2-D convolution (groups = channels, one filter per channel).
/// CPU (f32/f64): the direct kernel [`crate::cpu_kernels::Depthwise`];
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
    let (_, c, _, _) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 {
        candle_core::bail!(
            "depthwise conv: weight {:?} does not fit input {:?} (expected [{c}, 1, KH, KW])",
            weight.dims(),
            x.dims()
        );
    }
    let e = ConvExtent::new(x, weight, pad_h, pad_w, dilation)?;
    if cpu_float(x) && x.dtype() == weight.dtype() {
        let (n, _, h, w) = x.dims4()?;
        let g = crate::cpu_kernels::Geometry {
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
        };
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, crate::cpu_kernels::Depthwise(g));
    }
    depthwise_conv2d_portable(x, weight, pad_h, pad_w, stride, dilation)
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
        return crate::conv_gemm::conv_transpose2d(
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

/// Per-pixel class of the largest logit.
///
/// # Shapes
/// `[N, K, H, W]` -> `[N, H, W]` u32.
pub fn argmax_classes(logits: &Tensor) -> Result<Tensor> {
    logits.argmax(1)?.to_dtype(DType::U32)
}

/// Max pooling with window `k`, stride `s` and padding `p` (PyTorch's
/// `MaxPool2d(k, s, p)`; padded positions never win). CPU: an exact kernel;
/// other devices: the maximum of `k²` shifted, subsampled views.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, (H + 2p - k)/s + 1, (W + 2p - k)/s + 1]`.
pub fn max_pool2d_strided(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    if k == s && p == 0 {
        return max_pool2d(x, k);
    }
    if cpu_float(x) {
        return x
            .contiguous()?
            .apply_op1(crate::cpu_kernels::MaxPoolStrided { k, s, p });
    }
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    // Pad with a very negative value so padding never wins.
    let low = -1e30;
    let pad = |t: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        let mut parts = Vec::new();
        if before > 0 {
            dims[dim] = before;
            parts.push((Tensor::ones(dims.as_slice(), t.dtype(), t.device())? * low)?);
        }
        parts.push(t.clone());
        if after > 0 {
            dims[dim] = after;
            parts.push((Tensor::ones(dims.as_slice(), t.dtype(), t.device())? * low)?);
        }
        Tensor::cat(&parts, dim)
    };
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let xp = pad(&pad(x, 2, p, ho * s + k)?, 3, p, wo * s + k)?;
    let mut best: Option<Tensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let v = xp
                .narrow(2, dy, ho * s)?
                .narrow(3, dx, wo * s)?
                .reshape((n, c, ho, s, wo, s))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, ho, wo))?;
            best = Some(match best {
                None => v,
                Some(b) => b.maximum(&v)?,
            });
        }
    }
    best.ok_or_else(|| candle_core::Error::Msg("max_pool2d_strided: empty window".into()))
}

/// `relu(a + b)` (a residual connection): one fused pass on the CPU, candle's
/// add and ReLU elsewhere.
///
/// # Shapes
/// `a`, `b` the same shape -> that shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_float(a) && a.dtype() == b.dtype() {
        return a
            .contiguous()?
            .apply_op2(&b.contiguous()?, crate::cpu_kernels::AddRelu);
    }
    (a + b)?.relu()
}

/// `x + b` with one bias value per channel (a convolution's bias). CPU: one
/// kernel whose bias gradient is a per-channel sum; other devices:
/// `broadcast_add`.
///
/// # Shapes
/// `x` `[N, C, H, W]`, `b` `[C]` -> `[N, C, H, W]`.
pub fn add_channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_float(x) && x.dtype() == b.dtype() && x.rank() == 4 {
        return x
            .contiguous()?
            .apply_op2(&b.contiguous()?, crate::cpu_kernels::ChannelBias);
    }
    x.broadcast_add(&b.reshape((1, (), 1, 1))?)
}

/// Bilinear resizing (PyTorch's `F.interpolate(mode="bilinear")`), written
/// as two matrix products with interpolation matrices, so its backward is
/// exact on every device.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, out_h, out_w]`.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let ah = interpolation_matrix(h, out_h, align_corners, x)?; // [out_h, h]
    let aw = interpolation_matrix(w, out_w, align_corners, x)?; // [out_w, w]
                                                                // Along W: [N·C·H, W] x [W, out_w].
    let y = x.reshape((n * c * h, w))?.matmul(&aw.t()?)?;
    // Along H: [N·C, H, out_w] -> Ah [out_h, H] applied per image.
    let y = y.reshape((n * c, h, out_w))?;
    let y = ah.broadcast_left(n * c)?.matmul(&y)?;
    y.reshape((n, c, out_h, out_w))
}

/// `[out, in]` weights of 1-D linear interpolation, PyTorch's conventions.
fn interpolation_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    like: &Tensor,
) -> Result<Tensor> {
    let mut m = vec![0f64; output * input];
    for o in 0..output {
        let src = if align_corners {
            if output > 1 {
                o as f64 * (input - 1) as f64 / (output - 1) as f64
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let l = src - i0 as f64;
        m[o * input + i0] += 1.0 - l;
        m[o * input + i1] += l;
    }
    Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())
}

/// Mean cross-entropy over all pixels (PyTorch's `F.cross_entropy(logits,
/// target)`). CPU: one fused kernel with an exact backward; other devices:
/// [`cross_entropy_portable`].
///
/// # Shapes
/// `logits` `[N, K, H, W]`, `target` `[N, H, W]` integer -> scalar.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if cpu_float(logits) {
        let t = target.to_dtype(DType::U32)?.contiguous()?;
        return logits
            .contiguous()?
            .apply_op2(&t, crate::cpu_kernels::CrossEntropy::new());
    }
    cross_entropy_portable(logits, target)
}

/// [`cross_entropy`] from candle primitives (log-softmax, gather, sum).
///
/// # Shapes
/// As [`cross_entropy`].
pub fn cross_entropy_portable(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (n, _k, h, w) = logits.dims4()?;
    let (tn, th, tw) = target.dims3()?;
    if (tn, th, tw) != (n, h, w) {
        candle_core::bail!(
            "cross_entropy: logits {:?} and target {:?} disagree",
            logits.dims(),
            target.dims()
        );
    }
    let lsm = log_softmax(logits, 1)?;
    let picked = lsm.gather(&target.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.sum_all()?.affine(-1.0 / (n * h * w) as f64, 0.0)
}

/// A two-class loss of the margin `d = logit_1 - logit_0` (so
/// `softmax(logits)[1] = sigmoid(d)`), equal to the same loss of the
/// two-channel logits: cross-entropy `mean softplus(-(2y-1)·d)`, or the soft
/// IoU / Dice of `p = sigmoid(d)` with batch-level sums (SPEC §B.3). CPU: one
/// fused kernel with an exact backward; elsewhere
/// [`binary_loss_portable`].
///
/// # Shapes
/// `margin` `[N, H, W]` float, `target` `[N, H, W]` u32 (0/1) -> scalar.
pub fn binary_loss(
    margin: &Tensor,
    target: &Tensor,
    kind: crate::cpu_kernels::BinaryLossKind,
) -> Result<Tensor> {
    if cpu_float(margin) && target.dtype() == candle_core::DType::U32 {
        return margin.contiguous()?.apply_op2(
            &target.contiguous()?,
            crate::cpu_kernels::BinaryLoss::new(kind),
        );
    }
    binary_loss_portable(margin, target, kind)
}

/// [`binary_loss`] from candle primitives (every device).
///
/// # Shapes
/// As [`binary_loss`].
pub fn binary_loss_portable(
    margin: &Tensor,
    target: &Tensor,
    kind: crate::cpu_kernels::BinaryLossKind,
) -> Result<Tensor> {
    use crate::cpu_kernels::BinaryLossKind as K;
    if margin.dims() != target.dims() {
        candle_core::bail!(
            "binary loss: margin {:?} and targets {:?} disagree",
            margin.dims(),
            target.dims()
        );
    }
    let y = target.to_dtype(margin.dtype())?;
    match kind {
        K::Ce => {
            // softplus(z) = max(z, 0) + ln(1 + exp(-|z|)), z = -(2y-1)·d.
            let z = margin.mul(&y.affine(-2.0, 1.0)?)?;
            let sp = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            sp.mean_all()
        }
        K::Iou | K::Dice => {
            let p = candle_nn::ops::sigmoid(margin)?;
            let i = p.mul(&y)?.sum_all()?;
            let ps = p.sum_all()?;
            let ys = y.sum_all()?;
            if kind == K::Iou {
                let u = ((ps + ys)? - &i)?;
                i.div(&(u + 1e-6)?)?.affine(-1.0, 1.0)
            } else {
                let num = (i.affine(2.0, 0.0)? + 1e-6)?;
                num.div(&((ps + ys)? + 1e-6)?)?.affine(-1.0, 1.0)
            }
        }
    }
}
