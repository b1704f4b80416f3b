//! Eval-mode forward time of both DeepLabV3 models over the rows of
//! [`ROWS`] (MobileNetV2 at 257 and 224, ResNet-101 at 224 and 520, batch 1
//! and 8; the same table as `benches/torch_seg_forward.py`): median of a
//! fixed number of runs per row after one warm-up. ResNet-101 runs with
//! seeded random frozen weights (plain tensors, as a loaded checkpoint gives:
//! no autograd graph) and no auxiliary head (the time does not depend on
//! the values; torchvision's forward runs the auxiliary head when it is
//! built, so both sides leave it out). Then the head fine-tuning micro step.
//!
//!     cargo run --release -p pixclass-models --example seg_forward_timing [-- --device cuda] [--only resnet101] [--profile]
//!
//! Prints `THREADS n` (the kernels' rayon pool) and `BENCH name<TAB>ms` rows;
//! `--profile` adds, after each row, one more forward with the kernels'
//! per-op timing on (`OP name<TAB>calls<TAB>ms` rows).
//! On a GPU (`--device cuda`, a `--features cuda` build) each timed run ends
//! with a device synchronisation.
use std::time::Instant;

/// The same allocator (and settings) as the `pixclass` binary.
#[path = "../../pixclass-cli/src/allocator.rs"]
mod allocator;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3};
use pixclass_models::init::{seeded_frozen_builder, seeded_var_builder};
use pixclass_models::mobilenet::MobileNetV2DeepLab;

/// (model, side, batch, timed runs): the rows both sides time.
const ROWS: [(&str, usize, usize, usize); 8] = [
    ("deeplabv3-mobilenetv2-voc", 257, 1, 10),
    ("deeplabv3-mobilenetv2-voc", 224, 1, 10),
    ("deeplabv3-mobilenetv2-voc", 257, 8, 5),
    ("deeplabv3-mobilenetv2-voc", 224, 8, 5),
    ("deeplabv3-resnet101", 224, 1, 5),
    ("deeplabv3-resnet101", 520, 1, 3),
    ("deeplabv3-resnet101", 224, 8, 3),
    ("deeplabv3-resnet101", 520, 8, 2),
];

fn median_ms(dev: &Device, runs: usize, f: &dyn Fn() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Ok((v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// Times the DeepLabV3 forwards and the head fine-tuning step.
#[derive(Parser)]
struct Args {
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Only the rows whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// After each row, one more forward with the kernels' per-op timing on.
    #[arg(long)]
    profile: bool,
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    pixclass_ops::park_idle_candle_workers();
    let args = Args::parse();
    let dev = match args.device.as_str() {
        "cuda" => Device::new_cuda(0)?,
        _ => Device::Cpu,
    };
    println!("THREADS {}", pixclass_ops::cpu_threads());
    let only = args.only;
    let mb = MobileNetV2DeepLab::pretrained(&dev, true)?;
    let r = DeepLabV3::new(
        DeepLabConfig {
            aux: false,
            ..DeepLabConfig::default()
        },
        seeded_frozen_builder(0, DType::F32, &dev),
    )?;
    for (model, side, batch, runs) in ROWS {
        let name = format!("{model} forward {side}x{side} batch {batch}");
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let x = Tensor::rand(-1f32, 1.0, (batch, 3, side, side), &dev)?;
        let t = median_ms(&dev, runs, &|| {
            if model == "deeplabv3-resnet101" {
                r.forward_t(&x, false)?;
            } else {
                mb.forward(&x)?;
            }
            Ok(())
        })?;
        println!("{name}: {t:.1} ms");
        println!("BENCH {name}\t{t}");
        if args.profile {
            // One more forward with the kernels' per-op timing on.
            pixclass_ops::profile::take();
            pixclass_ops::profile::enable(true);
            let t0 = Instant::now();
            if model == "deeplabv3-resnet101" {
                r.forward_t(&x, false)?;
            } else {
                mb.forward(&x)?;
            }
            let total = t0.elapsed().as_secs_f64() * 1e3;
            pixclass_ops::profile::enable(false);
            let mut ops = pixclass_ops::profile::take();
            ops.sort_by_key(|o| std::cmp::Reverse(o.total));
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            for o in &ops {
                println!("OP {}\t{} calls\t{:.1}", o.name, o.calls, ms(o.total));
            }
            let kernels: f64 = ops.iter().map(|o| ms(o.total)).sum();
            println!(
                "OP other (candle ops, allocation)\t\t{:.1}",
                total - kernels
            );
            println!("OP total\t\t{total:.1}");
        }
    }
    if only
        .as_ref()
        .is_none_or(|o| "deeplab head fine-tuning step".contains(o.as_str()))
    {
        head_step(&dev)?;
    }
    Ok(())
}

/// One fine-tuning step of the 2-class head on cached features: batch 128
/// of 256x28x28 features, 1x1 conv, resize to 224x224, cross-entropy,
/// backward and a plain gradient update of the 514 numbers (Adam on them
/// costs microseconds), as in `pixclass segment finetune`.
fn head_step(dev: &Device) -> anyhow::Result<()> {
    use pixclass_models::segment::SegHead;
    let vm = VarMap::new();
    let head = SegHead::new(
        256,
        2,
        true,
        true,
        seeded_var_builder(&vm, 0, DType::F32, dev).pp("head"),
    )?;
    let f = Tensor::rand(0f32, 1.0, (128, 256, 28, 28), dev)?;
    let y = Tensor::rand(0f32, 2.0, (128, 224, 224), dev)?.to_dtype(DType::U32)?;
    let vars = pixclass_models::layers::trainable_vars(&vm);
    let t = median_ms(dev, 10, &|| {
        let m = head.forward_margin(&f, 224, 224)?;
        let loss = pixclass_ops::margin_loss(&m, &y, pixclass_ops::Loss::Ce)?;
        let g = loss.backward()?;
        for (_, v) in &vars {
            if let Some(gv) = g.get(v.as_tensor()) {
                v.set(&(v.as_tensor() - (gv * 1e-3)?)?)?;
            }
        }
        Ok(())
    })?;
    println!("segmentation head step (batch 128, cached features): {t:.1} ms");
    println!("BENCH deeplab head fine-tuning step\t{t}");
    Ok(())
}
