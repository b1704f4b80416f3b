//! Per-pixel losses: the K-class cross-entropy of logits, and the two-class
//! losses of a margin `d = logit_1 - logit_0` (softmax over two classes is
//! `sigmoid(d)`): one pass over the pixels, f64 sums per image added in
//! order, exact backward. The margin losses serve segmentation
//! fine-tuning, where the full-resolution logits are a step's largest
//! tensors.

use std::sync::Arc;

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::output::{output, par_output, Slots};
use super::simd::Real;
use super::{contiguous_slice, dims4, dispatch};
use crate::Loss;

/// Mean per-pixel cross-entropy of `[N, K, H, W]` logits against `[N, H, W]`
/// u32 targets, in one pass over each image: log-sum-exp per pixel in the
/// element type (like PyTorch), the mean accumulated in f64 (images summed
/// in order). When the logits will get a gradient, the same pass also
/// writes it, `(softmax - onehot) / pixels`, from the exponentials it
/// computes anyway, and the backward hands it over (scaled by the upstream
/// gradient when that is not 1): one `exp` per logit for the whole training
/// step. Create one per loss evaluation ([`CrossEntropy::new`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct CrossEntropy {
    /// Whether the forward writes the gradient for the backward.
    keep_grad: bool,
    /// The gradient the last forward wrote, taken by the backward.
    grad: Arc<std::sync::Mutex<Option<CpuStorage>>>,
}

impl CrossEntropy {
    /// A cross-entropy op; `keep_grad`: the logits will be differentiated
    /// (they track an autograd graph).
    pub fn new(keep_grad: bool) -> Self {
        Self {
            keep_grad,
            grad: Default::default(),
        }
    }
}

/// Its gradient with respect to the logits, computed afresh: `scale ·
/// (softmax - onehot)` (for a backward whose forward kept nothing).
#[derive(Debug, Clone, Copy)]
struct CrossEntropyBwd {
    scale: f64,
}

/// One image of the cross-entropy, compiled for the CPU's SIMD instruction
/// set: `img` `[K, hw]` logits, `target` `[hw]`. Returns `Σ_p lse_p -
/// img[target_p][p]` in f64; writes `scale · (softmax - onehot)` into
/// `grad` when given. The plane-wide loops (maximum, `exp` and sum,
/// normalisation) vectorise across the pixels.
struct CeImage<'a, T> {
    img: &'a [T],
    target: &'a [u32],
    hw: usize,
    grad: Option<Slots<'a, T>>,
    scale: T,
    /// Per-pixel maximum, sum of exponentials and gradient factor (`3·hw`,
    /// reused).
    scratch: &'a mut Vec<T>,
}

impl<T: Real> pulp::WithSimd for CeImage<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        let Self {
            img,
            target,
            hw,
            grad,
            scale,
            scratch,
        } = self;
        scratch.clear();
        scratch.resize(3 * hw, T::zero());
        let (max, rest) = scratch.split_at_mut(hw);
        let (sum, r) = rest.split_at_mut(hw);
        max.copy_from_slice(&img[..hw]);
        for plane in img.chunks_exact(hw).skip(1) {
            for (m, &v) in max.iter_mut().zip(plane) {
                // NaN-propagating maximum: a NaN logit makes the pixel's loss NaN.
                *m = if v > *m || v.is_nan_() { v } else { *m };
            }
        }
        match grad {
            Some(grad) => {
                // The exponentials, written to the gradient class by class.
                let grad = grad.write_parts(hw, |class, g| {
                    let plane = &img[class * hw..][..hw];
                    g.write(sum.iter_mut().zip(&*max).zip(plane).map(|((s, &m), &v)| {
                        let e = (v - m).exp_fast();
                        *s += e;
                        e
                    }));
                });
                // scale / sum per pixel, then every class's share of it.
                for (r, &s) in r.iter_mut().zip(&*sum) {
                    *r = scale / s;
                }
                for g in grad.chunks_exact_mut(hw) {
                    for (g, &r) in g.iter_mut().zip(&*r) {
                        *g *= r;
                    }
                }
                for (p, &c) in target.iter().enumerate() {
                    let g = &mut grad[c as usize * hw + p];
                    *g -= scale;
                }
            }
            None => {
                for plane in img.chunks_exact(hw) {
                    for ((s, &m), &v) in sum.iter_mut().zip(&*max).zip(plane) {
                        *s += (v - m).exp_fast();
                    }
                }
            }
        }
        target
            .iter()
            .enumerate()
            .map(|(p, &c)| {
                sum[p].to_f64().ln() + max[p].to_f64() - img[c as usize * hw + p].to_f64()
            })
            .sum::<f64>()
    }
}

/// The mean cross-entropy of `x` `[n, k, hw]` against `t`, and, when
/// `grad_scale` is given, `grad_scale · (softmax - onehot)` of every logit.
fn ce_fwd<T: Real>(
    x: &[T],
    t: &[u32],
    (n, k, hw): (usize, usize, usize),
    grad_scale: Option<f64>,
) -> Result<(f64, Option<Vec<T>>)> {
    if let Some(bad) = t.iter().find(|&&c| c as usize >= k) {
        candle_core::bail!("cross_entropy: target class {bad} out of range for {k} classes");
    }
    let scale = T::from_f64(grad_scale.unwrap_or(0.0));
    let image = |i: usize, grad: Option<Slots<'_, T>>, scratch: &mut Vec<T>| {
        pulp::Arch::new().dispatch(CeImage {
            img: &x[i * k * hw..(i + 1) * k * hw],
            target: &t[i * hw..(i + 1) * hw],
            hw,
            grad,
            scale,
            scratch,
        })
    };
    let (per_image, grad): (Vec<f64>, _) = match grad_scale {
        Some(_) => {
            let (grad, per_image) = par_output(x.len(), k * hw, 0, |images| {
                images
                    .enumerate()
                    .map_init(Vec::new, |scratch, (i, g)| image(i, Some(g), scratch))
                    .collect()
            });
            (per_image, Some(grad))
        }
        None => (
            (0..n)
                .into_par_iter()
                .map_init(Vec::new, |scratch, i| image(i, None, scratch))
                .collect(),
            None,
        ),
    };
    Ok((per_image.iter().sum::<f64>() / (n * hw) as f64, grad))
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(_) => contiguous_slice::<u32>(s, l),
        _ => candle_core::bail!("cross_entropy: targets must be u32"),
    }
}

/// The logits' shape `[N, K, H, W]`, checked against the targets'.
fn ce_dims(l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize)> {
    let (n, k, h, w) = dims4(l1)?;
    if l2.shape().dims() != [n, h, w] {
        candle_core::bail!(
            "cross_entropy: logits {:?} and targets {:?} disagree",
            l1.shape().dims(),
            l2.shape().dims()
        );
    }
    Ok((n, k, h * w))
}

impl candle_core::CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "pixclass-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, k, hw) = ce_dims(l1, l2)?;
        let t = targets(s2, l2)?;
        let scale = self.keep_grad.then(|| 1.0 / (n * hw) as f64);
        let (out, grad) = match s1 {
            CpuStorage::F32(_) => {
                let (loss, g) = ce_fwd(contiguous_slice::<f32>(s1, l1)?, t, (n, k, hw), scale)?;
                (CpuStorage::F32(vec![loss as f32]), g.map(CpuStorage::F32))
            }
            CpuStorage::F64(_) => {
                let (loss, g) = ce_fwd(contiguous_slice::<f64>(s1, l1)?, t, (n, k, hw), scale)?;
                (CpuStorage::F64(vec![loss]), g.map(CpuStorage::F64))
            }
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
        if let Ok(mut slot) = self.grad.lock() {
            *slot = grad;
        }
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, _, h, w) = logits.dims4()?;
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let kept = self.grad.lock().ok().and_then(|mut slot| slot.take());
        let kept = match kept {
            Some(CpuStorage::F32(v)) => Some(Tensor::from_vec(v, logits.shape(), logits.device())?),
            Some(CpuStorage::F64(v)) => Some(Tensor::from_vec(v, logits.shape(), logits.device())?),
            _ => None,
        };
        let dx = match kept {
            Some(d) if g == 1.0 => d,
            Some(d) => d.affine(g, 0.0)?,
            None => logits.contiguous()?.apply_op2_no_bwd(
                &target.contiguous()?,
                &CrossEntropyBwd {
                    scale: g / (n * h * w) as f64,
                },
            )?,
        };
        Ok((Some(dx), None))
    }
}

impl candle_core::CustomOp2 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "pixclass-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, k, hw) = ce_dims(l1, l2)?;
        let t = targets(s2, l2)?;
        let scale = Some(self.scale);
        let out = dispatch!((s1, l1) => x; ce_fwd(x, t, (n, k, hw), scale)?.1.ok_or_else(|| {
            candle_core::Error::Msg("cross_entropy: no gradient".into())
        })?);
        Ok((out, l1.shape().clone()))
    }
}

/// The loss of a margin `[N, H, W]` against u32 0/1 targets `[N, H, W]`.
///
/// The forward pass keeps its batch sums for the backward pass (IoU and Dice
/// need them before any pixel's gradient), so a training step reads the
/// margin twice, not three times.
#[derive(Debug, Clone)]
pub(crate) struct BinaryLoss {
    kind: Loss,
    sums: std::sync::Arc<std::sync::Mutex<Option<[f64; 4]>>>,
}

impl BinaryLoss {
    /// The loss `kind`.
    pub fn new(kind: Loss) -> Self {
        Self {
            kind,
            sums: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BinaryLossBwd {
    kind: Loss,
    grad: f64,
    /// The forward pass's batch sums, when known.
    sums: Option<[f64; 4]>,
}

/// `exp(-|x|)` in the precision of the element type (single precision for
/// f32 margins, like PyTorch; the sums are accumulated in f64 either way),
/// by [`Real::exp_fast`]: vectorised for f32.
#[inline(always)]
fn exp_neg_abs<T: Real>(x: T) -> T {
    let a = if x < T::zero() { T::zero() - x } else { x };
    (T::zero() - a).exp_fast()
}

/// `sigmoid(x)` from `e = exp(-|x|)`, stable for either sign.
#[inline(always)]
fn sigmoid_from(x: f64, e: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Accumulators per sum of [`BinaryChunk`]: independent lanes, added in a
/// fixed order at the end (a single running sum cannot vectorise).
const BINARY_LANES: usize = 16;

/// One chunk of [`binary_sums`], compiled for the CPU's SIMD instruction
/// set: the per-pixel `exp` (and the softplus's `ln(1 + e)`) in the
/// element type, vectorised for f32, each sum over [`BINARY_LANES`] f64
/// lanes in a fixed order.
struct BinaryChunk<'a, T> {
    kind: Loss,
    d: &'a [T],
    t: &'a [u32],
}

impl<T: Real> pulp::WithSimd for BinaryChunk<'_, T> {
    type Output = [f64; 4];

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> [f64; 4] {
        let Self { kind, d, t } = self;
        if kind == Loss::Ce {
            // softplus(-(2y-1)·x) = max(z, 0) + ln(1 + exp(-|z|)), |z| = |x|.
            let [ce, ..] = lanes3(d, t, |v, y| {
                let x = v.to_f64();
                let z = if y == 1 { -x } else { x };
                let tail = exp_neg_abs(v).ln_1p_unit().to_f64();
                [z.max(0.0) + tail, 0.0, 0.0]
            });
            [ce, 0.0, 0.0, 0.0]
        } else {
            let [i, p, y] = lanes3(d, t, |v, y| {
                let p = sigmoid_from(v.to_f64(), exp_neg_abs(v).to_f64());
                let y = f64::from(y);
                [p * y, p, y]
            });
            [0.0, i, p, y]
        }
    }
}

/// `Σ f(d_i, t_i)` of three values per pixel, over [`BINARY_LANES`]
/// interleaved f64 accumulators added in a fixed order.
#[inline(always)]
fn lanes3<T: Copy>(d: &[T], t: &[u32], f: impl Fn(T, u32) -> [f64; 3]) -> [f64; 3] {
    const L: usize = BINARY_LANES;
    let mut acc = [[0f64; L]; 3];
    let whole = d.len().min(t.len()) / L * L;
    for (dd, tt) in d[..whole].chunks_exact(L).zip(t[..whole].chunks_exact(L)) {
        let dd: &[T; L] = dd.try_into().expect("chunks of L pixels");
        let tt: &[u32; L] = tt.try_into().expect("chunks of L pixels");
        for k in 0..L {
            let [a, b, c] = f(dd[k], tt[k]);
            acc[0][k] += a;
            acc[1][k] += b;
            acc[2][k] += c;
        }
    }
    for (k, (&v, &y)) in d[whole..].iter().zip(&t[whole..]).enumerate() {
        let [a, b, c] = f(v, y);
        acc[0][k] += a;
        acc[1][k] += b;
        acc[2][k] += c;
    }
    acc.map(|lanes| lanes.iter().sum())
}

/// Batch sums: (CE sum, Σ p·y, Σ p, Σ y) with p = sigmoid(d); only what
/// `kind` needs (the CE sum for CE, the p sums for IoU/Dice). One `exp` per
/// pixel, shared by softplus and sigmoid. Fixed chunks of `chunk` pixels,
/// each summed in fixed lanes, added in order: the result never depends on
/// the number of threads or the instruction set.
fn binary_sums<T: Real>(kind: Loss, d: &[T], t: &[u32], chunk: usize) -> [f64; 4] {
    let parts: Vec<[f64; 4]> = d
        .par_chunks(chunk.max(1))
        .zip(t.par_chunks(chunk.max(1)))
        .map(|(d, t)| pulp::Arch::new().dispatch(BinaryChunk { kind, d, t }))
        .collect();
    parts.iter().fold([0f64; 4], |mut a, s| {
        for k in 0..4 {
            a[k] += s[k];
        }
        a
    })
}

const SOFT_EPS: f64 = 1e-6;

/// Pixels per partial sum of the binary losses.
const BINARY_CHUNK: usize = 1 << 16;

fn binary_value(kind: Loss, s: [f64; 4], m: usize) -> f64 {
    let [ce, i, p, y] = s;
    match kind {
        Loss::Ce => ce / m as f64,
        Loss::Iou => 1.0 - i / (p + y - i + SOFT_EPS),
        Loss::Dice => 1.0 - (2.0 * i + SOFT_EPS) / (p + y + SOFT_EPS),
    }
}

fn binary_bwd<T: Real>(op: &BinaryLossBwd, d: &[T], t: &[u32]) -> Vec<T> {
    let m = d.len();
    // CE's gradient needs no batch sums.
    let [_, i, ps, ys] = match (op.kind, op.sums) {
        (Loss::Ce, _) => [0.0; 4],
        (_, Some(s)) => s,
        (kind, None) => binary_sums(kind, d, t, BINARY_CHUNK),
    };
    let g = op.grad;
    // Per-pixel factors that do not depend on the pixel.
    let (a1, a0) = match op.kind {
        Loss::Ce => (0.0, 0.0),
        Loss::Iou => {
            // L = 1 - I/U; dI/dp = y, dU/dp = 1 - y.
            let u = ps + ys - i + SOFT_EPS;
            (-1.0 / u, i / (u * u))
        }
        Loss::Dice => {
            let num = 2.0 * i + SOFT_EPS;
            let den = ps + ys + SOFT_EPS;
            (-(2.0 * den - num) / (den * den), num / (den * den))
        }
    };
    output(m, BINARY_CHUNK, |chunks| {
        chunks
            .zip(d.par_chunks(BINARY_CHUNK).zip(t.par_chunks(BINARY_CHUNK)))
            .for_each(|(o, (d, t))| {
                let kind = op.kind;
                let factors = (a1, a0, g, m as f64);
                pulp::Arch::new().dispatch(BinaryGradChunk {
                    kind,
                    factors,
                    d,
                    t,
                    o,
                })
            })
    })
}

/// One chunk of [`binary_bwd`], compiled for the CPU's SIMD instruction
/// set: `factors` are `(a1, a0, g, m)`. The chunk is zero-filled (in cache)
/// and then overwritten by a plain loop over slices: written as an iterator
/// into the unwritten chunk, the per-pixel function was left out of line,
/// in baseline scalar code.
struct BinaryGradChunk<'a, T> {
    kind: Loss,
    factors: (f64, f64, f64, f64),
    d: &'a [T],
    t: &'a [u32],
    o: Slots<'a, T>,
}

impl<T: Real> pulp::WithSimd for BinaryGradChunk<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self {
            kind,
            factors: (a1, a0, g, m),
            d,
            t,
            o,
        } = self;
        let out = o.zeroed();
        let p = |v: T| sigmoid_from(v.to_f64(), exp_neg_abs(v).to_f64());
        if kind == Loss::Ce {
            for ((o, &v), &y) in out.iter_mut().zip(d).zip(t) {
                *o = T::from_f64(g * ((p(v) - f64::from(y)) / m));
            }
        } else {
            for ((o, &v), &y) in out.iter_mut().zip(d).zip(t) {
                // dL/dp is a1 (y = 1) or a0 (y = 0); dp/dd = p(1 - p).
                let p = p(v);
                *o = T::from_f64(g * ((if y == 1 { a1 } else { a0 }) * p * (1.0 - p)));
            }
        }
    }
}

fn check_binary(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape().dims() != l2.shape().dims() {
        candle_core::bail!(
            "binary loss: margin {:?} and targets {:?} disagree",
            l1.shape().dims(),
            l2.shape().dims()
        );
    }
    Ok(())
}

fn binary_targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let t = match s {
        CpuStorage::U32(_) => contiguous_slice::<u32>(s, l)?,
        _ => candle_core::bail!("binary loss: targets must be u32"),
    };
    if let Some(bad) = t.iter().find(|&&c| c > 1) {
        candle_core::bail!("binary loss: target {bad} is not 0 or 1");
    }
    Ok(t)
}

impl candle_core::CustomOp2 for BinaryLoss {
    fn name(&self) -> &'static str {
        "pixclass-binary-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        check_binary(l1, l2)?;
        let t = binary_targets(s2, l2)?;
        let m = l1.shape().elem_count();
        let out = dispatch!((s1, l1) => d; {
            let sums = binary_sums(self.kind, d, t, BINARY_CHUNK);
            if let Ok(mut slot) = self.sums.lock() {
                *slot = Some(sums);
            }
            vec![num_traits_from(binary_value(self.kind, sums, m), d)]
        });
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        margin: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let op = BinaryLossBwd {
            kind: self.kind,
            grad: g,
            sums: self.sums.lock().ok().and_then(|s| *s),
        };
        Ok((
            Some(
                margin
                    .contiguous()?
                    .apply_op2_no_bwd(&target.contiguous()?, &op)?,
            ),
            None,
        ))
    }
}

/// `v` in the element type of `_like`.
fn num_traits_from<T: WithDType>(v: f64, _like: &[T]) -> T {
    T::from_f64(v)
}

impl candle_core::CustomOp2 for BinaryLossBwd {
    fn name(&self) -> &'static str {
        "pixclass-binary-loss-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        check_binary(l1, l2)?;
        let t = binary_targets(s2, l2)?;
        let out = dispatch!((s1, l1) => d; binary_bwd(self, d, t));
        Ok((out, l1.shape().clone()))
    }
}
