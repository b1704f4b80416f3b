//! Measures of decoded colour images beside pixel accuracy (issue 22):
//! the error of a decoded image against the true full-colour one, and how
//! colourful an image is. Images are CHW planes of `f32` on the study's
//! `1/256` scale (a byte `v` is `v / 256`).

/// Accumulates the colour error of decoded images against the truth over a
/// split: the mean Euclidean RGB distance per pixel and the PSNR of the
/// mean squared error (peak 1 on the `1/256` scale).
///
/// ```
/// use pixclass_metrics::colour::ColourError;
/// let mut e = ColourError::default();
/// // One 2-pixel image (planes R, G, B): pixel 0 exact, pixel 1 off by
/// // (0.3, 0.4, 0) = distance 0.5.
/// e.add(&[0.1, 0.5, 0.2, 0.6, 0.0, 0.0], &[0.1, 0.2, 0.2, 0.2, 0.0, 0.0], 2);
/// assert!((e.mean_distance().unwrap() - 0.25).abs() < 1e-6);
/// // MSE over 6 values: (0.09 + 0.16) / 6.
/// let psnr = 10.0 * (6.0f64 / 0.25).log10();
/// assert!((e.psnr().unwrap() - psnr).abs() < 1e-5);
/// assert_eq!(ColourError::default().psnr(), None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ColourError {
    distance: f64,
    squared: f64,
    pixels: u64,
}

impl ColourError {
    /// Adds images `pred` and `truth` (the same number of `3·hw` CHW
    /// images, `hw` pixels each; a trailing partial image is ignored).
    pub fn add(&mut self, pred: &[f32], truth: &[f32], hw: usize) {
        let per = 3 * hw;
        if hw == 0 {
            return;
        }
        for (p, t) in pred.chunks_exact(per).zip(truth.chunks_exact(per)) {
            for i in 0..hw {
                let mut d2 = 0.0f64;
                for c in 0..3 {
                    let d = f64::from(p[c * hw + i]) - f64::from(t[c * hw + i]);
                    d2 += d * d;
                }
                self.distance += d2.sqrt();
                self.squared += d2;
                self.pixels += 1;
            }
        }
    }

    /// Mean Euclidean RGB distance per pixel (`None` before any pixel).
    pub fn mean_distance(&self) -> Option<f64> {
        (self.pixels > 0).then(|| self.distance / self.pixels as f64)
    }

    /// `10 log10(1 / MSE)`, the MSE over every channel value (`None` before
    /// any pixel; infinite for a perfect match).
    pub fn psnr(&self) -> Option<f64> {
        (self.pixels > 0).then(|| {
            let mse = self.squared / (3 * self.pixels) as f64;
            10.0 * (1.0 / mse).log10()
        })
    }
}

/// Hasler & Süsstrunk's colourfulness of one CHW image of `hw` pixels
/// (`1/256` scale, computed on the 0..=255 scale their figures use):
/// `sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²)` with `rg = R - G`,
/// `yb = (R + G) / 2 - B`. A grey image scores 0.
///
/// ```
/// use pixclass_metrics::colour::colourfulness;
/// assert_eq!(colourfulness(&[0.5, 0.2, 0.5, 0.2, 0.5, 0.2], 2), 0.0);
/// // A uniform pure red image: rg = 255, yb = 127.5 everywhere, no spread.
/// let red = [255.0 / 256.0, 0.0, 0.0];
/// let want = 0.3 * (255.0f64 * 255.0 + 127.5 * 127.5).sqrt();
/// assert!((colourfulness(&red, 1) - want).abs() < 1e-9);
/// ```
pub fn colourfulness(img: &[f32], hw: usize) -> f64 {
    if hw == 0 || img.len() < 3 * hw {
        return 0.0;
    }
    let v = |c: usize, i: usize| f64::from(img[c * hw + i]) * 256.0;
    let (mut s_rg, mut s_yb, mut q_rg, mut q_yb) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..hw {
        let (r, g, b) = (v(0, i), v(1, i), v(2, i));
        let rg = r - g;
        let yb = 0.5 * (r + g) - b;
        s_rg += rg;
        s_yb += yb;
        q_rg += rg * rg;
        q_yb += yb * yb;
    }
    let n = hw as f64;
    let (m_rg, m_yb) = (s_rg / n, s_yb / n);
    let var_rg = (q_rg / n - m_rg * m_rg).max(0.0);
    let var_yb = (q_yb / n - m_yb * m_yb).max(0.0);
    (var_rg + var_yb).sqrt() + 0.3 * (m_rg * m_rg + m_yb * m_yb).sqrt()
}

/// The mean [`colourfulness`] of the CHW images in `imgs` (`3·hw` values
/// each; 0 for none).
pub fn mean_colourfulness(imgs: &[f32], hw: usize) -> f64 {
    if hw == 0 {
        return 0.0;
    }
    let n = imgs.len() / (3 * hw);
    if n == 0 {
        return 0.0;
    }
    imgs.chunks_exact(3 * hw)
        .map(|im| colourfulness(im, hw))
        .sum::<f64>()
        / n as f64
}
