//! `BatchNorm2d`: PyTorch's parameters, buffers and momentum update; the
//! normalisation itself is `pixclass_ops::batch_norm_train` / `_eval`.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Module, Result, Tensor, TensorId, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

use super::Conv2d;

/// Configuration of [`BatchNorm2d`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f64,
    /// Whether the layer has `weight` and `bias`.
    pub affine: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

/// Batch normalisation over `[N, C, H, W]` (`torch.nn.BatchNorm2d`).
///
/// Train mode normalises with the batch's biased variance and updates the
/// running statistics with the unbiased one (momentum update); eval mode uses
/// the running statistics. A training batch with one value per channel is an
/// error (PyTorch refuses it too; the unbiased variance would be NaN).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Var,
    running_var: Var,
    cfg: BatchNormConfig,
    /// Whether the parameters and statistics were loaded as plain tensors
    /// (a pretrained, frozen network) rather than as variables something
    /// else may change: only then is [`Self::forward_conv_t`]'s fold kept.
    frozen: bool,
    /// The eval-mode fold into the preceding convolution (keyed by that
    /// convolution's weight); cleared by every train-mode forward, which
    /// updates the running statistics.
    folded: Arc<Mutex<Option<Folded>>>,
}

/// A convolution's weight and bias with a BatchNorm folded in.
#[derive(Debug)]
struct Folded {
    conv_weight: TensorId,
    weight: Tensor,
    bias: Tensor,
}

impl BatchNorm2d {
    /// Creates (or loads) `weight`, `bias`, `running_mean`, `running_var`.
    pub fn new(c: usize, cfg: BatchNormConfig, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if cfg.affine {
            (
                Some(vb.get_with_hints(c, "weight", Init::Const(1.0))?),
                Some(vb.get_with_hints(c, "bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        let rm = vb.get_with_hints(c, "running_mean", Init::Const(0.0))?;
        let rv = vb.get_with_hints(c, "running_var", Init::Const(1.0))?;
        let frozen = [Some(&rm), Some(&rv), weight.as_ref(), bias.as_ref()]
            .into_iter()
            .flatten()
            .all(|t| !t.is_variable());
        // For a VarMap-backed builder these share the map's storage, so
        // running-stat updates are visible to checkpoints.
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&rm)?,
            running_var: Var::from_tensor(&rv)?,
            cfg,
            frozen,
            folded: Arc::default(),
        })
    }

    /// Number of trainable scalars (weight and bias).
    pub fn num_params(&self) -> usize {
        self.weight.as_ref().map_or(0, |w| w.elem_count())
            + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }

    /// The running mean `[C]`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance `[C]`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false, true)
    }

    /// [`BatchNorm2d::forward_t`] (with an optional ReLU) through candle
    /// primitives only: the path CUDA and Metal take.
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_portable_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.forward_impl(x, train, relu, false)
    }

    /// `relu(batch_norm(x))`, fused into one kernel on the CPU.
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true, true)
    }

    /// `relu(batch_norm([resample](conv.apply(x, weight, bias))))`: in train
    /// mode on the CPU one autograd node
    /// ([`pixclass_ops::batch_norm_train_after_conv`]), the running
    /// statistics updated from what was normalised; otherwise the ops one
    /// after the other.
    ///
    /// # Shapes
    /// `x` as `conv` takes it -> `[N, C, H', W']` (resampled).
    pub fn forward_relu_after_conv_t(
        &self,
        x: &Tensor,
        (weight, bias): (&Tensor, &Tensor),
        conv: pixclass_ops::ConvSpec,
        resample: Option<pixclass_ops::Resample>,
        train: bool,
    ) -> Result<Tensor> {
        if !train {
            let y = conv.apply(x, weight, Some(bias))?;
            let y = match resample {
                Some(how) => how.apply(&y)?,
                None => y,
            };
            return self.forward_relu_t(&y, train);
        }
        if let Ok(mut folded) = self.folded.lock() {
            *folded = None;
        }
        let (eps, affine) = (self.cfg.eps, self.affine());
        let out = pixclass_ops::batch_norm_train_after_conv(
            x,
            (weight, bias),
            conv,
            resample,
            affine,
            eps,
            true,
        )?;
        let (n, _, h, w) = out.y.dims4()?;
        self.update_running(&out.mean, &out.var, n * h * w)?;
        Ok(out.y)
    }

    /// `bn(conv(x))`, with a ReLU when `relu`. In eval mode, when this layer
    /// and the convolution were loaded frozen (plain tensors, as a
    /// pretrained backbone is), the BatchNorm is folded into the
    /// convolution: its weight scaled per output channel by `γ/√(σ²+ε)`,
    /// `β - μ·γ/√(σ²+ε)` (plus the scaled conv bias) as its bias, and the
    /// ReLU as the kernel's clamp: one kernel and no per-channel affine pass
    /// over the output. The fold is computed once (in f64) and kept until a
    /// train-mode forward changes the running statistics: a second copy of
    /// the frozen convolution's weights (for DeepLab's ResNet-101 about
    /// 230 MB; the bench's peak for its forwards rose from 2.05 to 2.41 GB).
    /// Otherwise the two layers run one after the other. Equal to the
    /// unfolded result up to rounding.
    ///
    /// # Shapes
    /// `x` as `conv`'s input -> `[N, C, H', W']`.
    pub fn forward_conv_t(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        let frozen_conv =
            !conv.weight().is_variable() && conv.bias().is_none_or(|b| !b.is_variable());
        if train || !self.frozen || !frozen_conv {
            let y = conv.forward(x)?;
            return self.forward_impl(&y, train, relu, true);
        }
        let mut folded = self
            .folded
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm: a fold panicked".into()))?;
        let fresh = folded
            .as_ref()
            .is_some_and(|f| f.conv_weight == conv.weight().id());
        if !fresh {
            *folded = Some(self.fold(conv)?);
        }
        let f = folded
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("batch norm: no fold".into()))?;
        let bounds = if relu {
            (0.0, f64::INFINITY)
        } else {
            pixclass_ops::NO_CLAMP
        };
        conv.forward_with(x, &f.weight, &f.bias, bounds)
    }

    /// The convolution's weight and bias with this layer's eval-mode
    /// normalisation folded in, computed in f64.
    fn fold(&self, conv: &Conv2d) -> Result<Folded> {
        let f64_ = |t: &Tensor| t.to_dtype(DType::F64);
        let w = conv.weight();
        let c = w.dim(0)?;
        let rv = f64_(self.running_var.as_tensor())?;
        let mut scale = (rv + self.cfg.eps)?.sqrt()?.recip()?;
        let mut shift = f64_(self.running_mean.as_tensor())?.neg()?;
        if let Some(b) = conv.bias() {
            shift = (shift + f64_(b)?)?;
        }
        if let Some((g, _)) = self.affine() {
            scale = (scale * f64_(g)?)?;
        }
        let mut bias = (shift * &scale)?;
        if let Some((_, b)) = self.affine() {
            bias = (bias + f64_(b)?)?;
        }
        let weight = f64_(w)?
            .broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
            .to_dtype(w.dtype())?;
        // Constants: the running statistics are variables (of this layer's
        // own), but nothing trains a frozen layer, and a forward through
        // the fold must record no graph.
        Ok(Folded {
            conv_weight: w.id(),
            weight: weight.detach(),
            bias: bias.to_dtype(w.dtype())?.detach(),
        })
    }

    fn affine(&self) -> Option<(&Tensor, &Tensor)> {
        self.weight.as_ref().zip(self.bias.as_ref())
    }

    fn update_running(&self, mean: &Tensor, var_biased: &Tensor, count: usize) -> Result<()> {
        let m = self.cfg.momentum;
        let dt = self.running_mean.dtype();
        let unbiased = (var_biased * (count as f64 / (count as f64 - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_dtype(dt)? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased.to_dtype(dt)? * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }

    /// `fused`: the ops' dispatching entry points (CPU kernels where they
    /// apply); otherwise their portable formulations.
    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool, fused: bool) -> Result<Tensor> {
        let eps = self.cfg.eps;
        if !train {
            let (rm, rv) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
            return if fused {
                pixclass_ops::batch_norm_eval(x, rm, rv, self.affine(), eps, relu)
            } else {
                pixclass_ops::batch_norm_eval_portable(x, rm, rv, self.affine(), eps, relu)
            };
        }
        // The running statistics change: a kept fold is stale.
        if let Ok(mut folded) = self.folded.lock() {
            *folded = None;
        }
        let out = if fused {
            pixclass_ops::batch_norm_train(x, self.affine(), eps, relu)?
        } else {
            pixclass_ops::batch_norm_train_portable(x, self.affine(), eps, relu)?
        };
        let (n, _, h, w) = x.dims4()?;
        self.update_running(&out.mean, &out.var, n * h * w)?;
        Ok(out.y)
    }
}

impl ModuleT for BatchNorm2d {
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm2d::forward_t(self, x, train)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layers::Conv2dConfig;
    use candle_core::Device;
    use std::collections::HashMap;

    fn tensor(shape: &[usize], seed: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64 + seed) * 0.731).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// (conv, bn) loaded from plain tensors (`frozen`) or from a VarMap.
    fn layers(frozen: bool, vm: &candle_nn::VarMap) -> (Conv2d, BatchNorm2d) {
        let mut t = HashMap::new();
        t.insert("conv.weight".to_string(), tensor(&[4, 3, 3, 3], 1.0));
        t.insert("conv.bias".to_string(), tensor(&[4], 2.0));
        t.insert(
            "bn.weight".to_string(),
            tensor(&[4], 3.0).affine(0.2, 1.0).unwrap(),
        );
        t.insert("bn.bias".to_string(), tensor(&[4], 4.0));
        t.insert(
            "bn.running_mean".to_string(),
            tensor(&[4], 5.0).affine(0.1, 0.0).unwrap(),
        );
        t.insert(
            "bn.running_var".to_string(),
            tensor(&[4], 6.0).abs().unwrap().affine(1.0, 0.5).unwrap(),
        );
        let vb = if frozen {
            VarBuilder::from_tensors(t, DType::F64, &Device::Cpu)
        } else {
            let vb = VarBuilder::from_varmap(vm, DType::F64, &Device::Cpu);
            for (name, value) in &t {
                let dims = value.dims().to_vec();
                vb.get(dims, name).unwrap();
            }
            for (name, var) in vm.data().lock().unwrap().iter() {
                var.set(&t[name]).unwrap();
            }
            vb
        };
        let cfg = Conv2dConfig {
            padding: crate::layers::Padding::Symmetric(1),
            ..Default::default()
        };
        let conv = Conv2d::new(3, 4, 3, cfg, vb.pp("conv")).unwrap();
        let bn = BatchNorm2d::new(4, BatchNormConfig::default(), vb.pp("bn")).unwrap();
        (conv, bn)
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn a_frozen_layer_folds_into_its_convolution_until_a_train_forward() {
        let x = tensor(&[2, 3, 5, 6], 7.0);
        let vm = candle_nn::VarMap::new();
        for frozen in [true, false] {
            let (conv, bn) = layers(frozen, &vm);
            for relu in [false, true] {
                let plain = bn
                    .forward_impl(&conv.forward(&x).unwrap(), false, relu, true)
                    .unwrap();
                let y = bn.forward_conv_t(&conv, &x, false, relu).unwrap();
                assert!(max_abs(&y, &plain) < 1e-12, "frozen {frozen}, relu {relu}");
                assert_eq!(bn.folded.lock().unwrap().is_some(), frozen, "relu {relu}");
                // Through frozen weights no graph is recorded.
                assert_eq!(y.track_op(), !frozen);
            }
            // A train-mode forward changes the running statistics and drops
            // the fold; the next eval forward folds the new statistics.
            bn.forward_conv_t(&conv, &x, true, true).unwrap();
            assert!(bn.folded.lock().unwrap().is_none());
            let plain = bn
                .forward_impl(&conv.forward(&x).unwrap(), false, true, true)
                .unwrap();
            let y = bn.forward_conv_t(&conv, &x, false, true).unwrap();
            assert!(
                max_abs(&y, &plain) < 1e-12,
                "after training, frozen {frozen}"
            );
        }
    }
}
