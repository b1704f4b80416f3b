//! Colour palettes and per-pixel colour classes (SPEC §A.2).
//!
//! A [`Palette`] is K RGB centres on the 1/256 scale. The class of a pixel is
//! the index of its nearest centre by Euclidean distance in RGB (ties: lowest
//! index), computed exactly like the reference (`np.linalg.norm` in f64,
//! `np.argmin`). [`kmeans`] recomputes a palette with k-means++ and Lloyd.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{DataError, Result};

/// Pixels per parallel partial sum: a fixed partition keeps every result
/// independent of thread scheduling.
const CHUNK: usize = 1 << 16;

/// K colour centres, RGB on the 1/256 scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    centres: Vec<[f64; 3]>,
    /// The k-means distortion stored with the palette, when known.
    pub distortion: Option<f64>,
}

impl Palette {
    /// A palette from centres; at least one is required.
    pub fn new(centres: Vec<[f64; 3]>, distortion: Option<f64>) -> Result<Self> {
        if centres.is_empty() {
            return Err(DataError::Invalid(
                "a palette needs at least one colour".into(),
            ));
        }
        Ok(Self {
            centres,
            distortion,
        })
    }

    /// Parses the text format of `assets/palettes/*.txt`: one `r g b` line per
    /// colour, `#` comments, and an optional `# distortion: X` line.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let mut centres = Vec::new();
        let mut distortion = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(v) = comment.trim().strip_prefix("distortion:") {
                    distortion =
                        Some(v.trim().parse::<f64>().map_err(|e| DataError::BadPalette {
                            source_name: source_name.into(),
                            line: i + 1,
                            reason: format!("bad distortion {v:?}: {e}"),
                        })?);
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let vals: Vec<&str> = line.split_whitespace().collect();
            if vals.len() != 3 {
                return Err(DataError::BadPalette {
                    source_name: source_name.into(),
                    line: i + 1,
                    reason: format!("expected 3 numbers (r g b), found {}", vals.len()),
                });
            }
            let mut c = [0f64; 3];
            for (slot, v) in c.iter_mut().zip(&vals) {
                let x = v.parse::<f64>().map_err(|e| DataError::BadPalette {
                    source_name: source_name.into(),
                    line: i + 1,
                    reason: format!("{v:?} is not a number: {e}"),
                })?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(DataError::BadPalette {
                        source_name: source_name.into(),
                        line: i + 1,
                        reason: format!("{x} is outside [0, 1]"),
                    });
                }
                *slot = x;
            }
            centres.push(c);
        }
        if centres.is_empty() {
            return Err(DataError::BadPalette {
                source_name: source_name.into(),
                line: 0,
                reason: "no colours".into(),
            });
        }
        Ok(Self {
            centres,
            distortion,
        })
    }

    /// Reads a palette file.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes the text format read by [`Palette::parse`].
    pub fn to_text(&self, comment: &str) -> String {
        let mut s = String::new();
        for line in comment.lines() {
            s.push_str(&format!("# {line}\n"));
        }
        if let Some(d) = self.distortion {
            s.push_str(&format!("# distortion: {d:?}\n"));
        }
        for c in &self.centres {
            s.push_str(&format!("{:?} {:?} {:?}\n", c[0], c[1], c[2]));
        }
        s
    }

    /// One of the reference palettes (16, 24 or 32 colours, cat 7 = horses)
    /// compiled into the binary.
    pub fn reference(k: usize) -> Result<Self> {
        let text = match k {
            16 => crate::embedded::PALETTE_16,
            24 => crate::embedded::PALETTE_24,
            32 => crate::embedded::PALETTE_32,
            _ => {
                return Err(DataError::Invalid(format!(
                    "no reference palette with {k} colours (16, 24 and 32 exist; \
                     build others with `pixclass colours kmeans --k {k}`)"
                )))
            }
        };
        Self::parse(text, &format!("reference palette kmeans{k}_cat7"))
    }

    /// Number of colours K.
    pub fn len(&self) -> usize {
        self.centres.len()
    }

    /// Always false (a palette has at least one colour).
    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    /// The centres.
    pub fn centres(&self) -> &[[f64; 3]] {
        &self.centres
    }

    /// Class of one RGB pixel (1/256 scale): nearest centre by Euclidean
    /// distance, lowest index on ties, computed in f64 like the reference.
    pub fn nearest(&self, rgb: [f64; 3]) -> u32 {
        let mut best = 0u32;
        let mut best_d = f64::INFINITY;
        for (k, c) in self.centres.iter().enumerate() {
            let dr = rgb[0] - c[0];
            let dg = rgb[1] - c[1];
            let db = rgb[2] - c[2];
            let d = (dr * dr + dg * dg + db * db).sqrt();
            if d < best_d {
                best_d = d;
                best = k as u32;
            }
        }
        best
    }

    /// Classes of CHW images given as bytes (0..=255, scaled by 1/256 here).
    /// `planes` is `n * 3 * hw` bytes; the result has `n * hw` classes.
    pub fn quantize_bytes(&self, planes: &[u8], hw: usize) -> Vec<u32> {
        let n = planes.len() / (3 * hw);
        let mut out = vec![0u32; n * hw];
        out.par_chunks_mut(hw).enumerate().for_each(|(i, o)| {
            let img = &planes[i * 3 * hw..(i + 1) * 3 * hw];
            for (p, slot) in o.iter_mut().enumerate() {
                let rgb = [
                    img[p] as f64 / 256.0,
                    img[hw + p] as f64 / 256.0,
                    img[2 * hw + p] as f64 / 256.0,
                ];
                *slot = self.nearest(rgb);
            }
        });
        out
    }

    /// Vectorised quantisation on tensors.
    ///
    /// # Shapes
    /// `rgb`: `[N, 3, H, W]` float (1/256 scale) -> `[N, H, W]` u32 classes.
    /// Distances are computed in the input's dtype (pass f64 for results
    /// identical to [`Palette::nearest`]).
    pub fn quantize_tensor(&self, rgb: &Tensor) -> Result<Tensor> {
        let (_n, c, _h, _w) = rgb.dims4()?;
        if c != 3 {
            return Err(DataError::Invalid(format!(
                "quantize_tensor expects [N, 3, H, W], got {:?}",
                rgb.dims()
            )));
        }
        let k = self.len();
        let centres = self.centres_tensor(rgb.device())?.to_dtype(rgb.dtype())?;
        // [N,1,3,H,W] - [1,K,3,1,1] -> squared distances [N,K,H,W].
        let x = rgb.unsqueeze(1)?;
        let cs = centres.reshape((1, k, 3, 1, 1))?;
        let d2 = x.broadcast_sub(&cs)?.sqr()?.sum(2)?;
        Ok(d2.sqrt()?.argmin(1)?)
    }

    /// The palette as a `[K, 3]` f32 tensor.
    pub fn centres_tensor(&self, device: &Device) -> Result<Tensor> {
        let flat: Vec<f64> = self.centres.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (self.len(), 3), device)?.to_dtype(DType::F32)?)
    }

    /// Inverse of quantisation: a class map to an RGB image.
    ///
    /// # Shapes
    /// `classes`: `[N, H, W]` integer -> `[N, 3, H, W]` f32.
    pub fn classes_to_rgb(&self, classes: &Tensor) -> Result<Tensor> {
        let (n, h, w) = classes.dims3()?;
        let centres = self.centres_tensor(classes.device())?;
        let flat = classes.flatten_all()?.to_dtype(DType::U32)?;
        let rgb = centres.index_select(&flat, 0)?; // [N*H*W, 3]
        Ok(rgb
            .reshape((n, h, w, 3))?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }

    /// Mean Euclidean distance from each pixel to its nearest centre (the
    /// distortion `scipy.cluster.vq.kmeans` reports). `pixels` are RGB
    /// triples on the 1/256 scale.
    pub fn distortion_of(&self, pixels: &[[f64; 3]]) -> f64 {
        // Fixed chunks summed in order: the result does not depend on thread
        // scheduling.
        let sum: f64 = pixels
            .par_chunks(CHUNK)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|p| {
                        let c = self.centres[self.nearest(*p) as usize];
                        ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2))
                            .sqrt()
                    })
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        sum / pixels.len().max(1) as f64
    }
}

/// RGB triples (1/256 scale) of every pixel of CHW byte images.
pub fn pixels_of(planes: &[u8], hw: usize) -> Vec<[f64; 3]> {
    let n = planes.len() / (3 * hw);
    let mut out = Vec::with_capacity(n * hw);
    for i in 0..n {
        let img = &planes[i * 3 * hw..(i + 1) * 3 * hw];
        for p in 0..hw {
            out.push([
                img[p] as f64 / 256.0,
                img[hw + p] as f64 / 256.0,
                img[2 * hw + p] as f64 / 256.0,
            ]);
        }
    }
    out
}

/// Options of [`kmeans`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct KMeansConfig {
    /// Number of colours.
    pub k: usize,
    /// Seed of the k-means++ initialisation.
    pub seed: u64,
    /// Maximum Lloyd iterations.
    pub max_iter: usize,
    /// Stop when the distortion improves by less than this (relative).
    pub tol: f64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        Self {
            k: 24,
            seed: 0,
            max_iter: 100,
            tol: 1e-6,
        }
    }
}

/// k-means++ initialisation followed by Lloyd iterations. Returns the palette
/// (with its distortion: mean Euclidean distance to the nearest centre) and
/// the number of iterations run. Centres are sorted by luminance so palettes
/// are comparable across seeds.
pub fn kmeans(pixels: &[[f64; 3]], cfg: KMeansConfig) -> Result<(Palette, usize)> {
    if cfg.k == 0 {
        return Err(DataError::Invalid("k must be at least 1".into()));
    }
    if pixels.len() < cfg.k {
        return Err(DataError::Invalid(format!(
            "k-means with k = {} needs at least as many pixels, got {}",
            cfg.k,
            pixels.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let d2 = |a: &[f64; 3], b: &[f64; 3]| {
        (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
    };
    // k-means++: first centre uniform, then proportional to squared distance.
    let mut centres = vec![pixels[rng.random_range(0..pixels.len())]];
    let mut dist: Vec<f64> = pixels.par_iter().map(|p| d2(p, &centres[0])).collect();
    while centres.len() < cfg.k {
        let total: f64 = dist.iter().sum();
        let next = if total <= 0.0 {
            pixels[rng.random_range(0..pixels.len())]
        } else {
            let mut t = rng.random::<f64>() * total;
            let mut idx = pixels.len() - 1;
            for (i, d) in dist.iter().enumerate() {
                t -= d;
                if t <= 0.0 {
                    idx = i;
                    break;
                }
            }
            pixels[idx]
        };
        centres.push(next);
        dist.par_iter_mut()
            .zip(pixels.par_iter())
            .for_each(|(d, p)| *d = d.min(d2(p, &next)));
    }
    let mut palette = Palette::new(centres, None)?;
    let mut prev = f64::INFINITY;
    let mut iters = 0;
    for it in 0..cfg.max_iter {
        iters = it + 1;
        let k = palette.len();
        let partials: Vec<(Vec<[f64; 3]>, Vec<usize>)> = pixels
            .par_chunks(CHUNK)
            .map(|chunk| {
                let mut s = vec![[0f64; 3]; k];
                let mut c = vec![0usize; k];
                for p in chunk {
                    let j = palette.nearest(*p) as usize;
                    for ch in 0..3 {
                        s[j][ch] += p[ch];
                    }
                    c[j] += 1;
                }
                (s, c)
            })
            .collect();
        let mut sums = vec![[0f64; 3]; k];
        let mut counts = vec![0usize; k];
        for (s, c) in &partials {
            for j in 0..k {
                for ch in 0..3 {
                    sums[j][ch] += s[j][ch];
                }
                counts[j] += c[j];
            }
        }
        let new: Vec<[f64; 3]> = (0..k)
            .map(|j| {
                if counts[j] == 0 {
                    palette.centres[j] // keep an empty cluster where it is
                } else {
                    let n = counts[j] as f64;
                    [sums[j][0] / n, sums[j][1] / n, sums[j][2] / n]
                }
            })
            .collect();
        palette.centres = new;
        let dist = palette.distortion_of(pixels);
        if prev.is_finite() && (prev - dist) <= cfg.tol * prev {
            break;
        }
        prev = dist;
    }
    palette.centres.sort_by(|a, b| {
        let la = 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2];
        let lb = 0.299 * b[0] + 0.587 * b[1] + 0.114 * b[2];
        la.total_cmp(&lb)
    });
    palette.distortion = Some(palette.distortion_of(pixels));
    Ok((palette, iters))
}
