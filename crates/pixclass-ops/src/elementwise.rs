//! Element-wise ops: a convolution's per-channel bias (and activation), the
//! residual `relu(a + b)`, and the per-pixel argmax.

use candle_core::{DType, Result, Tensor};

use crate::{cpu_float, kernels};

/// `relu(a + b)` (a residual connection): one fused pass on the CPU, candle's
/// add and ReLU elsewhere.
///
/// # Shapes
/// `a`, `b` the same shape -> that shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_float(a) && a.dtype() == b.dtype() {
        return a
            .contiguous()?
            .apply_op2(&b.contiguous()?, kernels::elementwise::AddRelu);
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
    add_channel_bias_clamp(x, b, NO_CLAMP.0, NO_CLAMP.1)
}

/// Clamp bounds that clamp nothing (a layer without activation).
pub const NO_CLAMP: (f64, f64) = (f64::NEG_INFINITY, f64::INFINITY);

/// `clamp(x + b, lo, hi)` with one bias value per channel: a convolution's
/// bias and its activation (`lo = 0, hi = inf`: ReLU; `0, 6`: ReLU6) in one
/// pass on the CPU, where `broadcast_add` and `clamp` make three. The
/// gradient passes where `lo < y < hi` (PyTorch's `hardtanh` backward).
/// Other devices: `broadcast_add` and `clamp`.
///
/// # Shapes
/// `x` `[N, C, H, W]`, `b` `[C]` -> `[N, C, H, W]`.
pub fn add_channel_bias_clamp(x: &Tensor, b: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    check_bounds((lo, hi), "add_channel_bias_clamp")?;
    if cpu_float(x) && x.dtype() == b.dtype() && x.rank() == 4 {
        let op = kernels::elementwise::ChannelBias { bounds: (lo, hi) };
        return x.contiguous()?.apply_op2(&b.contiguous()?, op);
    }
    clamp_portable(x.broadcast_add(&b.reshape((1, (), 1, 1))?)?, (lo, hi))
}

/// `clamp(y, lo, hi)` from candle's ops, skipping the infinite bounds.
pub(crate) fn clamp_portable(y: Tensor, (lo, hi): (f64, f64)) -> Result<Tensor> {
    match (lo > f64::NEG_INFINITY, hi < f64::INFINITY) {
        (false, false) => Ok(y),
        (true, false) => y.maximum(lo),
        (false, true) => y.minimum(hi),
        (true, true) => y.clamp(lo, hi),
    }
}

/// An error unless `(lo, hi)` is an interval (infinite ends allowed).
pub(crate) fn check_bounds((lo, hi): (f64, f64), what: &str) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        candle_core::bail!("{what}: bounds ({lo}, {hi}) are not an interval");
    }
    Ok(())
}

/// Per-pixel class of the largest logit (the first one on a tie). CPU f32 /
/// f64: one parallel pass over the class planes; elsewhere candle's
/// `argmax`. Not differentiable.
///
/// # Shapes
/// `[N, K, H, W]` -> `[N, H, W]` u32.
pub fn argmax_classes(logits: &Tensor) -> Result<Tensor> {
    if cpu_float(logits) && logits.rank() == 4 {
        return logits
            .contiguous()?
            .apply_op1_no_bwd(&kernels::elementwise::ArgmaxClasses);
    }
    logits.argmax(1)?.to_dtype(DType::U32)
}
