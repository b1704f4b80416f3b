//! Registered pretrained weights: where each name comes from (a Hugging
//! Face hub repository and/or the official URL), its published checksum,
//! where it is cached, and fetching it.
//!
//! Cache: registered files live in `<cache>/weights/` (`<cache>` =
//! [`crate::paths::default_cache_dir`]); hub downloads stay in the hub's own
//! cache (`$HF_HOME`, default `~/.cache/huggingface`). `HF_HUB_OFFLINE=1`
//! never touches the network.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::checksum::Checksum;
use crate::error::{DataError, Result};
use crate::fetch::{download, DownloadSpec};

/// One registered weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsSource {
    /// The name users type (`deeplabv3-resnet101-coco`).
    pub name: &'static str,
    /// The model it belongs to (its command-line name).
    pub model: &'static str,
    /// File name in the local weights cache.
    pub file: &'static str,
    /// Hugging Face hub repository holding the file, when one is declared
    /// (overridable on the command line).
    pub hf_repo: Option<&'static str>,
    /// File inside the hub repository.
    pub hf_file: &'static str,
    /// Hub revision (branch, tag or commit).
    pub revision: &'static str,
    /// Official download address, the fallback.
    pub url: Option<&'static str>,
    /// Published checksum: full SHA-256, or (`sha256_is_prefix`) the leading
    /// digits torchvision puts in its file names and checks.
    pub sha256: &'static str,
    /// See `sha256`.
    pub sha256_is_prefix: bool,
    /// Size in bytes, for messages.
    pub bytes: u64,
    /// Licence and origin, for messages and reports.
    pub licence: &'static str,
}

/// Every registered name.
pub const REGISTRY: [WeightsSource; 2] = [
    WeightsSource {
        name: "deeplabv3-resnet101-coco",
        model: "deeplabv3-resnet101",
        file: "deeplabv3_resnet101_coco-586e9e4e.pth",
        hf_repo: None,
        hf_file: "deeplabv3_resnet101_coco-586e9e4e.pth",
        revision: "main",
        url: Some("https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth"),
        sha256: "586e9e4e",
        sha256_is_prefix: true,
        bytes: 244_545_539,
        licence: "torchvision (BSD-3-Clause); trained on COCO with the 20 VOC categories",
    },
    WeightsSource {
        name: "deeplabv3-resnet50-coco",
        model: "deeplabv3-resnet50",
        file: "deeplabv3_resnet50_coco-cd0a2569.pth",
        hf_repo: None,
        hf_file: "deeplabv3_resnet50_coco-cd0a2569.pth",
        revision: "main",
        url: Some("https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth"),
        sha256: "cd0a2569",
        sha256_is_prefix: true,
        bytes: 168_312_152,
        licence: "torchvision (BSD-3-Clause); trained on COCO with the 20 VOC categories",
    },
];

/// The registered weights called `name`.
pub fn lookup(name: &str) -> Option<&'static WeightsSource> {
    REGISTRY.iter().find(|w| w.name == name)
}

/// Every registered name, comma-separated (for messages).
pub fn registered_names() -> String {
    REGISTRY
        .iter()
        .map(|w| w.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl WeightsSource {
    /// The published checksum.
    pub fn checksum(&self) -> Checksum {
        if self.sha256_is_prefix {
            Checksum::Sha256Prefix(Cow::Borrowed(self.sha256))
        } else {
            Checksum::Sha256(Cow::Borrowed(self.sha256))
        }
    }

    /// The path of this file in pixclass's own weights cache.
    pub fn cache_path(&self) -> PathBuf {
        weights_dir().join(self.file)
    }
}

/// The folder of registered weights files.
pub fn weights_dir() -> PathBuf {
    crate::paths::default_cache_dir().join("weights")
}

/// True when `HF_HUB_OFFLINE` forbids the network.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A user's `--sha256`: a full SHA-256, or a leading prefix of at least 8
/// hex digits.
pub fn parse_sha256(hex: &str) -> Result<Checksum> {
    let hex = hex.to_lowercase();
    if hex.len() < 8 || hex.len() > 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(DataError::Invalid(format!(
            "--sha256 {hex:?}: expected 8 to 64 hex digits"
        )));
    }
    Ok(if hex.len() < 64 {
        Checksum::Sha256Prefix(Cow::Owned(hex))
    } else {
        Checksum::Sha256(Cow::Owned(hex))
    })
}

fn hub_repo(repo: &str, revision: &str) -> Repo {
    Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())
}

/// The registered weights `name`, or an error listing the registered names.
pub fn lookup_or_err(name: &str) -> Result<&'static WeightsSource> {
    lookup(name).ok_or_else(|| {
        DataError::Invalid(format!(
            "unknown weights {name:?}; registered: {}",
            registered_names()
        ))
    })
}

/// The path of registered weights `name` when cached (our folder or the
/// hub cache), `None` when not.
pub fn find_cached(w: &WeightsSource) -> Option<PathBuf> {
    let local = w.cache_path();
    if local.is_file() {
        return Some(local);
    }
    let repo = w.hf_repo?;
    hf_hub::Cache::from_env()
        .repo(hub_repo(repo, w.revision))
        .get(w.hf_file)
}

/// The cached file of registered weights `name`, verified against its
/// published checksum ([`verify_cached`]); else an error saying what to
/// download and where to put it.
pub fn cached_weights(name: &str) -> Result<PathBuf> {
    let w = lookup(name).ok_or_else(|| {
        DataError::Invalid(format!(
            "--weights {name:?} is neither a file nor a registered name ({})",
            registered_names()
        ))
    })?;
    let path = find_cached(w).ok_or_else(|| {
        DataError::Invalid(format!(
            "weights {name} are not cached: run `pixclass weights fetch {name}`, or download {} and put it at {} \
             (or pass --weights PATH)",
            w.url.unwrap_or(w.hf_file),
            w.cache_path().display()
        ))
    })?;
    verify_cached(w, &path)?;
    Ok(path)
}

/// What was verified of a cached file (a sidecar next to pixclass's own
/// cache, so a 233 MB file is hashed once, not at every use).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Verified {
    path: PathBuf,
    bytes: u64,
    modified_ns: u128,
    checksum: String,
}

fn verified_stamp(path: &Path, w: &WeightsSource) -> Result<Verified> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Verified {
        path: path.to_path_buf(),
        bytes: meta.len(),
        modified_ns,
        checksum: w.sha256.to_string(),
    })
}

/// Checks that the cached file `path` of `w` is the published one: by its
/// sidecar when size and modification time are what was verified, else by
/// hashing it (and then writing the sidecar). A mismatch is an error saying
/// what to do.
pub fn verify_cached(w: &WeightsSource, path: &Path) -> Result<()> {
    let sidecar = weights_dir().join(format!("{}.verified.json", w.file));
    let now = verified_stamp(path, w)?;
    let known = std::fs::read(&sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice::<Verified>(&b).ok());
    if known.as_ref() == Some(&now) {
        return Ok(());
    }
    if let Err(e) = w.checksum().verify(path) {
        return Err(DataError::Invalid(format!(
            "the cached weights {} are not the published {} ({e}): delete the file and run \
             `pixclass weights fetch {}`, or pass it as --weights PATH to use it anyway",
            path.display(),
            w.name,
            w.name
        )));
    }
    if let Some(d) = sidecar.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    // Best effort: without the sidecar the next use hashes again.
    if let Ok(json) = serde_json::to_vec_pretty(&now) {
        let _ = std::fs::write(&sidecar, json);
    }
    Ok(())
}

/// Where [`fetch`] looks, overriding the registry's entries.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Hugging Face hub repository to try first (`None`: skip the hub).
    pub hf_repo: Option<String>,
    /// File inside the hub repository.
    pub hf_file: String,
    /// Hub revision.
    pub revision: String,
    /// Download address, the fallback.
    pub url: Option<String>,
    /// The checksum the file must have.
    pub checksum: Checksum,
    /// Show progress bars.
    pub progress: bool,
}

impl FetchOptions {
    /// The registry's own sources and checksum for `w`.
    pub fn registered(w: &WeightsSource, progress: bool) -> Self {
        Self {
            hf_repo: w.hf_repo.map(String::from),
            hf_file: w.hf_file.to_string(),
            revision: w.revision.to_string(),
            url: w.url.map(String::from),
            checksum: w.checksum(),
            progress,
        }
    }
}

/// Fetches registered weights: the hub first (its cache first; offline, the
/// cache only), then the official URL (resumable, verified, atomic). Returns
/// the verified file.
pub fn fetch(w: &WeightsSource, o: &FetchOptions) -> Result<PathBuf> {
    let dest = w.cache_path();
    let mut errors = Vec::new();
    if let Some(repo) = &o.hf_repo {
        let r = hub_repo(repo, &o.revision);
        let cached = hf_hub::Cache::from_env().repo(r.clone()).get(&o.hf_file);
        let got = match cached {
            Some(p) => Ok(p),
            None if offline() => {
                Err("HF_HUB_OFFLINE is set and the hub cache does not have it".to_string())
            }
            None => hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(o.progress)
                .build()
                .and_then(|api| api.repo(r).get(&o.hf_file))
                .map_err(|e| e.to_string()),
        };
        match got.map(|p| o.checksum.verify(&p).map(|()| p)) {
            Ok(Ok(p)) => return Ok(p),
            Ok(Err(e)) => errors.push(format!("hub {repo}/{}: {e}", o.hf_file)),
            Err(e) => errors.push(format!("hub {repo}/{}: {e}", o.hf_file)),
        }
    }
    if let Some(url) = &o.url {
        if offline() && !dest.is_file() {
            errors.push(format!("{url}: HF_HUB_OFFLINE is set"));
        } else {
            match download(&DownloadSpec {
                url,
                dest: dest.clone(),
                checksum: Some(o.checksum.clone()),
                progress: o.progress,
            }) {
                Ok(_) => return Ok(dest),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
    }
    Err(DataError::Invalid(format!(
        "could not fetch {}:\n  {}\nDownload it yourself and put it at {} (or pass --weights PATH)",
        w.name,
        if errors.is_empty() {
            "no source declared".to_string()
        } else {
            errors.join("\n  ")
        },
        dest.display()
    )))
}
