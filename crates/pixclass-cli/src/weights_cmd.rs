//! `pixclass weights ...`: list, fetch (Hugging Face hub through `hf-hub`,
//! then the official URL; checksummed, resumable, cached), convert.
//!
//! Cache: registered files live in `<cache>/weights/` (`<cache>` =
//! `$PIXCLASS_CACHE`, else `~/.cache/pixclass`); hub downloads stay in the
//! hub's own cache (`$HF_HOME`, default `~/.cache/huggingface`).
//! `HF_HUB_OFFLINE=1` never touches the network.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hf_hub::{Repo, RepoType};
use pixclass_data::checksum::Checksum;
use pixclass_data::fetch::{download, DownloadSpec};
use pixclass_models::registry::{lookup, WeightsSource, REGISTRY};
use pixclass_models::weights::{read_tensors, save_safetensors};

#[derive(Subcommand)]
pub enum WeightsCmd {
    /// The registered names, their sources and whether they are cached.
    List,
    /// Download registered weights into the cache (verified, resumable).
    Fetch {
        /// Registered name (`pixclass weights list`).
        name: String,
        /// Hugging Face hub repository to try first (overrides the registry).
        #[arg(long)]
        hf_repo: Option<String>,
        /// File inside the hub repository.
        #[arg(long)]
        hf_file: Option<String>,
        /// Hub revision.
        #[arg(long)]
        revision: Option<String>,
        /// Download address (overrides the registry's official URL).
        #[arg(long)]
        url: Option<String>,
        /// Expected SHA-256 (full, or a leading prefix of at least 8 digits;
        /// overrides the registry's).
        #[arg(long)]
        sha256: Option<String>,
        /// Skip the hub, use the URL only.
        #[arg(long)]
        no_hub: bool,
    },
    /// Write seeded, PyTorch-default-initialised (untrained) weights of a
    /// DeepLabV3-ResNet in torchvision's layout: for timing and tests where
    /// the real checkpoint cannot be downloaded. Never pretrained.
    Random {
        /// `deeplabv3-resnet101` or `deeplabv3-resnet50`.
        model: String,
        /// Output `.safetensors`.
        output: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert a PyTorch checkpoint (`.pth`, zip format) to safetensors.
    Convert {
        /// Input `.pth` (or `.safetensors`).
        input: PathBuf,
        /// Output `.safetensors`.
        output: PathBuf,
    },
}

/// The folder of registered weights files.
pub fn weights_dir() -> PathBuf {
    pixclass_train::segment::default_cache_dir().join("weights")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn checksum(w: &WeightsSource, over: Option<&str>) -> Result<Checksum> {
    let (hex, prefix): (&'static str, bool) = match over {
        // A process-lifetime string: the CLI makes one download.
        Some(h) => (Box::leak(h.to_lowercase().into_boxed_str()), h.len() < 64),
        None => (w.sha256, w.sha256_is_prefix),
    };
    if hex.len() < 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--sha256 {hex:?}: expected at least 8 hex digits");
    }
    Ok(if prefix {
        Checksum::Sha256Prefix(hex)
    } else {
        Checksum::Sha256(hex)
    })
}

fn hub_repo(repo: &str, revision: &str) -> Repo {
    Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())
}

/// The path of registered weights `name` when cached (our folder or the
/// hub cache); else an error saying what to download and where to put it.
pub fn cached_weights(name: &str) -> Result<Option<PathBuf>> {
    let Some(w) = lookup(name) else {
        bail!(
            "--weights {name:?} is neither a file nor a registered name ({})",
            REGISTRY
                .iter()
                .map(|w| w.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let local = weights_dir().join(w.file);
    if local.is_file() {
        return Ok(Some(local));
    }
    if let Some(repo) = w.hf_repo {
        let cache = hf_hub::Cache::from_env();
        if let Some(p) = cache.repo(hub_repo(repo, w.revision)).get(w.hf_file) {
            return Ok(Some(p));
        }
    }
    bail!(
        "weights {name} are not cached: run `pixclass weights fetch {name}`, or download {} and put it at {} \
         (or pass --weights PATH)",
        w.url.unwrap_or(w.hf_file),
        local.display()
    )
}

pub fn run(cmd: WeightsCmd, progress: bool) -> Result<()> {
    match cmd {
        WeightsCmd::List => {
            println!(
                "deeplabv3-mobilenetv2-voc: embedded in the binary (assets/pretrained, Apache-2.0)"
            );
            for w in &REGISTRY {
                let status = match cached_weights(w.name) {
                    Ok(Some(p)) => format!("cached at {}", p.display()),
                    _ => "not cached".into(),
                };
                println!(
                    "{}: {} ({:.0} MB; hub {}; url {}; sha256 {}{}) - {status}",
                    w.name,
                    w.licence,
                    w.bytes as f64 / 1e6,
                    w.hf_repo.unwrap_or("none declared"),
                    w.url.unwrap_or("none"),
                    w.sha256,
                    if w.sha256_is_prefix { "…" } else { "" }
                );
            }
            Ok(())
        }
        WeightsCmd::Fetch {
            name,
            hf_repo,
            hf_file,
            revision,
            url,
            sha256,
            no_hub,
        } => {
            let w = lookup(&name).with_context(|| {
                format!(
                    "unknown weights {name:?}; registered: {}",
                    REGISTRY
                        .iter()
                        .map(|w| w.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let sum = checksum(w, sha256.as_deref())?;
            let path = fetch(
                w,
                FetchOptions {
                    hf_repo: hf_repo.as_deref().or(w.hf_repo).filter(|_| !no_hub),
                    hf_file: hf_file.as_deref().unwrap_or(w.hf_file),
                    revision: revision.as_deref().unwrap_or(w.revision),
                    url: url.as_deref().or(w.url),
                    checksum: sum,
                    progress,
                },
            )?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        WeightsCmd::Random {
            model,
            output,
            seed,
        } => {
            use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3, ResNetDepth};
            let depth = match model.as_str() {
                "deeplabv3-resnet101" => ResNetDepth::ResNet101,
                "deeplabv3-resnet50" => ResNetDepth::ResNet50,
                other => bail!(
                    "weights random: {other:?} is not deeplabv3-resnet101 or deeplabv3-resnet50"
                ),
            };
            let vm = candle_nn::VarMap::new();
            let vb = pixclass_models::init::seeded_var_builder(
                &vm,
                seed,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            );
            DeepLabV3::new(
                DeepLabConfig {
                    depth,
                    ..DeepLabConfig::default()
                },
                vb,
            )?;
            vm.save(&output)?;
            println!(
                "untrained {model} weights (seed {seed}) -> {}",
                output.display()
            );
            Ok(())
        }
        WeightsCmd::Convert { input, output } => {
            let t = read_tensors(&input, &candle_core::Device::Cpu)?;
            save_safetensors(&t, &output)?;
            println!(
                "{} tensors: {} -> {}",
                t.len(),
                input.display(),
                output.display()
            );
            Ok(())
        }
    }
}

struct FetchOptions<'a> {
    hf_repo: Option<&'a str>,
    hf_file: &'a str,
    revision: &'a str,
    url: Option<&'a str>,
    checksum: Checksum,
    progress: bool,
}

fn fetch(w: &WeightsSource, o: FetchOptions<'_>) -> Result<PathBuf> {
    let dest = weights_dir().join(w.file);
    let mut errors = Vec::new();
    // 1. The hub (its cache first; offline: the cache only).
    if let Some(repo) = o.hf_repo {
        let r = hub_repo(repo, o.revision);
        let cached = hf_hub::Cache::from_env().repo(r.clone()).get(o.hf_file);
        let got = match cached {
            Some(p) => Ok(p),
            None if offline() => {
                Err("HF_HUB_OFFLINE is set and the hub cache does not have it".to_string())
            }
            None => hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(o.progress)
                .build()
                .and_then(|api| api.repo(r).get(o.hf_file))
                .map_err(|e| e.to_string()),
        };
        match got {
            Ok(p) => match o.checksum.verify(&p) {
                Ok(()) => return Ok(p),
                Err(e) => errors.push(format!("hub {repo}/{}: {e}", o.hf_file)),
            },
            Err(e) => errors.push(format!("hub {repo}/{}: {e}", o.hf_file)),
        }
    }
    // 2. The official URL (resumable, verified, atomic).
    if let Some(url) = o.url {
        if offline() && !dest.is_file() {
            errors.push(format!("{url}: HF_HUB_OFFLINE is set"));
        } else {
            std::fs::create_dir_all(weights_dir())?;
            match download(&DownloadSpec {
                url,
                dest: dest.clone(),
                checksum: Some(o.checksum),
                progress: o.progress,
            }) {
                Ok(_) => return Ok(dest),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
    }
    bail!(
        "could not fetch {}:\n  {}\nDownload it yourself and put it at {} (or pass --weights PATH)",
        w.name,
        if errors.is_empty() {
            "no source declared".to_string()
        } else {
            errors.join("\n  ")
        },
        dest.display()
    )
}
