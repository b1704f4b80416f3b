//! Decoding, resizing and thresholding image/mask pairs into a preprocessed
//! set (in parallel), and its tensors.

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use rayon::prelude::*;

use super::{Blob, MaskResize, Preprocess, SegSample};
use crate::error::{DataError, Result};

fn decode(blob: &Blob) -> Result<image::DynamicImage> {
    crate::image_io::decode_image(&blob.read()?, &blob.name())
}

/// One preprocessed pair: RGB bytes `[S, S, 3]` and a 0/1 mask `[S, S]`.
pub fn load_pair(sample: &SegSample, pre: &Preprocess) -> Result<(Vec<u8>, Vec<u8>)> {
    let img = decode(&sample.image)?;
    let mask = decode(&sample.mask)?;
    if (img.width(), img.height()) != (mask.width(), mask.height()) {
        return Err(DataError::Invalid(format!(
            "{} is {}x{} but its mask {} is {}x{}",
            sample.image.name(),
            img.width(),
            img.height(),
            sample.mask.name(),
            mask.width(),
            mask.height()
        )));
    }
    let s = pre.size;
    let rgb = image::imageops::resize(&img.to_rgb8(), s, s, FilterType::Triangle).into_raw();
    let filter = match pre.mask_resize {
        MaskResize::Bilinear => FilterType::Triangle,
        MaskResize::Nearest => FilterType::Nearest,
    };
    let grey = matches!(
        mask.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    let labels = if grey {
        let m = image::imageops::resize(&mask.to_luma8(), s, s, filter).into_raw();
        m.iter()
            .map(|&v| match pre.rule.value {
                Some(fg) => u8::from(v == fg),
                None => u8::from(v != 0),
            })
            .collect()
    } else {
        let m = image::imageops::resize(&mask.to_rgb8(), s, s, filter).into_raw();
        m.chunks_exact(3)
            .map(|p| u8::from(p == pre.rule.colour))
            .collect()
    };
    Ok((rgb, labels))
}

/// A preprocessed split held as bytes: `N` RGB images `[S, S, 3]` and 0/1
/// masks `[S, S]`.
#[derive(Debug, Clone)]
pub struct SegSet {
    /// Sample ids, in order.
    pub ids: Vec<String>,
    /// Side `S`.
    pub size: usize,
    /// RGB bytes, `N·S·S·3`.
    pub images: Vec<u8>,
    /// Masks (1 = foreground), `N·S·S`.
    pub masks: Vec<u8>,
    /// Samples left out with `skip_bad`, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl SegSet {
    /// An error unless some mask of this set has a foreground pixel (under
    /// `rule`): a split without foreground would score a perfect, empty
    /// "mIOU". `what` names the split in the message.
    pub fn require_foreground(&self, what: &str, rule: &super::MaskRule) -> Result<()> {
        if self.foreground_fraction() > 0.0 {
            return Ok(());
        }
        Err(DataError::Invalid(format!(
            "no mask of the {what} split has a foreground pixel under the rule {rule:?}: \
             check --fg-colour / --fg-value against your masks"
        )))
    }

    /// One photo of any size as a set of one `size x size` image (bilinear,
    /// like the data sets) with an empty mask, for prediction.
    pub fn from_photo(photo: &image::RgbImage, size: u32) -> Self {
        let small = image::imageops::resize(photo, size, size, FilterType::Triangle);
        SegSet {
            ids: vec!["photo".into()],
            size: size as usize,
            images: small.into_raw(),
            masks: vec![0; (size * size) as usize],
            skipped: vec![],
        }
    }

    /// For pixel `(x, y)` of a `w x h` photo, the index of the nearest pixel
    /// of its `S x S` resized version (to map predictions back).
    pub fn nearest_index(&self, x: u32, y: u32, w: u32, h: u32) -> usize {
        let s = self.size as u64;
        let sx = (x as u64 * s / w.max(1) as u64) as usize;
        let sy = (y as u64 * s / h.max(1) as u64) as usize;
        sy * self.size + sx
    }

    /// Decodes and preprocesses `samples` in parallel. With `skip_bad`, a
    /// sample that fails (unreadable, size mismatch) is skipped and
    /// recorded; otherwise its error is returned.
    pub fn load(samples: &[SegSample], pre: &Preprocess, skip_bad: bool) -> Result<Self> {
        if pre.size == 0 {
            return Err(DataError::Invalid("image size must be at least 1".into()));
        }
        let results: Vec<Result<(Vec<u8>, Vec<u8>)>> =
            samples.par_iter().map(|s| load_pair(s, pre)).collect();
        let side = pre.size as usize;
        let mut set = SegSet {
            ids: Vec::with_capacity(samples.len()),
            size: side,
            images: Vec::with_capacity(samples.len() * side * side * 3),
            masks: Vec::with_capacity(samples.len() * side * side),
            skipped: Vec::new(),
        };
        for (s, r) in samples.iter().zip(results) {
            match r {
                Ok((rgb, mask)) => {
                    set.ids.push(s.id.clone());
                    set.images.extend_from_slice(&rgb);
                    set.masks.extend_from_slice(&mask);
                }
                Err(e) if skip_bad => {
                    tracing::warn!("skipping {}: {e}", s.id);
                    set.skipped.push((s.id.clone(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(set)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Fraction of foreground pixels.
    pub fn foreground_fraction(&self) -> f64 {
        let fg: usize = self.masks.iter().map(|&m| m as usize).sum();
        fg as f64 / self.masks.len().max(1) as f64
    }

    /// RGB bytes of sample `i`, `[S, S, 3]`.
    pub fn image_bytes(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.images[i * n..(i + 1) * n]
    }

    /// The mask of sample `i`, `[S, S]`.
    pub fn mask_bytes(&self, i: usize) -> &[u8] {
        let n = self.size * self.size;
        &self.masks[i * n..(i + 1) * n]
    }

    /// Images `idx` as `[n, 3, S, S]` f32, `(x/255 - mean) / std`.
    pub fn images_tensor(
        &self,
        idx: &[usize],
        mean: [f32; 3],
        std: [f32; 3],
        device: &Device,
    ) -> Result<Tensor> {
        let s = self.size;
        let plane = s * s;
        let mut v = vec![0f32; idx.len() * 3 * plane];
        for (k, &i) in idx.iter().enumerate() {
            let src = self.image_bytes(i);
            let dst = &mut v[k * 3 * plane..(k + 1) * 3 * plane];
            for p in 0..plane {
                for c in 0..3 {
                    dst[c * plane + p] = (src[p * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
                }
            }
        }
        Ok(Tensor::from_vec(v, (idx.len(), 3, s, s), device)?)
    }

    /// Masks `idx` as `[n, S, S]` u32 class ids (0 background, 1 foreground).
    pub fn masks_tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let s = self.size;
        let mut v = Vec::with_capacity(idx.len() * s * s);
        for &i in idx {
            v.extend(self.mask_bytes(i).iter().map(|&m| m as u32));
        }
        Ok(Tensor::from_vec(v, (idx.len(), s, s), device)?)
    }
}
