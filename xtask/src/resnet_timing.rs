//! Part D's DeepLabV3-ResNet-101 timing on this machine (seeded, untrained
//! weights: the times are real, the scores meaningless and not reported).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use crate::part_d::{finetune, finished, Plan};

/// ResNet-101 on the CPU: per-epoch times of a few epochs on a subset, so
/// users know what the full run costs. The official checkpoint cannot be
/// downloaded here, so the weights are seeded and untrained: the times are
/// real, the scores meaningless (and not reported).
pub fn run(bin: &Path, out: &Path, plan: &Plan) -> Result<(String, Value)> {
    let root = out.join("segment").join("resnet101-timing");
    std::fs::create_dir_all(&root)?;
    let weights = root.join("untrained-resnet101.safetensors");
    if !weights.is_file() {
        let st = Command::new(bin)
            .args(["--quiet", "weights", "random", "deeplabv3-resnet101"])
            .arg(&weights)
            .status()?;
        if !st.success() {
            anyhow::bail!("pixclass weights random failed");
        }
    }
    let w = weights.to_string_lossy().into_owned();
    let cache = root.join("feature-cache").to_string_lossy().into_owned();
    let sub = Plan {
        epochs: 3,
        batch: Some(8),
        seeds: vec![],
        time_no_cache: false,
        data_args: {
            let mut a = plan.data_args.clone();
            a.extend(["--limit".to_string(), "16".to_string()]);
            a
        },
        data_note: String::new(),
        device: plan.device.clone(),
    };
    let common = [
        "--model",
        "deeplabv3-resnet101",
        "--weights",
        &w,
        "--loss",
        "ce",
        "--val-batch-size",
        "8",
    ];
    let mut a: Vec<&str> = common.to_vec();
    a.extend(["--cache-dir", &cache]);
    // Epochs 0 and 1 of this run must extract the features (a cold cache), unless
    // the run already finished and is reused as it is.
    if !finished(&root.join("eval-cached"), &sub, &a) {
        let _ = std::fs::remove_dir_all(root.join("feature-cache"));
    }
    let eval = finetune(bin, &sub, &root.join("eval-cached"), &a)?;
    let mut b: Vec<&str> = common.to_vec();
    b.extend(["--frozen-mode", "train"]);
    let train = finetune(bin, &sub, &root.join("frozen-train"), &b)?;
    let mut md = String::new();
    writeln!(md, "#### DeepLabV3-ResNet-101 on this CPU (16 train / 16 val images, batch 8, 3 epochs; untrained seeded weights, times only: their scores mean nothing)\n")?;
    writeln!(
        md,
        "| frozen layers | epochs 0 + 1 (s) | epoch 2 (s) | epoch 3 (s) |\n|---|---:|---:|---:|"
    )?;
    writeln!(
        md,
        "| eval mode, features cached (epoch 0 extracts the training features, for the standardisation statistics, and the validation ones; later epochs read the cache) | {:.1} | {:.2} | {:.2} |",
        eval.cold_seconds(),
        eval.seconds(2),
        eval.seconds(3)
    )?;
    writeln!(
        md,
        "| train mode (the reference's quirk), recomputed every step | {:.1} | {:.1} | {:.1} |\n",
        train.cold_seconds(),
        train.seconds(2),
        train.seconds(3)
    )?;
    let per_image = eval.cold_seconds() / 32.0;
    writeln!(md, "Feature extraction costs about {per_image:.1} s per image here, so the cold start (epochs 0 + 1) over the 846 shared images costs about {:.0} min; later epochs with the cache cost seconds.\n", per_image * 846.0 / 60.0)?;
    Ok((
        md,
        json!({"cached_epoch_s": [eval.cold_seconds(), eval.seconds(2), eval.seconds(3)], "frozen_train_epoch_s": [train.cold_seconds(), train.seconds(2), train.seconds(3)]}),
    ))
}
