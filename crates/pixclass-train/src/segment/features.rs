//! The frozen network's features per sample, computed on first use and
//! kept in memory and (optionally) in an on-disk cache keyed by model,
//! weights hash, size and the preprocessed pixels.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use pixclass_data::segment::SegSet;
use pixclass_models::segment::SegBackbone;

use super::{FeatureCache, SegTrainConfig};
use crate::error::{Result, TrainError};

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short identity of the weights: sha256 of the file (or of the embedded
/// bytes).
pub fn weights_id(cfg: &SegTrainConfig) -> Result<String> {
    let bytes = match &cfg.weights {
        Some(p) => std::fs::read(p).map_err(|e| TrainError::io(p, e))?,
        None => pixclass_models::mobilenet::EMBEDDED_WEIGHTS.to_vec(),
    };
    Ok(hex(&Sha256::digest(&bytes))[..16].to_string())
}

/// Frozen features per sample, computed on first use.
pub(super) struct FeatureStore {
    feats: Vec<Option<Tensor>>,
    keys: Vec<String>,
    disk: Option<PathBuf>,
    /// Whether features are kept between steps (not for `--cache off`).
    pub(super) keep: bool,
}

impl FeatureStore {
    pub(super) fn new(
        set: &SegSet,
        model: &str,
        weights: &str,
        cache: FeatureCache,
        dir: &Path,
    ) -> Self {
        let keys = (0..set.len())
            .map(|i| {
                let mut h = Sha256::new();
                h.update(model.as_bytes());
                h.update(weights.as_bytes());
                h.update((set.size as u64).to_le_bytes());
                h.update(set.image_bytes(i));
                hex(&h.finalize())[..32].to_string()
            })
            .collect();
        Self {
            feats: vec![None; set.len()],
            keys,
            disk: (cache == FeatureCache::Disk).then(|| dir.join(model)),
            keep: cache != FeatureCache::Off,
        }
    }

    fn disk_path(&self, i: usize) -> Option<PathBuf> {
        self.disk
            .as_ref()
            .map(|d| d.join(format!("{}.safetensors", self.keys[i])))
    }

    /// The eval-mode features of samples `idx` of `set`, `[n, C, h, w]`:
    /// from memory, else the disk cache, else computed (in chunks of 16)
    /// and stored.
    pub(super) fn fetch(
        &mut self,
        backbone: &SegBackbone,
        set: &SegSet,
        idx: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let (mean, std) = backbone.normalisation();
        // Load what the disk cache has, compute the rest in chunks.
        let mut missing = Vec::new();
        for &i in idx {
            if self.feats[i].is_some() {
                continue;
            }
            if let Some(p) = self.disk_path(i).filter(|p| p.is_file()) {
                if let Ok(mut t) = candle_core::safetensors::load(&p, device) {
                    if let Some(f) = t.remove("features") {
                        self.feats[i] = Some(f);
                        continue;
                    }
                }
            }
            missing.push(i);
        }
        for chunk in missing.chunks(16) {
            let x = set.images_tensor(chunk, mean, std, device)?;
            let f = backbone.features_t(&x, false)?;
            for (k, &i) in chunk.iter().enumerate() {
                let fi = f.get(k)?.contiguous()?;
                if let Some(p) = self.disk_path(i) {
                    if let Some(d) = p.parent() {
                        std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
                    }
                    let tmp = pixclass_runs::atomic::temp_path(&p);
                    candle_core::safetensors::save(
                        &std::collections::HashMap::from([("features".to_string(), fi.clone())]),
                        &tmp,
                    )?;
                    std::fs::rename(&tmp, &p).map_err(|e| TrainError::io(&p, e))?;
                }
                self.feats[i] = Some(fi);
            }
        }
        let parts = idx
            .iter()
            .map(|&i| {
                self.feats[i]
                    .clone()
                    .ok_or_else(|| TrainError::Config("feature not computed".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&parts, 0)?)
    }
}
