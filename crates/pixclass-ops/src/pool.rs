//! Max-pooling and nearest upsampling.

use candle_core::{Result, Tensor, D};

use crate::{cpu_float, kernels};

/// Max pooling with a square window `k` and stride `k` (PyTorch's
/// `MaxPool2d(k)`): trailing rows/columns that do not fill a window are
/// dropped. The gradient goes to the first maximum of each window in
/// row-major order, exactly like PyTorch, also on ties.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// // One 2x2 window whose maximum 5 appears twice (a tie), and a trailing
/// // column that fills no window and is dropped.
/// let x = Var::new(&[[[[5f32, 5., 9.], [1., 2., 9.]]]], &Device::Cpu)?;
/// let y = pixclass_ops::max_pool2d(x.as_tensor(), 2)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [5.0]);
/// let grads = y.sum_all()?.backward()?;
/// let g = grads.get(x.as_tensor()).expect("gradient").flatten_all()?;
/// // All of it goes to the first maximum in row-major order.
/// assert_eq!(g.to_vec1::<f32>()?, [1., 0., 0., 0., 0., 0.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, H / k, W / k]`.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    if cpu_float(x) {
        let (_, _, h, w) = x.dims4()?;
        if h < k || w < k {
            candle_core::bail!("max_pool2d: window {k} is larger than the input {h}x{w}");
        }
        return kernels::pool::max_pool2d(x, k);
    }
    max_pool2d_portable(x, k)
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
            .apply_op1(kernels::pool::MaxPoolStrided { k, s, p });
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

/// Nearest-neighbour upsampling by an integer factor (PyTorch's
/// `Upsample(scale_factor=f, mode="nearest")`), as a broadcast: its backward
/// sums each `f x f` block and accumulates with other uses of the input.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, f·H, f·W]`.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    if cpu_float(x) {
        return kernels::pool::upsample_nearest(x, f);
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
