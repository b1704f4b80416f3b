//! Where segmentation samples come from: Oxford-17 (with its split file),
//! `images/` + `masks/` folders, or the embedded sample; and the rule that
//! picks one for a data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{embedded_entries, Blob, SegSample, SegSplits, IMAGE_EXTS};
use crate::error::{DataError, Result};

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
