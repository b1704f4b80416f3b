//! pixclass side of the colourization step benchmark (see
//! `benches/torch_colour_step.py` for the PyTorch side): batch 100, 1x32x32,
//! NF 32, 24 classes; median milliseconds over 10 steps after 3 warm-ups of
//! the training step (forward + loss + backward + Adam) and of inference
//! (eval forward + argmax).
//!
//!     cargo run --release -p pixclass-train --example step_timing [-- --device cuda] [--model unet] [--steps 10] [--profile]
//!
//! `--profile` then times the same number of training steps again with the
//! kernels' per-op timing on (`pixclass_ops::profile`) and prints `OP
//! name<TAB>ms per step` rows, `OP other (candle ops, allocation)` for the
//! rest of the step and `OP total` (the PyTorch side:
//! `benches/torch_unet_profile.py`).
//!
//! On the CPU it ends with `PEAK_GFLOPS x`, this machine's measured f32
//! multiply-add throughput on the same threads
//! (`pixclass_ops::measured_peak_gflops`).
//!
//! On a GPU (`--device cuda`, a `--features cuda` build) every timed step ends
//! with a device synchronisation, so the times are the kernels' and not the
//! launches'.
use std::time::Instant;

/// The same allocator (and settings) as the `pixclass` binary.
#[path = "../../pixclass-cli/src/allocator.rs"]
mod allocator;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use pixclass_models::init::seeded_var_builder;
use pixclass_models::layers::trainable_vars;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_train::adam::{Adam, AdamConfig};
use pixclass_train::{select_device, DeviceKind};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the colourization nets' training step and inference.
#[derive(Parser)]
struct Args {
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Times one net only (pool-upsample, conv-transpose or unet).
    #[arg(long)]
    model: Option<ColourModelKind>,
    /// Timed steps, after 3 warm-ups.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Then the same steps again with the kernels' per-op timing on.
    #[arg(long)]
    profile: bool,
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    pixclass_ops::park_idle_candle_workers();
    let args = Args::parse();
    let device: DeviceKind = args.device.parse().map_err(anyhow::Error::msg)?;
    let dev = select_device(device, 0)?;
    println!("THREADS {}", rayon_threads());
    let steps = usize::try_from(args.steps)?;
    for kind in ColourModelKind::ALL {
        if args.model.is_some_and(|m| m != kind) {
            continue;
        }
        let vm = VarMap::new();
        let net = ColourNet::new(
            ColourNetConfig {
                kind,
                ..Default::default()
            },
            seeded_var_builder(&vm, 0, DType::F32, &dev),
        )?;
        let mut adam = Adam::new(trainable_vars(&vm), AdamConfig::default())?;
        let x = Tensor::rand(0f32, 1.0, (100, 1, 32, 32), &dev)?;
        let y = Tensor::rand(0f32, 24.0, (100, 32, 32), &dev)?.to_dtype(DType::U32)?;
        let (mut train, mut infer) = (Vec::new(), Vec::new());
        for i in 0..3 + steps {
            let t0 = Instant::now();
            let loss = pixclass_metrics::cross_entropy(&net.forward_t(&x, true)?, &y)?;
            adam.step(&loss.backward()?)?;
            dev.synchronize()?;
            let t1 = Instant::now();
            let _ = pixclass_ops::argmax_classes(&net.forward_t(&x, false)?)?;
            dev.synchronize()?;
            let t2 = Instant::now();
            if i >= 3 {
                train.push((t1 - t0).as_secs_f64() * 1e3);
                infer.push((t2 - t1).as_secs_f64() * 1e3);
            }
        }
        let (t, i) = (median(train), median(infer));
        println!(
            "{kind}: train step {t:.1} ms, inference {i:.1} ms (pixclass, {}, {} threads)",
            if dev.is_cpu() { "cpu" } else { "gpu" },
            rayon_threads()
        );
        // Machine-readable rows for `cargo xtask bench`.
        println!("BENCH {kind} train step\t{t}");
        println!("BENCH {kind} inference\t{i}");
        // Work per step: 2 FLOPs per multiply-accumulate of the forward
        // (the layer summary's connections), about 3x that for training
        // (forward, backward-data and backward-filter products).
        let macs = (net.summary(32, 32)?.total_connections() * 100) as f64;
        println!("FLOPS {kind} train step\t{}", 6.0 * macs);
        println!("FLOPS {kind} inference\t{}", 2.0 * macs);
        if args.profile {
            let mut step = || -> anyhow::Result<()> {
                let loss = pixclass_metrics::cross_entropy(&net.forward_t(&x, true)?, &y)?;
                adam.step(&loss.backward()?)?;
                Ok(dev.synchronize()?)
            };
            pixclass_ops::profile::take();
            pixclass_ops::profile::enable(true);
            let t0 = Instant::now();
            for _ in 0..steps {
                step()?;
            }
            let total = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
            pixclass_ops::profile::enable(false);
            let mut ops = pixclass_ops::profile::take();
            ops.sort_by_key(|o| std::cmp::Reverse(o.total));
            let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps as f64;
            let kernels: f64 = ops.iter().map(|o| per_step(o.total)).sum();
            for o in &ops {
                println!("OP {}\t{:.2}", o.name, per_step(o.total));
            }
            println!("OP other (candle ops, allocation)\t{:.2}", total - kernels);
            println!("OP total\t{total:.2}");
        }
    }
    if dev.is_cpu() {
        // The ceiling for the GFLOP/s above, measured after the timed steps.
        println!("PEAK_GFLOPS {}", pixclass_ops::measured_peak_gflops());
    }
    Ok(())
}

fn rayon_threads() -> usize {
    pixclass_ops::cpu_threads()
}
