//! A convolution (or transposed convolution) with its bias, optionally a
//! max-pooling or nearest upsampling, then a train-mode BatchNorm (+ReLU),
//! as one autograd node: the intermediate tensors are computed without
//! nodes of their own, so the backward goes from the normalisation's kernel
//! through the resampling's straight into the convolution's, and autograd
//! holds no gradient of them to zero and accumulate. Both halves are
//! the existing kernels ([`super::conv`], [`super::batch_norm`]); only the
//! bookkeeping between them goes.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::batch_norm::{bn_fwd, BnTrain};
use super::conv::{ConvBias, ConvKernel};
use super::pool::{resample_backward, resample_no_bwd};
use super::{contiguous_slice, dims4, dispatch, with_cpu_storage};
use crate::Resample;

/// `bn([resample](conv(x, w) + bias))`: inputs (x, w, `[bias; γ; β]`
/// (`[3C]`)); the three per-channel vectors travel as one input because a
/// custom op has at most three.
#[derive(Debug, Clone)]
struct ConvBnTrain {
    conv: ConvBias,
    bn: BnTrain,
    /// `conv(x, w) + bias`, contiguous, not tracked.
    conv_out: Tensor,
    /// The resampling between the two and its output (not tracked).
    resampled: Option<(Resample, Tensor)>,
}

impl ConvBnTrain {
    /// What the normalisation reads.
    fn bn_input(&self) -> &Tensor {
        self.resampled.as_ref().map_or(&self.conv_out, |(_, t)| t)
    }
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "pixclass-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        with_cpu_storage(self.bn_input(), self.name(), |st, layout| {
            let (_, c, h, w) = dims4(layout)?;
            if l3.shape().elem_count() != 3 * c {
                candle_core::bail!(
                    "{}: [bias; gamma; beta] {:?} must have {} values",
                    self.name(),
                    l3.shape().dims(),
                    3 * c
                );
            }
            let out = dispatch!(
                (st, layout) => y, (s3, l3) => p;
                bn_fwd(&self.bn, y, &p[c..2 * c], &p[2 * c..], c, h * w)
            );
            Ok((out, layout.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = params.elem_count() / 3;
        let part = |i: usize| params.narrow(0, i * c, c);
        let (bias, gamma, beta) = (part(0)?, part(1)?, part(2)?);
        let (d_bn, dg, db) =
            <BnTrain as CustomOp3>::bwd(&self.bn, self.bn_input(), &gamma, &beta, res, grad)?;
        let Some(d_bn) = d_bn else {
            candle_core::bail!("{}: no gradient of the normalised input", self.name());
        };
        let d_conv = match &self.resampled {
            Some((how, _)) => resample_backward(*how, &self.conv_out, &d_bn)?,
            None => d_bn.contiguous()?,
        };
        let (dx, dw, dbias) =
            <ConvBias as CustomOp3>::bwd(&self.conv, x, w, &bias, &self.conv_out, &d_conv)?;
        let dparams = match (dbias, dg, db) {
            (Some(dbias), Some(dg), Some(db)) => Some(Tensor::cat(&[dbias, dg, db], 0)?),
            _ => None,
        };
        Ok((dx, dw, dparams))
    }
}

/// `kernel`'s convolution of `x` with `w` plus `bias`, then (when `how`
/// says) a pooling or upsampling, then train-mode BatchNorm (+ReLU when
/// `relu`) with `γ`, `β`, as one autograd node; returns the output and the
/// per-channel mean and biased variance of what was normalised (f64).
///
/// # Shapes
/// `x`, `w` as the kernel's; `bias`/`gamma`/`beta` `[C_out]` -> its output
/// `[N, C_out, H', W']`, `[C_out]`, `[C_out]`.
pub(crate) fn conv_batch_norm_train(
    (x, w, bias): (&Tensor, &Tensor, &Tensor),
    kernel: ConvKernel,
    how: Option<Resample>,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let conv = ConvBias {
        kernel,
        bounds: crate::NO_CLAMP,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let conv_out = x.apply_op3_no_bwd(&w, &bias.contiguous()?, &conv)?;
    let resampled = match how {
        Some(how) => Some((how, resample_no_bwd(how, &conv_out)?)),
        None => None,
    };
    let bn_input = resampled.as_ref().map_or(&conv_out, |(_, t)| t);
    let (bn, mean, var) = BnTrain::from_batch(bn_input, eps, relu)?;
    let params = Tensor::cat(&[bias, gamma, beta], 0)?;
    let op = ConvBnTrain {
        conv,
        bn,
        conv_out,
        resampled,
    };
    let y = x.apply_op3(&w, &params, op)?;
    Ok((y, mean, var))
}
