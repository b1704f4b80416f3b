//! Element-wise kernels: a convolution's per-channel bias (whose gradient
//! is one per-channel sum), optionally clamped in the same pass (ReLU,
//! ReLU6), the residual `relu(a + b)` and the per-pixel argmax over classes.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::output::output;
use super::simd::Real;
use super::{channel_total, contiguous_slice, dims4, dispatch};

/// `y = clamp(x + b, lo, hi)` per channel (a convolution's bias and its
/// activation: `(-inf, inf)` none, `(0, inf)` ReLU, `(0, 6)` ReLU6), one
/// pass. Inputs: x `[N, C, H, W]`, b `[C]`. The gradient passes where
/// `lo < y < hi` (PyTorch's `hardtanh` rule; everywhere without a clamp);
/// the bias gradient is one per-channel sum of it ([`ChannelSum`]), where
/// candle's `broadcast_add` backward reduces over three dimensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelBias {
    /// The clamp's bounds, `(-inf, inf)` for none.
    pub bounds: (f64, f64),
}

/// The gradient of a per-channel bias `b` `[C]` added to an `[N, C, H, W]`
/// output whose gradient is `grad`: its per-channel sum, or `None` when
/// autograd does not need it.
pub(crate) fn bias_gradient(b: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
    b.track_op()
        .then(|| {
            grad.contiguous()?
                .apply_op1_no_bwd(&ChannelSum)?
                .reshape(b.shape())
        })
        .transpose()
}

/// Whether clamping to `bounds` changes anything at all.
pub(crate) fn clamps(bounds: (f64, f64)) -> bool {
    bounds.0 > f64::NEG_INFINITY || bounds.1 < f64::INFINITY
}

/// `min(max(v, lo), hi)` with comparisons that keep NaN (and are exact: no
/// clamp leaves `v` as it is).
#[inline(always)]
pub(crate) fn clamp_value<T: WithDType>(v: T, lo: T, hi: T) -> T {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// Clamps `y` to `bounds` in place, in parallel: the epilogue of the
/// kernels that fuse an activation (ReLU, ReLU6) into their output.
pub(crate) fn clamp_in_place<T: WithDType>(y: &mut [T], bounds: (f64, f64)) {
    if !clamps(bounds) {
        return;
    }
    let (lo, hi) = (T::from_f64(bounds.0), T::from_f64(bounds.1));
    y.par_chunks_mut(1 << 14).for_each(|chunk| {
        super::simd::vectorized(
            #[inline(always)]
            || chunk.iter_mut().for_each(|v| *v = clamp_value(*v, lo, hi)),
        )
    });
}

/// The gradient through a clamp to `bounds`, from the clamped output `y`:
/// `g` where `lo < y < hi`, else 0 (PyTorch's `hardtanh` rule); `g` itself
/// when nothing is clamped.
pub(crate) fn clamp_gradient(y: &Tensor, g: &Tensor, bounds: (f64, f64)) -> Result<Tensor> {
    if !clamps(bounds) {
        return Ok(g.clone());
    }
    y.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &ClampMask(bounds))
}

/// `g` where `lo < y < hi` (`lo < y` when `hi` is infinite, a ReLU's
/// rule), else 0: inputs (y, g). The gradient of [`ChannelBias`]'s clamp and
/// of [`AddRelu`].
#[derive(Debug, Clone, Copy)]
struct ClampMask((f64, f64));

/// A ReLU's bounds.
const RELU: (f64, f64) = (0.0, f64::INFINITY);

/// Per-channel sum of `[N, C, H, W]` -> `[C]` (f64 accumulation in a fixed
/// order, the input's dtype out).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSum;

fn channel_sum<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| T::from_f64(channel_total(x, n, c, hw, ch)))
        .collect()
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "pixclass-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l)?;
        let out = dispatch!((s, l) => x; channel_sum(x, n, c, h * w));
        Ok((out, Shape::from(c)))
    }
}

fn bias_fwd<T: WithDType>(x: &[T], b: &[T], c: usize, hw: usize, bounds: (f64, f64)) -> Vec<T> {
    let (lo, hi) = (T::from_f64(bounds.0), T::from_f64(bounds.1));
    output(x.len(), hw.max(1), |planes| {
        planes
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(p, (o, xs))| {
                let bv = b[p % c];
                super::simd::vectorized(
                    #[inline(always)]
                    || {
                        o.write(xs.iter().map(|&v| clamp_value(v + bv, lo, hi)));
                    },
                )
            })
    })
}

fn clamp_mask<T: WithDType>(y: &[T], g: &[T], bounds: (f64, f64)) -> Vec<T> {
    let (lo, hi) = (T::from_f64(bounds.0), T::from_f64(bounds.1));
    let open_above = bounds.1 == f64::INFINITY;
    zip_map(y, g, |y, g| {
        if y > lo && (open_above || y < hi) {
            g
        } else {
            T::zero()
        }
    })
}

impl candle_core::CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "pixclass-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (_, c, h, w) = dims4(l1)?;
        if l2.shape().elem_count() != c {
            candle_core::bail!(
                "channel bias: bias {:?} must have {c} values for input {:?}",
                l2.shape().dims(),
                l1.shape().dims()
            );
        }
        let out = dispatch!((s1, l1) => x, (s2, l2) => b; bias_fwd(x, b, c, h * w, self.bounds));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let grad = clamp_gradient(res, grad, self.bounds)?;
        let db = bias_gradient(b, &grad)?;
        Ok((x.track_op().then_some(grad), db))
    }
}

impl candle_core::CustomOp2 for ClampMask {
    fn name(&self) -> &'static str {
        "pixclass-clamp-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        same_shape(l1, l2, self.name())?;
        let out = dispatch!((s1, l1) => y, (s2, l2) => g; clamp_mask(y, g, self.0));
        Ok((out, l1.shape().clone()))
    }
}

/// `y = relu(a + b)` elementwise (a residual connection), one pass; its
/// gradient `dy·[y > 0]` goes to both inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddRelu;

/// `f(a_i, b_i)` elementwise (equal lengths), in parallel chunks compiled
/// for the CPU's SIMD instruction set, the output written once.
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    output(a.len(), CHUNK, |chunks| {
        chunks
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                super::simd::vectorized(
                    #[inline(always)]
                    || {
                        o.write(a.iter().zip(b).map(|(&x, &y)| f(x, y)));
                    },
                )
            })
    })
}

fn add_relu_fwd<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(a, b, |x, y| {
        let v = x + y;
        if v > T::zero() {
            v
        } else {
            T::zero()
        }
    })
}

fn same_shape(l1: &Layout, l2: &Layout, what: &str) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{what}: shapes {:?} and {:?} differ",
            l1.shape().dims(),
            l2.shape().dims()
        );
    }
    Ok(())
}

impl candle_core::CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "pixclass-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        same_shape(l1, l2, self.name())?;
        let out = dispatch!((s1, l1) => a, (s2, l2) => b; add_relu_fwd(a, b));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = (a.track_op() || b.track_op())
            .then(|| {
                res.contiguous()?
                    .apply_op2_no_bwd(&grad.contiguous()?, &ClampMask(RELU))
            })
            .transpose()?;
        Ok((
            g.clone().filter(|_| a.track_op()),
            g.filter(|_| b.track_op()),
        ))
    }
}

/// Per-pixel index of the largest class score: `[N, K, H, W]` -> `[N, H, W]`
/// u32. The first maximum wins and a NaN never replaces the running best,
/// as in candle's `argmax` (so the two agree bit for bit); the scan runs
/// over class planes, a block of pixels at a time, in parallel over images
/// and blocks, where candle's strided reduction is one thread and one pixel
/// at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArgmaxClasses;

/// Pixels per block of [`argmax_classes`]: the running best values stay in
/// L1 while the class planes stream past.
const ARGMAX_BLOCK: usize = 512;

fn argmax_classes<T: WithDType>(x: &[T], n: usize, k: usize, hw: usize) -> Vec<u32> {
    let mut out = vec![0u32; n * hw];
    if hw == 0 {
        return out;
    }
    out.par_chunks_mut(hw)
        .enumerate()
        .flat_map(|(i, img)| {
            img.par_chunks_mut(ARGMAX_BLOCK)
                .enumerate()
                .map(move |(b, o)| (i, b * ARGMAX_BLOCK, o))
        })
        .for_each(|(i, p0, idx)| {
            let x = &x[i * k * hw..(i + 1) * k * hw];
            pulp::Arch::new().dispatch(ArgmaxBlock { x, hw, p0, idx });
        });
    out
}

/// One block of [`argmax_classes`] (pixels `p0..p0 + idx.len()` of one
/// image `x` `[K, hw]`), compiled for the CPU's SIMD instruction set: the
/// comparisons and selects run as vector masks (baseline SSE2 before).
struct ArgmaxBlock<'a, T> {
    x: &'a [T],
    hw: usize,
    p0: usize,
    idx: &'a mut [u32],
}

impl<T: WithDType> pulp::WithSimd for ArgmaxBlock<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self { x, hw, p0, idx } = self;
        let len = idx.len();
        let mut best = [T::zero(); ARGMAX_BLOCK];
        let best = &mut best[..len];
        idx.fill(0);
        for (c, plane) in x.chunks_exact(hw).enumerate() {
            let plane = &plane[p0..p0 + len];
            if c == 0 {
                best.copy_from_slice(plane);
                continue;
            }
            let cu = c as u32;
            for ((b, j), &s) in best.iter_mut().zip(idx.iter_mut()).zip(plane) {
                let gt = *b < s;
                *b = if gt { s } else { *b };
                *j = if gt { cu } else { *j };
            }
        }
    }
}

impl CustomOp1 for ArgmaxClasses {
    fn name(&self) -> &'static str {
        "pixclass-argmax-classes"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let _time = crate::profile::scope(self.name());
        let (n, k, h, w) = dims4(l)?;
        if k == 0 {
            candle_core::bail!("argmax over classes: input {:?} has no classes", l.dims());
        }
        let out = match s {
            CpuStorage::F32(_) => argmax_classes(contiguous_slice::<f32>(s, l)?, n, k, h * w),
            CpuStorage::F64(_) => argmax_classes(contiguous_slice::<f64>(s, l)?, n, k, h * w),
            _ => candle_core::bail!(
                "argmax over classes takes f32 or f64 scores, got {:?}",
                s.dtype()
            ),
        };
        Ok((CpuStorage::U32(out), Shape::from((n, h, w))))
    }
}
