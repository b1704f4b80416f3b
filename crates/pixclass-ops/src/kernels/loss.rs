//! Per-pixel losses: the K-class cross-entropy of logits, and the two-class
//! losses of a margin `d = logit_1 - logit_0` (softmax over two classes is
//! `sigmoid(d)`): one pass over the pixels, f64 sums per image added in
//! order, exact backward. The margin losses serve segmentation
//! fine-tuning, where the full-resolution logits are a step's largest
//! tensors.

use std::sync::Arc;

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::simd::Real;
use super::{contiguous_slice, dims4, dispatch, zeros};
use crate::Loss;

/// Mean per-pixel cross-entropy of `[N, K, H, W]` logits against `[N, H, W]`
/// u32 targets, in one pass: log-sum-exp per pixel in the element type (like
/// PyTorch), the mean accumulated in f64 (images summed in order). The
/// forward keeps the per-pixel log-sum-exp for the backward. Create one per
/// loss evaluation ([`CrossEntropy::new`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct CrossEntropy {
    /// Per-pixel log-sum-exp of the last forward, in f64 (`[N·H·W]`).
    lse: Arc<std::sync::Mutex<Option<Vec<f64>>>>,
}

impl CrossEntropy {
    /// A cross-entropy op with nothing stored yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Its gradient with respect to the logits: `scale · (softmax - onehot)`.
#[derive(Debug, Clone)]
struct CrossEntropyBwd {
    scale: f64,
    /// The forward's per-pixel log-sum-exp, when known.
    lse: Option<Arc<Vec<f64>>>,
}

/// Per image: log-sum-exp of every pixel, written into `lse` (`hw` values):
/// the channel maximum, then the sum of `exp(x - max)` in the element type.
#[inline(always)]
fn pixel_lse<T: Real>(img: &[T], k: usize, hw: usize, lse: &mut [f64]) {
    let mut max = img[..hw].to_vec();
    for c in 1..k {
        for (m, &v) in max.iter_mut().zip(&img[c * hw..(c + 1) * hw]) {
            // NaN-propagating maximum: a NaN logit makes the pixel's loss NaN.
            *m = if v > *m || v.is_nan_() { v } else { *m };
        }
    }
    let mut sum = vec![T::zero(); hw];
    for c in 0..k {
        for ((s, &m), &v) in sum.iter_mut().zip(&max).zip(&img[c * hw..(c + 1) * hw]) {
            *s += (v - m).exp_fast();
        }
    }
    for ((l, s), m) in lse.iter_mut().zip(&sum).zip(&max) {
        *l = s.to_f64().ln() + m.to_f64();
    }
}

fn ce_fwd<T: Real>(x: &[T], t: &[u32], n: usize, k: usize, hw: usize) -> Result<(f64, Vec<f64>)> {
    if let Some(bad) = t.iter().find(|&&c| c as usize >= k) {
        candle_core::bail!("cross_entropy: target class {bad} out of range for {k} classes");
    }
    let mut lse = vec![0.0; n * hw];
    let per_image: Vec<f64> = lse
        .par_chunks_mut(hw)
        .enumerate()
        .map(|(i, lse)| {
            let img = &x[i * k * hw..(i + 1) * k * hw];
            super::simd::vectorized(|| pixel_lse(img, k, hw, lse));
            let tt = &t[i * hw..(i + 1) * hw];
            (0..hw)
                .map(|p| lse[p] - img[tt[p] as usize * hw + p].to_f64())
                .sum::<f64>()
        })
        .collect();
    Ok((per_image.iter().sum::<f64>() / (n * hw) as f64, lse))
}

fn ce_bwd<T: Real>(
    x: &[T],
    t: &[u32],
    lse: Option<&[f64]>,
    k: usize,
    hw: usize,
    scale: f64,
) -> Vec<T> {
    let mut out = zeros(x.len());
    let s = T::from_f64(scale);
    out.par_chunks_mut(k * hw).enumerate().for_each(|(i, o)| {
        let img = &x[i * k * hw..(i + 1) * k * hw];
        let lse: Vec<T> = match lse {
            Some(l) => l[i * hw..(i + 1) * hw]
                .iter()
                .map(|&v| T::from_f64(v))
                .collect(),
            None => {
                let mut l = vec![0.0; hw];
                super::simd::vectorized(|| pixel_lse(img, k, hw, &mut l));
                l.into_iter().map(T::from_f64).collect()
            }
        };
        super::simd::vectorized(|| {
            for (oc, xc) in o.chunks_exact_mut(hw).zip(img.chunks_exact(hw)) {
                for ((o, &v), &l) in oc.iter_mut().zip(xc).zip(&lse) {
                    *o = s * (v - l).exp_fast();
                }
            }
        });
        for (p, &c) in t[i * hw..(i + 1) * hw].iter().enumerate() {
            o[c as usize * hw + p] -= s;
        }
    });
    out
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(_) => contiguous_slice::<u32>(s, l),
        _ => candle_core::bail!("cross_entropy: targets must be u32"),
    }
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
        let (n, k, h, w) = dims4(l1)?;
        if l2.shape().dims() != [n, h, w] {
            candle_core::bail!(
                "cross_entropy: logits {:?} and targets {:?} disagree",
                l1.shape().dims(),
                l2.shape().dims()
            );
        }
        let t = targets(s2, l2)?;
        let (out, lse) = match s1 {
            CpuStorage::F32(_) => {
                let (loss, lse) = ce_fwd(contiguous_slice::<f32>(s1, l1)?, t, n, k, h * w)?;
                (CpuStorage::F32(vec![loss as f32]), lse)
            }
            CpuStorage::F64(_) => {
                let (loss, lse) = ce_fwd(contiguous_slice::<f64>(s1, l1)?, t, n, k, h * w)?;
                (CpuStorage::F64(vec![loss]), lse)
            }
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(lse);
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
        let lse = self.lse.lock().ok().and_then(|mut slot| slot.take());
        let op = CrossEntropyBwd {
            scale: g / (n * h * w) as f64,
            lse: lse.filter(|l| l.len() == n * h * w).map(Arc::new),
        };
        Ok((
            Some(
                logits
                    .contiguous()?
                    .apply_op2_no_bwd(&target.contiguous()?, &op)?,
            ),
            None,
        ))
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
        let (_, k, h, w) = dims4(l1)?;
        let t = targets(s2, l2)?;
        let lse = self.lse.as_deref().map(Vec::as_slice);
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ce_bwd(
                contiguous_slice::<f32>(s1, l1)?,
                t,
                lse,
                k,
                h * w,
                self.scale,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ce_bwd(
                contiguous_slice::<f64>(s1, l1)?,
                t,
                lse,
                k,
                h * w,
                self.scale,
            )),
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
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
/// f32 margins, like PyTorch; the sums are accumulated in f64 either way).
#[inline]
fn exp_neg_abs<T: WithDType>(x: f64) -> f64 {
    if T::DTYPE == candle_core::DType::F32 {
        f64::from((-(x.abs() as f32)).exp())
    } else {
        (-x.abs()).exp()
    }
}

/// `ln(1 + e)` in the precision of the element type.
#[inline]
fn ln_1p_t<T: WithDType>(e: f64) -> f64 {
    if T::DTYPE == candle_core::DType::F32 {
        f64::from((e as f32).ln_1p())
    } else {
        e.ln_1p()
    }
}

/// `sigmoid(x)` from `e = exp(-|x|)`, stable for either sign.
#[inline]
fn sigmoid_from(x: f64, e: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Batch sums: (CE sum, Σ p·y, Σ p, Σ y) with p = sigmoid(d); only what
/// `kind` needs (the CE sum for CE, the p sums for IoU/Dice). One `exp` per
/// pixel, shared by softplus and sigmoid. Fixed chunks of `chunk` pixels
/// summed in order: the result never depends on the number of threads.
fn binary_sums<T: WithDType>(kind: Loss, d: &[T], t: &[u32], chunk: usize) -> [f64; 4] {
    let ce = kind == Loss::Ce;
    let parts: Vec<[f64; 4]> = d
        .par_chunks(chunk.max(1))
        .zip(t.par_chunks(chunk.max(1)))
        .map(|(dd, tt)| {
            let mut s = [0f64; 4];
            for (v, &y) in dd.iter().zip(tt) {
                let x = v.to_f64();
                let e = exp_neg_abs::<T>(x);
                if ce {
                    // softplus(-(2y-1)·x) = max(z, 0) + ln(1 + exp(-|z|)), |z| = |x|.
                    let z = if y == 1 { -x } else { x };
                    s[0] += z.max(0.0) + ln_1p_t::<T>(e);
                } else {
                    let p = sigmoid_from(x, e);
                    let y = y as f64;
                    s[1] += p * y;
                    s[2] += p;
                    s[3] += y;
                }
            }
            s
        })
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

fn binary_bwd<T: WithDType>(op: &BinaryLossBwd, d: &[T], t: &[u32]) -> Vec<T> {
    let m = d.len();
    // CE's gradient needs no batch sums.
    let [_, i, ps, ys] = match (op.kind, op.sums) {
        (Loss::Ce, _) => [0.0; 4],
        (_, Some(s)) => s,
        (kind, None) => binary_sums(kind, d, t, BINARY_CHUNK),
    };
    let mut out = vec![T::zero(); m];
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
    out.par_chunks_mut(BINARY_CHUNK)
        .zip(d.par_chunks(BINARY_CHUNK).zip(t.par_chunks(BINARY_CHUNK)))
        .for_each(|(o, (dd, tt))| {
            for ((o, v), &y) in o.iter_mut().zip(dd).zip(tt) {
                let x = v.to_f64();
                let p = sigmoid_from(x, exp_neg_abs::<T>(x));
                let dl_dd = match op.kind {
                    Loss::Ce => (p - y as f64) / m as f64,
                    // dL/dp is a1 (y = 1) or a0 (y = 0); dp/dd = p(1 - p).
                    _ => (if y == 1 { a1 } else { a0 }) * p * (1.0 - p),
                };
                *o = T::from_f64(g * dl_dd);
            }
        });
    out
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
