//! Bilinear resizing: on the CPU a direct kernel (`kernels/resize.rs`: two
//! source rows and two source columns per output), elsewhere two matrix
//! products with interpolation matrices; both backwards are exact.

use candle_core::{Result, Tensor};

/// Bilinear resizing (PyTorch's `F.interpolate(mode="bilinear")`), with an
/// exact backward on every device.
///
/// # Shapes
/// `[N, C, H, W]` -> `[N, C, out_h, out_w]`.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if h == 0 || w == 0 {
        candle_core::bail!("resize_bilinear: nothing to interpolate from a {h}x{w} input");
    }
    if crate::cpu_float(x) {
        return crate::kernels::resize::resize_bilinear(x, out_h, out_w, align_corners);
    }
    resize_bilinear_portable(x, out_h, out_w, align_corners)
}

/// [`resize_bilinear`] from candle primitives (used on CUDA and Metal):
/// two matrix products with interpolation matrices.
///
/// # Shapes
/// As [`resize_bilinear`].
pub fn resize_bilinear_portable(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if h == 0 || w == 0 {
        candle_core::bail!("resize_bilinear: nothing to interpolate from a {h}x{w} input");
    }
    let ah = interpolation_matrix(h, out_h, align_corners, x)?; // [out_h, h]
    let aw = interpolation_matrix(w, out_w, align_corners, x)?; // [out_w, w]
                                                                // Along W: [N·C·H, W] x [W, out_w].
    let y = x.reshape((n * c * h, w))?.matmul(&aw.t()?)?;
    // Along H: [N·C, H, out_w] -> Ah [out_h, H] applied per image.
    let y = y.reshape((n * c, h, out_w))?;
    let y = ah.broadcast_left(n * c)?.matmul(&y)?;
    y.reshape((n, c, out_h, out_w))
}

/// `[out, in]` weights of 1-D linear interpolation, PyTorch's conventions.
fn interpolation_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    like: &Tensor,
) -> Result<Tensor> {
    let mut m = vec![0f64; output * input];
    for o in 0..output {
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
        m[o * input + i0] += 1.0 - l;
        m[o * input + i1] += l;
    }
    Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())
}
