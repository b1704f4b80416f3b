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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

mod set;
mod sources;

pub use set::{load_pair, SegSet};
pub use sources::{embedded_splits, folder_splits, oxford17_splits, SegSource};

/// Oxford-17's flower colour in the trimaps (and VOC's first class).
pub const FLOWER: [u8; 3] = [128, 0, 0];
/// ImageNet normalisation mean (SPEC §B.1).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub(crate) const IMAGE_EXTS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// The embedded Oxford-17 sample: 48 photos with trimaps (see
/// `assets/flowers17/make_sample.py`).
pub(crate) const EMBEDDED_TAR: &[u8] = include_bytes!("../../../../assets/flowers17/sample.tar");

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

    pub(crate) fn read(&self) -> Result<Vec<u8>> {
        match self {
            Blob::File(p) => std::fs::read(p).map_err(|e| DataError::io(p, e)),
            Blob::Embedded(n) => embedded_entries()?
                .get(n)
                .cloned()
                .ok_or_else(|| DataError::Invalid(format!("no embedded file {n}"))),
        }
    }
}

pub(crate) fn embedded_entries() -> Result<&'static HashMap<String, Vec<u8>>> {
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
