//! # pixclass-ops
//!
//! The differentiable ops of pixclass's networks and losses, with gradients
//! proven right, and the CPU kernels behind them. This crate is their one
//! dispatch point: f32/f64 tensors on the CPU go to the kernels (each a
//! candle custom op with an exact hand-written backward, in the private
//! `kernels` module), every other device to a portable formulation made of
//! candle primitives whose backward is correct (`*_portable`, public so that
//! tests and GPU checks can compare the two). A GPU tensor never reaches a
//! CPU kernel.
//!
//! The ops exist because candle 0.11's built-ins have silent gradient bugs
//! that break exactly the colourization nets (`tests/gradients.rs` checks
//! every op here against finite differences and PyTorch; `tests/builtin.rs`
//! detects the bugs in the built-ins so that an upstream fix is noticed):
//! - `max_pool2d` backward is scaled by 1/(k·k);
//! - `upsample_nearest2d` backward overwrites gradients that were already
//!   accumulated for its input (U-Net skips);
//! - `candle_nn::ops::softmax_last_dim` has no backward at all;
//! - `conv2d` backward with stride > 1 fails when height and width differ in
//!   their remainder modulo the stride.
//!
//! The families: [`conv2d`] / [`conv_transpose2d`] / [`depthwise_conv2d`]
//! (convolutions), [`batch_norm_train`] / [`batch_norm_eval`], [`max_pool2d`]
//! / [`upsample_nearest`], [`cross_entropy`] and the two-class
//! [`margin_loss`] (with the workspace's one [`Loss`] enum), [`softmax`],
//! [`add_relu`] / [`add_channel_bias`], and [`resize_bilinear`].
//! [`profile`] times the kernels per op, when asked to.
//!
//! This crate never defines layers, reads data or writes files.

mod conv;
mod elementwise;
mod kernels;
mod loss;
mod norm;
mod pool;
pub mod profile;
mod resize;

pub use conv::{
    batch_norm_train_after_conv, conv2d, conv2d_bias, conv2d_bias_clamp,
    conv2d_bias_clamp_const_tail, conv2d_portable, conv_transpose2d, conv_transpose2d_bias,
    depthwise_conv2d, depthwise_conv2d_bias_clamp, depthwise_conv2d_portable, same_padding,
    ConvSpec, Pad,
};
pub use elementwise::{
    add_channel_bias, add_channel_bias_clamp, add_relu, argmax_classes, NO_CLAMP,
};
pub use loss::{
    cross_entropy, cross_entropy_portable, log_softmax, margin_loss, margin_loss_portable, softmax,
    Loss,
};
pub use norm::{
    batch_norm_eval, batch_norm_eval_portable, batch_norm_train, batch_norm_train_portable,
    BatchNormTrain, Resample,
};
pub use pool::{
    max_pool2d, max_pool2d_portable, max_pool2d_strided, upsample_nearest,
    upsample_nearest_portable,
};
pub use resize::{resize_bilinear, resize_bilinear_portable};

/// Threads the CPU kernels run on: the size of the rayon pool they use
/// (`RAYON_NUM_THREADS`, else one per core).
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}

/// The f32 multiply-add throughput of this machine on all of
/// [`cpu_threads`], measured (about 150 ms), in GFLOP/s: independent FMA
/// chains in registers on every thread, in the widest instruction set the
/// kernels use. The ceiling to compare the kernels' GFLOP/s with: it counts
/// the clock the CPU really runs at, turbo included, not its nominal one.
pub fn measured_peak_gflops() -> f64 {
    kernels::simd::peak_gflops()
}

/// The environment variable of candle's CPU worker pool that
/// [`park_idle_candle_workers`] sets.
pub const CANDLE_SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's own CPU worker pool park its threads as soon as an op is
/// done. Call it first thing in `main`, before any candle op and before
/// other threads start (it sets an environment variable, which candle reads
/// once); it leaves a value the user has set alone.
///
/// candle 0.11 runs its element-wise ops (the gradient sums of every
/// backward pass, the optimiser's arithmetic) on a pool of its own beside
/// rayon's, whose workers spin for 25 000 rounds after each op before they
/// sleep. pixclass's kernels run on rayon's pool, on every core; a candle
/// worker spinning meanwhile takes a core from them. Parking at once cost
/// nothing measurable and made the colourization training steps about 5 %
/// faster on a 2-core machine (alternating runs of `step_timing`).
pub fn park_idle_candle_workers() {
    if std::env::var_os(CANDLE_SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(CANDLE_SPIN_LIMIT_VAR, "1");
    }
}

use candle_core::{DType, Tensor};

/// True for f32/f64 tensors on the CPU, where the kernels run.
pub(crate) fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}
