//! `pixclass weights ...`: list, fetch, random, convert. The registry, the
//! cache and fetching live in `pixclass_data::weights`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;
use pixclass_data::weights::{self, FetchOptions, REGISTRY};
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

pub fn run(cmd: WeightsCmd, progress: bool) -> Result<()> {
    match cmd {
        WeightsCmd::List => {
            println!(
                "deeplabv3-mobilenetv2-voc: embedded in the binary (assets/pretrained, Apache-2.0)"
            );
            for w in &REGISTRY {
                let status = match weights::find_cached(w) {
                    Some(p) => match weights::verify_cached(w, &p) {
                        Ok(()) => format!("cached at {} (checksum verified)", p.display()),
                        Err(_) => format!(
                            "cached at {} but it FAILS the published checksum (delete it and fetch again)",
                            p.display()
                        ),
                    },
                    None => "not cached".into(),
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
            let w = weights::lookup_or_err(&name)?;
            let mut o = FetchOptions::registered(w, progress);
            if let Some(r) = hf_repo {
                o.hf_repo = Some(r);
            }
            if no_hub {
                o.hf_repo = None;
            }
            if let Some(f) = hf_file {
                o.hf_file = f;
            }
            if let Some(r) = revision {
                o.revision = r;
            }
            if let Some(u) = url {
                o.url = Some(u);
            }
            if let Some(h) = sha256 {
                o.checksum = weights::parse_sha256(&h)?;
            }
            let path = weights::fetch(w, &o)?;
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
