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
    if let Some(same) = unchanged(x, out_h, out_w)? {
        return Ok(same);
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
    if let Some(same) = unchanged(x, out_h, out_w)? {
        return Ok(same);
    }
    let (n, c, h, w) = x.dims4()?;
    let ah = interpolation_matrix(h, out_h, align_corners, x)?; // [out_h, h]
    let aw = interpolation_matrix(w, out_w, align_corners, x)?; // [out_w, w]
                                                                // Along W: [N·C·H, W] x [W, out_w].
    let y = x.reshape((n * c * h, w))?.matmul(&aw.t()?)?;
    // Along H: [N·C, H, out_w] -> Ah [out_h, H] applied per image.
    let y = y.reshape((n * c, h, out_w))?;
    let y = ah.broadcast_left(n * c)?.matmul(&y)?;
    y.reshape((n, c, out_h, out_w))
}

/// `x` itself when it already has the output size; an error for an empty
/// input (nothing to interpolate from); `None` when there is work to do.
fn unchanged(x: &Tensor, out_h: usize, out_w: usize) -> Result<Option<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(Some(x.clone()));
    }
    if h == 0 || w == 0 {
        candle_core::bail!("resize_bilinear: nothing to interpolate from a {h}x{w} input");
    }
    Ok(None)
}

/// `[out, in]` weights of 1-D linear interpolation, PyTorch's conventions
/// (the CPU kernel's source positions and weights, as a dense matrix).
fn interpolation_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    like: &Tensor,
) -> Result<Tensor> {
    let mut m = vec![0f64; output * input];
    let taps = crate::kernels::resize::Taps::new(input, output, align_corners);
    for (o, ((i0, i1), (a, b))) in taps.sources().enumerate() {
        m[o * input + i0] += a;
        m[o * input + i1] += b;
    }
    Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())
}
