//! Bilinear resizing on the CPU, direct: each output the weighted sum of the
//! two input rows and two input columns PyTorch's `F.interpolate` reads,
//! along the width first and then along the height, with the adjoint
//! (the same weights, scattered back) as its backward. The portable
//! formulation (`crate::resize`) multiplies by dense interpolation
//! matrices: `in` multiply-adds per output along each side instead of two,
//! and a batched product that took 26 ms for DeepLab's `8x21x28x28` logits
//! to 224x224.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::output::{output, Slots};
use super::simd::vectorized;
use super::{contiguous_slice, dims4, dispatch, zeros};

/// The two source positions and their weights of each output position of
/// one side, in PyTorch's conventions (`align_corners` or half-pixel
/// centres clamped at 0). At the last input position both sources are it
/// (weights `1 - l` and `l`, `l` zero where the position is exact).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Taps {
    /// `(i0, i1)` per output position.
    index: Vec<(usize, usize)>,
    /// `(1 - l, l)` per output position, in f64.
    weight: Vec<(f64, f64)>,
}

impl Taps {
    pub(crate) fn new(input: usize, output: usize, align_corners: bool) -> Self {
        let (index, weight) = (0..output)
            .map(|o| {
                let src = if align_corners {
                    if output > 1 {
                        o as f64 * (input - 1) as f64 / (output - 1) as f64
                    } else {
                        0.0
                    }
                } else {
                    ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = (i0 + 1).min(input - 1);
                let l = src - i0 as f64;
                ((i0, i1), (1.0 - l, l))
            })
            .unzip();
        Self { index, weight }
    }

    /// `((i0, i1), (1 - l, l))` of each output position, in order.
    pub(crate) fn sources(&self) -> impl Iterator<Item = ((usize, usize), (f64, f64))> + '_ {
        self.index.iter().copied().zip(self.weight.iter().copied())
    }

    /// The weights in the element type: where both sources are one position
    /// their weights are added first (as the interpolation matrix holds them).
    fn weights<T: WithDType>(&self) -> Vec<(T, T)> {
        self.index
            .iter()
            .zip(&self.weight)
            .map(|(&(i0, i1), &(a, b))| {
                if i0 == i1 {
                    (T::from_f64(a + b), T::zero())
                } else {
                    (T::from_f64(a), T::from_f64(b))
                }
            })
            .collect()
    }
}

/// Resize of `[N, C, H, W]` to `[N, C, out_h, out_w]`.
#[derive(Debug, Clone)]
pub(crate) struct ResizeBilinear {
    rows: Taps,
    cols: Taps,
}

/// Its backward: the output gradient scattered back through the same taps.
#[derive(Debug, Clone)]
struct ResizeBilinearBwd {
    rows: Taps,
    cols: Taps,
    h: usize,
    w: usize,
}

/// `x` resized bilinearly to `out_h x out_w` (contiguous f32/f64 CPU tensor).
pub(crate) fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if out_h == 0 || out_w == 0 {
        return Tensor::zeros((n, c, out_h, out_w), x.dtype(), x.device());
    }
    let op = ResizeBilinear {
        rows: Taps::new(h, out_h, align_corners),
        cols: Taps::new(w, out_w, align_corners),
    };
    x.contiguous()?.apply_op1(op)
}

/// One side's source positions and weights in the element type.
type SideTaps<'a, T> = (&'a [(usize, usize)], &'a [(T, T)]);

/// One plane: along the width into `tmp` (`h x out_w`), then along the
/// height into `out`.
#[inline(always)]
fn resize_plane<T: WithDType>(
    x: &[T],
    w: usize,
    (rows, rw): SideTaps<'_, T>,
    (cols, cw): SideTaps<'_, T>,
    tmp: &mut [T],
    out: Slots<'_, T>,
) {
    let ow = cols.len();
    for (src, dst) in x.chunks_exact(w).zip(tmp.chunks_exact_mut(ow)) {
        for ((d, &(j0, j1)), &(a, b)) in dst.iter_mut().zip(cols).zip(cw) {
            *d = a * src[j0] + b * src[j1];
        }
    }
    for ((dst, &(i0, i1)), &(a, b)) in out.split(ow).zip(rows).zip(rw) {
        let (r0, r1) = (&tmp[i0 * ow..][..ow], &tmp[i1 * ow..][..ow]);
        dst.write(r0.iter().zip(r1).map(|(&u, &v)| a * u + b * v));
    }
}

/// The adjoint of [`resize_plane`]: the gradient `g` (`out_h x out_w`)
/// along the height into `tmp` (`h x out_w`), then along the width into
/// `dx` (`h x w`, overwritten).
#[inline(always)]
fn resize_plane_bwd<T: WithDType>(
    g: &[T],
    w: usize,
    (rows, rw): SideTaps<'_, T>,
    (cols, cw): SideTaps<'_, T>,
    tmp: &mut [T],
    dx: &mut [T],
) {
    let ow = cols.len();
    tmp.fill(T::zero());
    for (src, (&(i0, i1), &(a, b))) in g.chunks_exact(ow).zip(rows.iter().zip(rw)) {
        for (d, &s) in tmp[i0 * ow..][..ow].iter_mut().zip(src) {
            *d += a * s;
        }
        for (d, &s) in tmp[i1 * ow..][..ow].iter_mut().zip(src) {
            *d += b * s;
        }
    }
    dx.fill(T::zero());
    for (src, dst) in tmp.chunks_exact(ow).zip(dx.chunks_exact_mut(w)) {
        for ((&s, &(j0, j1)), &(a, b)) in src.iter().zip(cols).zip(cw) {
            dst[j0] += a * s;
            dst[j1] += b * s;
        }
    }
}

fn resize_fwd<T: WithDType>(x: &[T], (h, w): (usize, usize), rows: &Taps, cols: &Taps) -> Vec<T> {
    let (oh, ow) = (rows.index.len(), cols.index.len());
    let (rw, cw) = (rows.weights::<T>(), cols.weights::<T>());
    output(x.len() / (h * w) * oh * ow, oh * ow, |planes| {
        planes.enumerate().for_each_init(
            || vec![T::zero(); h * ow],
            |tmp, (p, o)| {
                let plane = &x[p * h * w..(p + 1) * h * w];
                vectorized(
                    #[inline(always)]
                    || resize_plane(plane, w, (&rows.index, &rw), (&cols.index, &cw), tmp, o),
                );
            },
        )
    })
}

fn resize_bwd<T: WithDType>(g: &[T], (h, w): (usize, usize), rows: &Taps, cols: &Taps) -> Vec<T> {
    let (oh, ow) = (rows.index.len(), cols.index.len());
    let (rw, cw) = (rows.weights::<T>(), cols.weights::<T>());
    let mut dx = zeros(g.len() / (oh * ow) * h * w);
    dx.par_chunks_mut(h * w).enumerate().for_each_init(
        || vec![T::zero(); h * ow],
        |tmp, (p, d)| {
            let gp = &g[p * oh * ow..(p + 1) * oh * ow];
            vectorized(
                #[inline(always)]
                || resize_plane_bwd(gp, w, (&rows.index, &rw), (&cols.index, &cw), tmp, d),
            );
        },
    );
    dx
}

impl CustomOp1 for ResizeBilinear {
    fn name(&self) -> &'static str {
        "pixclass-resize-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, h, w) = dims4(l)?;
        let out = dispatch!((s, l) => x; resize_fwd(x, (h, w), &self.rows, &self.cols));
        let (oh, ow) = (self.rows.index.len(), self.cols.index.len());
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = ResizeBilinearBwd {
            rows: self.rows.clone(),
            cols: self.cols.clone(),
            h,
            w,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for ResizeBilinearBwd {
    fn name(&self) -> &'static str {
        "pixclass-resize-bilinear-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _time = crate::profile::scope(self.name());
        let (n, c, _, _) = dims4(l)?;
        let out = dispatch!((s, l) => g; resize_bwd(g, (self.h, self.w), &self.rows, &self.cols));
        Ok((out, Shape::from((n, c, self.h, self.w))))
    }
}
