//! Element-wise ops: a convolution's per-channel bias, the residual
//! `relu(a + b)`, and the per-pixel argmax.

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
    if cpu_float(x) && x.dtype() == b.dtype() && x.rank() == 4 {
        return x
            .contiguous()?
            .apply_op2(&b.contiguous()?, kernels::elementwise::ChannelBias);
    }
    x.broadcast_add(&b.reshape((1, (), 1, 1))?)
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
