//! Layers in candle-nn style: a config struct with defaults, a struct, and a
//! constructor taking a `VarBuilder`. Parameter names follow PyTorch
//! (`weight`, `bias`, `running_mean`, `running_var`) so state dicts load
//! unchanged; initialisation follows PyTorch's defaults; layers with a
//! train/eval difference implement `candle_nn::ModuleT`. The computations
//! are `pixclass-ops`' (the layers hold parameters and state only).
//!
//! - [`conv`]: [`Conv2d`], [`ConvTranspose2d`] and PyTorch's init rules;
//! - [`batch_norm`]: [`BatchNorm2d`] with running statistics.

mod batch_norm;
mod conv;

pub use batch_norm::{BatchNorm2d, BatchNormConfig};
pub use conv::{
    Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Padding, TORCH_CONV_WEIGHT_INIT,
};

use candle_core::Var;

/// Counts the scalars of the trainable parameters of a `VarMap`: every
/// variable except BatchNorm running statistics.
pub fn trainable_scalars(varmap: &candle_nn::VarMap) -> usize {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// The trainable variables of a `VarMap` (sorted by name): every variable
/// except BatchNorm running statistics (PyTorch's buffers).
pub fn trainable_vars(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// True for names of non-trainable buffers (`running_mean`, `running_var`,
/// `num_batches_tracked`, and a segmentation head's fixed feature
/// statistics `feature_mean`/`feature_std`).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
        || name.ends_with("feature_mean")
        || name.ends_with("feature_std")
}
