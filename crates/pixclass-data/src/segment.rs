//! Segmentation data (SPEC §B.1): Oxford-17 photos with trimaps, a generic
//! `images/` + `masks/` folder layout for users' own data, and the embedded
//! sample; decoded, resized and thresholded to binary foreground masks in
//! parallel, keeping only the resized bytes in memory.
//!
//! Layouts, in the order [`SegSource::discover`] tries them under a data
//! directory `D`:
//! - Oxford-17: `D/flowers17/` or `D/` holding `jpg/` and `trimaps/`, with a
//!   split from `splits.json` (`{"train": [ids], "val": [ids]}`) or the
//!   published `datasplits.mat` (train = trn1+trn2+trn3 with duplicates,
//!   val = val1, keeping ids that have a trimap);
//! - folders: `D/train/{images,masks}` + `D/val/{images,masks}`, or
//!   `D/{images,masks}` split deterministically (every 4th stem is val).
//!   Masks share the image's stem, with any image extension.
//!
//! A mask is an RGB/palette PNG whose foreground has one colour (default
//! `(128, 0, 0)`, VOC's first class: Oxford-17's flower) or a single-channel
//! PNG whose foreground has one value (default: any non-zero value).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Oxford-17's flower colour in the trimaps (and VOC's first class).
pub const FLOWER: [u8; 3] = [128, 0, 0];
/// ImageNet normalisation mean (SPEC §B.1).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const IMAGE_EXTS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// The embedded Oxford-17 sample: 48 photos with trimaps (see
/// `assets/flowers17/make_sample.py`).
const EMBEDDED_TAR: &[u8] = include_bytes!("../../../assets/flowers17/sample.tar");

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    /// A file on disk.
    File(PathBuf),
    /// An entry of the embedded sample.
    Embedded(String),
}

impl Blob {
    /// A name for messages.
    pub fn name(&self) -> String {
        match self {
            Blob::File(p) => p.display().to_string(),
            Blob::Embedded(n) => format!("<embedded>/{n}"),
        }
    }

    fn read(&self) -> Result<Vec<u8>> {
        match self {
            Blob::File(p) => std::fs::read(p).map_err(|e| DataError::io(p, e)),
            Blob::Embedded(n) => embedded_entries()?
                .get(n)
                .cloned()
                .ok_or_else(|| DataError::Invalid(format!("no embedded file {n}"))),
        }
    }
}

fn embedded_entries() -> Result<&'static HashMap<String, Vec<u8>>> {
    static ENTRIES: OnceLock<std::result::Result<HashMap<String, Vec<u8>>, String>> =
        OnceLock::new();
    ENTRIES
        .get_or_init(|| {
            let mut out = HashMap::new();
            let mut ar = tar::Archive::new(EMBEDDED_TAR);
            for e in ar.entries().map_err(|e| e.to_string())? {
                let mut e = e.map_err(|e| e.to_string())?;
                let name = e.path().map_err(|e| e.to_string())?.display().to_string();
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).map_err(|e| e.to_string())?;
                out.insert(name, buf);
            }
            Ok(out)
        })
        .as_ref()
        .map_err(|e| DataError::Invalid(format!("embedded flowers sample: {e}")))
}

/// One image with its mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSample {
    /// The stem (`image_0001`).
    pub id: String,
    /// The photo.
    pub image: Blob,
    /// The mask.
    pub mask: Blob,
}

/// Which mask pixels are foreground.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskRule {
    /// Foreground colour of RGB and palette masks.
    pub colour: [u8; 3],
    /// Foreground value of single-channel masks (`None`: any non-zero).
    pub value: Option<u8>,
}

impl Default for MaskRule {
    fn default() -> Self {
        Self {
            colour: FLOWER,
            value: None,
        }
    }
}

/// How masks are resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum MaskResize {
    /// Bilinear on the colours, then the rule (SPEC §B.1: blended edge
    /// pixels become background).
    Bilinear,
    /// Nearest neighbour: every resized pixel keeps a true label.
    Nearest,
}

/// Preprocessing of image/mask pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Output side: both are resized to `size x size` (aspect not kept).
    pub size: u32,
    /// How masks are resized.
    pub mask_resize: MaskResize,
    /// Foreground rule.
    pub rule: MaskRule,
}

impl Default for Preprocess {
    /// SPEC §B.1: 224x224, bilinear masks, flower colour.
    fn default() -> Self {
        Self {
            size: 224,
            mask_resize: MaskResize::Bilinear,
            rule: MaskRule::default(),
        }
    }
}

/// Train and validation samples of a data set.
#[derive(Debug, Clone)]
pub struct SegSplits {
    /// Training samples (may repeat, like the reference's trn1+trn2+trn3).
    pub train: Vec<SegSample>,
    /// Validation samples.
    pub val: Vec<SegSample>,
    /// What this is, for reports (`Oxford-17 at D, split splits.json`).
    pub description: String,
}

impl SegSplits {
    /// True for the sample compiled into the binary.
    pub fn is_embedded(&self) -> bool {
        self.train
            .iter()
            .chain(&self.val)
            .any(|s| matches!(s.image, Blob::Embedded(_)))
    }

    /// Keeps the first `n` samples of each split.
    pub fn limit(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.train.truncate(n);
            self.val.truncate(n);
            self.description
                .push_str(&format!(" (first {n} per split)"));
        }
        self
    }
}

/// Where segmentation data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegSource {
    /// Oxford-17 under `dir` (holding `jpg/` and `trimaps/`).
    Oxford17 {
        /// The folder.
        dir: PathBuf,
    },
    /// The `images/` + `masks/` layout under `dir`.
    Folder {
        /// The folder.
        dir: PathBuf,
    },
    /// The embedded 48-image Oxford-17 sample.
    Embedded,
}

impl SegSource {
    /// The segmentation data a command should use
    /// ([`crate::paths::locate`]): `--embedded`, what the data directory
    /// holds, or the embedded Oxford-17 sample when the default `./data`
    /// holds none.
    pub fn resolve(data_dir: Option<&Path>, embedded: bool) -> Result<Self> {
        let found = crate::paths::locate(
            data_dir,
            embedded,
            |dir| {
                Self::discover(dir).ok_or_else(|| {
                    DataError::Invalid(format!(
                        "no segmentation data under {}: expected flowers17/ (jpg/ + trimaps/ + splits.json or datasplits.mat) \
                         or images/ + masks/ (`pixclass data fetch flowers17`)",
                        dir.display()
                    ))
                })
            },
            "36 train / 12 val Oxford-17 images",
            "pixclass data fetch flowers17",
        )?;
        Ok(found.unwrap_or(SegSource::Embedded))
    }

    /// Finds a segmentation data set under `data_dir` (see the module
    /// documentation for the order).
    pub fn discover(data_dir: &Path) -> Option<Self> {
        for dir in [data_dir.join("flowers17"), data_dir.to_path_buf()] {
            if dir.join("jpg").is_dir() && dir.join("trimaps").is_dir() {
                return Some(SegSource::Oxford17 { dir });
            }
        }
        let folder = data_dir.join("images").is_dir()
            || (data_dir.join("train/images").is_dir() && data_dir.join("val/images").is_dir());
        folder.then(|| SegSource::Folder {
            dir: data_dir.to_path_buf(),
        })
    }

    /// The train/val samples.
    pub fn splits(&self) -> Result<SegSplits> {
        match self {
            SegSource::Oxford17 { dir } => oxford17_splits(dir),
            SegSource::Folder { dir } => folder_splits(dir),
            SegSource::Embedded => embedded_splits(),
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            SegSource::Oxford17 { dir } => format!("Oxford-17 at {}", dir.display()),
            SegSource::Folder { dir } => format!("image/mask folders at {}", dir.display()),
            SegSource::Embedded => "embedded Oxford-17 sample (36 train / 12 val)".into(),
        }
    }
}

#[derive(Deserialize)]
struct SplitsJson {
    train: Vec<String>,
    val: Vec<String>,
}

fn parse_splits_json(bytes: &[u8], name: &str) -> Result<SplitsJson> {
    serde_json::from_slice(bytes).map_err(|e| {
        DataError::Invalid(format!(
            "{name}: not a splits file ({{\"train\": [ids], \"val\": [ids]}}): {e}"
        ))
    })
}

/// Oxford-17 samples of `dir` with the split of `dir/splits.json`, else of
/// `dir/datasplits.mat` (the reference's trn1+trn2+trn3 / val1).
pub fn oxford17_splits(dir: &Path) -> Result<SegSplits> {
    let sample = |id: &str| SegSample {
        id: id.to_string(),
        image: Blob::File(dir.join("jpg").join(format!("{id}.jpg"))),
        mask: Blob::File(dir.join("trimaps").join(format!("{id}.png"))),
    };
    let json = dir.join("splits.json");
    let mat = dir.join("datasplits.mat");
    if json.is_file() {
        let bytes = std::fs::read(&json).map_err(|e| DataError::io(&json, e))?;
        let s = parse_splits_json(&bytes, &json.display().to_string())?;
        return Ok(SegSplits {
            train: s.train.iter().map(|i| sample(i)).collect(),
            val: s.val.iter().map(|i| sample(i)).collect(),
            description: format!("Oxford-17 at {}, split splits.json", dir.display()),
        });
    }
    if mat.is_file() {
        let bytes = std::fs::read(&mat).map_err(|e| DataError::io(&mat, e))?;
        let vars = crate::matfile::read_mat(&bytes)
            .map_err(|reason| DataError::Invalid(format!("{}: {reason}", mat.display())))?;
        let ids = |names: &[&str]| -> Result<Vec<SegSample>> {
            let mut out = Vec::new();
            for n in names {
                let v = vars.get(*n).ok_or_else(|| {
                    DataError::Invalid(format!("{}: no variable {n}", mat.display()))
                })?;
                for &x in v {
                    let id = format!("image_{:04}", x as u32);
                    // Only images with a trimap (848 of 1360 in the official set).
                    if dir.join("trimaps").join(format!("{id}.png")).is_file() {
                        out.push(sample(&id));
                    }
                }
            }
            Ok(out)
        };
        return Ok(SegSplits {
            train: ids(&["trn1", "trn2", "trn3"])?,
            val: ids(&["val1"])?,
            description: format!(
                "Oxford-17 at {}, reference split datasplits.mat (trn1+trn2+trn3 / val1)",
                dir.display()
            ),
        });
    }
    Err(DataError::MissingFile {
        path: json,
        hint: format!(
            "Oxford-17 needs a split: splits.json or the published datasplits.mat in {} \
             (`pixclass data fetch flowers17`)",
            dir.display()
        ),
    })
}

/// The embedded sample's samples.
pub fn embedded_splits() -> Result<SegSplits> {
    let entries = embedded_entries()?;
    let s = parse_splits_json(
        entries
            .get("splits.json")
            .ok_or_else(|| DataError::Invalid("embedded sample has no splits.json".into()))?,
        "<embedded>/splits.json",
    )?;
    let sample = |id: &String| SegSample {
        id: id.clone(),
        image: Blob::Embedded(format!("jpg/{id}.jpg")),
        mask: Blob::Embedded(format!("trimaps/{id}.png")),
    };
    Ok(SegSplits {
        train: s.train.iter().map(sample).collect(),
        val: s.val.iter().map(sample).collect(),
        description: SegSource::Embedded.describe(),
    })
}

/// Stem -> path of the image files in `dir`.
fn stems(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = BTreeMap::new();
    for entry in rd {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if ext.is_some_and(|e| IMAGE_EXTS.contains(&e.as_str())) {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.insert(stem.to_string(), path.clone());
            }
        }
    }
    Ok(out)
}

/// Pairs `dir/images/*` with `dir/masks/*` by stem; an image without a mask
/// is an error naming it.
fn pair_folder(dir: &Path) -> Result<Vec<SegSample>> {
    let images = stems(&dir.join("images"))?;
    let masks = stems(&dir.join("masks"))?;
    images
        .into_iter()
        .map(|(id, image)| {
            let mask = masks.get(&id).ok_or_else(|| DataError::MissingFile {
                path: dir.join("masks").join(format!("{id}.png")),
                hint: format!("the mask of {}", image.display()),
            })?;
            Ok(SegSample {
                id,
                image: Blob::File(image),
                mask: Blob::File(mask.clone()),
            })
        })
        .collect()
}

/// Samples of the folder layout (see the module documentation).
pub fn folder_splits(dir: &Path) -> Result<SegSplits> {
    if dir.join("train/images").is_dir() {
        return Ok(SegSplits {
            train: pair_folder(&dir.join("train"))?,
            val: pair_folder(&dir.join("val"))?,
            description: format!("image/mask folders at {} (train/ + val/)", dir.display()),
        });
    }
    let all = pair_folder(dir)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in all.into_iter().enumerate() {
        if i % 4 == 3 {
            val.push(s);
        } else {
            train.push(s);
        }
    }
    Ok(SegSplits {
        train,
        val,
        description: format!(
            "image/mask folders at {} (sorted stems, every 4th is val)",
            dir.display()
        ),
    })
}

fn decode(blob: &Blob) -> Result<image::DynamicImage> {
    let bytes = blob.read()?;
    image::load_from_memory(&bytes)
        .map_err(|e| DataError::Invalid(format!("{}: cannot decode image: {e}", blob.name())))
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
