//! A fine-tuned run loaded for use: evaluation on a split, and segmenting
//! photos of any size (the fine-tuned mask, or a pretrained model's 21 VOC
//! classes as a coloured overlay with a legend).

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use serde::Serialize;

use pixclass_data::segment::SegSet;
use pixclass_metrics::metric::{thresholded_iou_score, ConfusionMatrix};
use pixclass_models::init::seeded_var_builder;
use pixclass_models::mobilenet::VOC_LABELS;
use pixclass_models::segment::{SegBackbone, SegHead};

use super::task::{foreground, split_metric};
use super::SegTrainConfig;
use crate::checkpoint;
use crate::device::{select_device, DeviceKind};
use crate::error::{Result, TrainError};
use crate::plot::{save_png, tile_grid};
use crate::run_dir::read_json;

/// A fine-tuned model loaded from a run directory.
pub struct LoadedSegmenter {
    /// The run's configuration.
    pub config: SegTrainConfig,
    /// The frozen pretrained model.
    pub backbone: SegBackbone,
    /// The trained head.
    pub head: SegHead,
    /// Its device.
    pub device: Device,
}

/// Loads a run's best checkpoint (else its latest) onto `device`.
pub fn load_segmenter(dir: &Path, device: DeviceKind) -> Result<LoadedSegmenter> {
    let config: SegTrainConfig = read_json(&dir.join("config.json"))?;
    let device = select_device(device, 0)?;
    let path = [checkpoint::BEST, checkpoint::LATEST]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| TrainError::Checkpoint {
            path: dir.join(checkpoint::BEST),
            reason: "no checkpoint in this run directory".into(),
        })?;
    let backbone = SegBackbone::load(config.model, config.weights.as_deref(), &device)?;
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, config.seed, DType::F32, &device);
    let head = SegHead::new(
        backbone.feature_channels(),
        2,
        backbone.align_corners(),
        config.feature_norm,
        vb.pp("head"),
    )?;
    let loaded = checkpoint::load(&path)?;
    checkpoint::restore_vars(&varmap, &loaded.model, &path)?;
    Ok(LoadedSegmenter {
        config,
        backbone,
        head,
        device,
    })
}

impl LoadedSegmenter {
    /// Foreground masks of preprocessed images `idx` of `set`, `[n, S, S]`.
    pub fn predict(&self, set: &SegSet, idx: &[usize]) -> Result<Vec<u8>> {
        let (mean, std) = self.backbone.normalisation();
        let x = set.images_tensor(idx, mean, std, &self.device)?;
        let f = self.backbone.features_t(&x, false)?;
        let margin = self.head.forward_margin(&f, set.size, set.size)?;
        Ok(foreground(&margin)?.into_iter().map(|v| v as u8).collect())
    }
}

/// The validation metrics of a set of masks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MaskMetrics {
    /// The study's thresholded "mIOU" (mean per-image score).
    pub miou_thr: f64,
    /// Foreground IoU from the confusion matrix of the whole set.
    pub iou_fg: f64,
    /// Mean IoU over background and foreground.
    pub miou: f64,
    /// Pixel accuracy.
    pub pixel_acc: f64,
}

/// Metrics of a loaded model on a preprocessed set (in batches of the run's
/// validation batch size).
pub fn evaluate_masks(model: &LoadedSegmenter, set: &SegSet) -> Result<MaskMetrics> {
    let chunk = model.config.val_batch_size.clamp(1, 32);
    score_masks(set, chunk, &model.config.preprocess.rule, |idx| {
        model.predict(set, idx)
    })
}

/// The metrics of the 0/1 masks `predict` returns for chunks of `set`
/// (`[n, S, S]` in order), against the set's masks: the study's
/// thresholded mIOU, and foreground IoU, mIoU and pixel accuracy from one
/// confusion matrix of the whole set. A set without foreground pixels
/// (under `rule`) is an error, not a perfect score.
pub fn score_masks(
    set: &SegSet,
    chunk: usize,
    rule: &pixclass_data::segment::MaskRule,
    mut predict: impl FnMut(&[usize]) -> Result<Vec<u8>>,
) -> Result<MaskMetrics> {
    set.require_foreground("validation", rule)?;
    let px = set.size * set.size;
    let mut cm = ConfusionMatrix::new(2);
    let mut score = 0.0;
    let all: Vec<usize> = (0..set.len()).collect();
    for idx in all.chunks(chunk.max(1)) {
        let pred: Vec<u32> = predict(idx)?.into_iter().map(u32::from).collect();
        for (k, &i) in idx.iter().enumerate() {
            let truth: Vec<u32> = set.mask_bytes(i).iter().map(|&m| m as u32).collect();
            let p = &pred[k * px..(k + 1) * px];
            cm.add(&truth, p);
            score += thresholded_iou_score(p, &truth);
        }
    }
    Ok(MaskMetrics {
        miou_thr: score / set.len().max(1) as f64,
        iou_fg: split_metric(cm.iou()[1], "foreground IoU")?,
        miou: split_metric(cm.mean_iou(), "mean IoU")?,
        pixel_acc: split_metric(cm.pixel_accuracy(), "pixel accuracy")?,
    })
}

/// Segments a photo of any size with a fine-tuned model (run at
/// `size x size`, the mask resized back) and writes photo | overlay.
/// Returns the photo's size and the foreground fraction.
pub fn predict_photo(
    model: &LoadedSegmenter,
    input: &Path,
    output: &Path,
    size: u32,
) -> Result<(u32, u32, f64)> {
    check_photo_job(input, output, size)?;
    let photo = pixclass_data::image_io::open_image(input)?.to_rgb8();
    let (w, h) = photo.dimensions();
    let set = SegSet::from_photo(&photo, size);
    let mask = model.predict(&set, &[0])?;
    let mut fg = 0usize;
    let overlay = RgbImage::from_fn(w, h, |x, y| {
        let p = photo.get_pixel(x, y).0;
        if mask[set.nearest_index(x, y, w, h)] != 0 {
            fg += 1;
            Rgb([((p[0] as u16 + 2 * 255) / 3) as u8, p[1] / 2, p[2] / 2])
        } else {
            Rgb(p.map(|v| v / 3))
        }
    });
    let out = tile_grid(&[vec![photo, overlay]], 1, 4);
    save_png(&out, output)?;
    Ok((w, h, fg as f64 / (w as f64 * h as f64)))
}

/// The VOC colour map (PASCAL's bit-interleaved palette).
fn voc_colour(class: usize) -> [u8; 3] {
    let mut c = [0u8; 3];
    let mut id = class;
    for shift in (0..8).rev() {
        for (ch, v) in c.iter_mut().enumerate() {
            *v |= (((id >> ch) & 1) as u8) << shift;
        }
        id >>= 3;
        if id == 0 {
            break;
        }
    }
    c
}

/// Runs a 21-class model on a photo and writes photo | overlay | legend.
///
/// Returns the classes found with their shares ("background only" when
/// none).
pub fn predict_voc(
    net: &SegBackbone,
    input: &Path,
    output: &Path,
    size: u32,
    dev: &Device,
) -> Result<String> {
    check_photo_job(input, output, size)?;
    let photo = pixclass_data::image_io::open_image(input)?.to_rgb8();
    let (w, h) = photo.dimensions();
    let (mean, std) = net.normalisation();
    let set = SegSet::from_photo(&photo, size);
    let x = set.images_tensor(&[0], mean, std, dev)?;
    let logits = net.forward(&x)?;
    let classes: Vec<u8> = pixclass_ops::argmax_classes(&logits)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    // Upsample the class map (nearest) to the photo and blend.
    let overlay = RgbImage::from_fn(w, h, |x, y| {
        let c = classes[set.nearest_index(x, y, w, h)] as usize;
        let p = photo.get_pixel(x, y).0;
        if c == 0 {
            Rgb(p.map(|v| v / 2))
        } else {
            let k = voc_colour(c);
            Rgb([0, 1, 2].map(|i| ((p[i] as u16 + 2 * k[i] as u16) / 3) as u8))
        }
    });
    let mut counts = [0usize; 21];
    for &c in &classes {
        if let Some(n) = counts.get_mut(c as usize) {
            *n += 1;
        }
    }
    // "<class> <share> %" for every class found (background left out).
    let found: Vec<(String, [u8; 3])> = (1..21)
        .filter(|&c| counts[c] > 0)
        .map(|c| {
            let share = 100.0 * counts[c] as f64 / classes.len() as f64;
            (format!("{} {share:.1} %", VOC_LABELS[c]), voc_colour(c))
        })
        .collect();
    let legend = crate::plot::legend(&found, h)?;
    let mut out = RgbImage::from_pixel(2 * w + legend.width() + 8, h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &photo, 0, 0);
    image::imageops::replace(&mut out, &overlay, (w + 4) as i64, 0);
    image::imageops::replace(&mut out, &legend, (2 * w + 8) as i64, 0);
    save_png(&out, output)?;
    Ok(if found.is_empty() {
        "background only".to_string()
    } else {
        found
            .into_iter()
            .map(|(label, _)| label)
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The checks of a photo prediction, before any work: an input side of
/// 32..=2048 (the network's activations grow with its square; the largest
/// are estimated against the memory available), a PNG output that is not
/// the input.
fn check_photo_job(input: &Path, output: &Path, size: u32) -> Result<()> {
    crate::run_dir::in_range("--size", size, 32, 2048)?;
    // A ResNet-101's widest activations: ~2048 channels at 1/8 of the side,
    // a few alive at once; the full-resolution logits.
    let s = u64::from(size);
    crate::run_dir::check_memory(
        "this prediction",
        4 * (3 * 2048 * s.div_ceil(8).pow(2) + 21 * s * s),
    )?;
    Ok(pixclass_data::image_io::check_png_output(output, &[input])?)
}
