//! pixclass side of the Part D feature-extraction benchmark (PyTorch side:
//! `benches/torch_seg_features.py`): the first 64 Oxford-17 images that have
//! a trimap (sorted by id) are decoded, resized (photo and mask, bilinear)
//! and normalised, and the frozen backbone computes their 256-channel
//! features in chunks of 16, as `pixclass segment finetune` builds its
//! feature cache. MobileNetV2 at its native 257, ResNet-101 at 224 (seeded
//! random frozen weights, plain tensors as a checkpoint gives: the time does
//! not depend on the values). Median of a fixed
//! number of runs after a warm-up of one chunk.
//!
//!     cargo run --release -p pixclass-train --example feature_timing -- --data ../shared/data [--only resnet101]
//!
//! Prints `THREADS n` and `BENCH name<TAB>ms` rows.
use std::path::Path;
use std::time::Instant;

/// The same allocator (and settings) as the `pixclass` binary.
#[path = "../../pixclass-cli/src/allocator.rs"]
mod allocator;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Parser;
use pixclass_data::segment::{Blob, Preprocess, SegSample, SegSet};
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3};
use pixclass_models::init::seeded_frozen_builder;
use pixclass_models::segment::SegBackbone;

/// Images per run.
const IMAGES: usize = 64;

/// Times Part D's feature extraction over 64 Oxford-17 images.
#[derive(Parser)]
struct Args {
    /// The data directory (with `flowers17/`).
    #[arg(long, default_value = "../shared/data")]
    data: std::path::PathBuf,
    /// Only the rows whose name contains this text.
    #[arg(long)]
    only: Option<String>,
}

/// The first `n` trimaps under `dir/trimaps` (by name) with their photos.
fn samples(dir: &Path, n: usize) -> anyhow::Result<Vec<SegSample>> {
    let trimaps = dir.join("trimaps");
    let mut ids: Vec<String> = std::fs::read_dir(&trimaps)
        .with_context(|| format!("reading {}", trimaps.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".png").map(str::to_string)
        })
        .collect();
    ids.sort();
    anyhow::ensure!(
        ids.len() >= n,
        "{} has {} trimaps, fewer than {n}",
        trimaps.display(),
        ids.len()
    );
    Ok(ids[..n]
        .iter()
        .map(|id| SegSample {
            id: id.clone(),
            image: Blob::File(dir.join("jpg").join(format!("{id}.jpg"))),
            mask: Blob::File(trimaps.join(format!("{id}.png"))),
        })
        .collect())
}

/// Decode + resize + normalise + features of `samples`, chunks of 16.
fn extract(
    backbone: &SegBackbone,
    samples: &[SegSample],
    size: u32,
    dev: &Device,
) -> anyhow::Result<()> {
    let pre = Preprocess {
        size,
        ..Preprocess::default()
    };
    let set = SegSet::load(samples, &pre, false)?;
    let (mean, std) = backbone.normalisation();
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(16) {
        let x = set.images_tensor(chunk, mean, std, dev)?;
        let f = backbone.features_t(&x, false)?;
        anyhow::ensure!(f.dim(1)? == 256, "features {:?}", f.dims());
    }
    dev.synchronize()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    pixclass_ops::park_idle_candle_workers();
    println!("THREADS {}", pixclass_ops::cpu_threads());
    let Args { data, only } = Args::parse();
    let dev = Device::Cpu;
    let all = samples(&data.join("flowers17"), IMAGES)?;
    let mobilenet = SegBackbone::load(
        pixclass_models::segment::SegModelKind::Deeplabv3Mobilenetv2Voc,
        None,
        &dev,
    )?;
    let resnet = SegBackbone::ResNet(Box::new(DeepLabV3::new(
        DeepLabConfig {
            aux: false,
            ..DeepLabConfig::default()
        },
        seeded_frozen_builder(0, DType::F32, &dev),
    )?));
    for (name, backbone, size, runs) in [
        ("deeplabv3-mobilenetv2-voc", &mobilenet, 257, 3),
        ("deeplabv3-resnet101", &resnet, 224, 1),
    ] {
        let row = format!("{name} feature extraction {IMAGES} images at {size}");
        if only.as_ref().is_some_and(|o| !row.contains(o.as_str())) {
            continue;
        }
        extract(backbone, &all[..16], size, &dev)?;
        let mut v = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            extract(backbone, &all, size, &dev)?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        v.sort_by(f64::total_cmp);
        let t = v[v.len() / 2];
        println!("{row}: {t:.0} ms");
        println!("BENCH {row}\t{t}");
    }
    Ok(())
}
