//! The CPU kernels behind the ops, each a candle custom op with an exact
//! hand-written backward. They only ever see contiguous f32/f64 CPU storage:
//! the public ops (`crate::conv`, `crate::norm`, ...) dispatch here for such
//! tensors and to portable candle formulations for every other device.
//!
//! One module per family:
//! - [`conv`]: convolution forward, backward-data and backward-filter as
//!   per-image GEMMs (the transposed convolution is backward-data), with
//!   [`im2col`] building column matrices and [`gemm`] holding the crate's
//!   `unsafe` GEMM call;
//!   [`winograd`] computing the stride-1 3x3 ones (all three passes) with
//!   2.25x fewer multiplications, and [`dilated`] the dilated 3x3 ones as
//!   batches of undilated phase images for it, and [`bands`] the forwards
//!   of the large dilations (ASPP) over output rectangles of constant live
//!   taps;
//! - [`depthwise`]: direct depthwise convolution;
//! - [`batch_norm`]: train-mode BatchNorm (+ReLU) and the eval-mode
//!   per-channel affine map; [`conv_bn`]: a convolution, optionally a
//!   pooling or upsampling, and a train-mode BatchNorm as one autograd node;
//! - [`pool`]: max-pooling (window = stride, and strided/padded) and
//!   nearest upsampling;
//! - [`resize`]: bilinear resizing, direct (two taps per side) with its
//!   adjoint as the backward;
//! - [`loss`]: per-pixel cross-entropy and the two-class margin losses;
//! - [`elementwise`]: channel bias (with an optional clamp: ReLU, ReLU6),
//!   residual add+ReLU, argmax over classes;
//! - [`simd`]: run-time SIMD dispatch, a vectorisable `exp`, fixed-order
//!   lane sums;
//! - [`scratch`]: per-thread scratch vectors reused from one parallel job
//!   to the next;
//! - [`output`]: kernel outputs written once, without a zero-fill first
//!   (chunks of unwritten values that only full writers turn into
//!   `&mut [T]`; the crate's other `unsafe`).

use candle_core::{CpuStorage, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

use simd::Real;

pub(crate) mod bands;
pub(crate) mod batch_norm;
pub(crate) mod conv;
pub(crate) mod conv_bn;
pub(crate) mod depthwise;
pub(crate) mod dilated;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod im2col;
pub(crate) mod loss;
pub(crate) mod output;
pub(crate) mod pool;
pub(crate) mod resize;
pub(crate) mod scratch;
pub(crate) mod simd;
#[cfg(test)]
mod testing;
pub(crate) mod winograd;

/// Geometry of a convolution seen from its input image: an `n x c x h x w`
/// image, a `kh x kw` kernel, stride, dilation, top/left padding, and the
/// `ho x wo` output positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Batch.
    pub n: usize,
    /// Channels of the image.
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both dimensions).
    pub stride: usize,
    /// Dilation (both dimensions).
    pub dilation: usize,
    /// Zeros above the image.
    pub pad_top: usize,
    /// Zeros left of the image.
    pub pad_left: usize,
    /// Output rows.
    pub ho: usize,
    /// Output columns.
    pub wo: usize,
}

impl Geometry {
    /// Rows of the column matrix: `c·kh·kw`.
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// A 1x1 kernel with stride 1 and no padding: the column matrix of an
    /// image is the image itself (`[C, H·W]`), so no im2col is needed.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && (self.ho, self.wo) == (self.h, self.w)
    }

    /// The output positions whose input position `o·s + k·d - pad` lies
    /// inside the image (of `size`), as a half-open range.
    pub(crate) fn valid_range(
        &self,
        k: usize,
        pad: usize,
        out: usize,
        size: usize,
    ) -> (usize, usize) {
        let off = k * self.dilation; // input index = o*s + off - pad
        let s = self.stride;
        let lo = if pad > off {
            (pad - off).div_ceil(s)
        } else {
            0
        };
        let hi = if size + pad > off {
            ((size + pad - off - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Elements below which [`zeros`] zero-fills on the calling thread.
const PARALLEL_ZEROS: usize = 1 << 16;

/// A kernel's zero-filled output buffer of `len` values, filled in parallel
/// when it is large: `vec![0; len]` is one memset on the calling thread
/// (the allocator's pages are reused, so they are not known to be zero)
/// while the other threads wait for the kernel's parallel loop.
pub(crate) fn zeros<T: WithDType>(len: usize) -> Vec<T> {
    if len < PARALLEL_ZEROS {
        return vec![T::zero(); len];
    }
    // Chunks of PARALLEL_ZEROS values, each one `memset` (a parallel
    // `repeat_n` collect stored 16 bytes at a time, in baseline SSE2).
    output::output(len, PARALLEL_ZEROS, |chunks| {
        chunks.for_each(|c| {
            c.zeroed();
        })
    })
}

/// The contiguous slice of a CPU storage described by `l`.
pub(crate) fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("pixclass CPU kernels need a contiguous input"),
    }
}

/// Runs `f` on the CPU storage of a tensor that `op` captured (one it reads
/// besides its inputs, computed beforehand without an autograd node), or
/// an error naming the op when that tensor is elsewhere.
pub(crate) fn with_cpu_storage<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        candle_core::bail!("{op}: the captured tensor {:?} is not on the CPU", t.dims());
    };
    f(s, layout)
}

/// The `[N, C, H, W]` dimensions of a 4-D layout.
pub(crate) fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// Sum of channel `ch` of `[N, C, H, W]` (f64, images in order).
pub(crate) fn channel_total<T: Real>(x: &[T], n: usize, c: usize, hw: usize, ch: usize) -> f64 {
    (0..n)
        .map(|i| T::shifted_sums(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw], 0.0).0)
        .sum()
}

/// Runs `$body` on the contiguous slices of one or more CPU storages that
/// are all f32 or all f64, wrapping the result in the same dtype:
/// `dispatch!((s1, l1) => a, (s2, l2) => b; f(a, b))`.
macro_rules! dispatch {
    ($(($s:expr, $l:expr) => $x:ident),+ ; $body:expr) => {{
        use candle_core::backend::BackendStorage;
        let dtypes = [$($s.dtype()),+];
        if dtypes.iter().all(|d| *d == candle_core::DType::F32) {
            $(let $x = contiguous_slice::<f32>($s, $l)?;)+
            CpuStorage::F32($body)
        } else if dtypes.iter().all(|d| *d == candle_core::DType::F64) {
            $(let $x = contiguous_slice::<f64>($s, $l)?;)+
            CpuStorage::F64($body)
        } else {
            candle_core::bail!("pixclass CPU kernels take f32 or f64 inputs of one dtype, got {dtypes:?}")
        }
    }};
}
pub(crate) use dispatch;
