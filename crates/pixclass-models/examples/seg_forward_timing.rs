//! Forward time of both DeepLabV3 models (eval mode, batch 1, 224x224):
//! median of 10 runs after 2 warm-ups. ResNet-101 runs with seeded random
//! weights (the time does not depend on the values).
//!
//!     cargo run --release -p pixclass-models --example seg_forward_timing [-- --device cuda]
//!
//! On a GPU (`--device cuda`, a `--features cuda` build) each timed run ends
//! with a device synchronisation.
use std::time::Instant;

/// The same allocator (and settings) as the `pixclass` binary.
#[path = "../../pixclass-cli/src/allocator.rs"]
mod allocator;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3};
use pixclass_models::init::seeded_var_builder;
use pixclass_models::mobilenet::MobileNetV2DeepLab;

fn median_ms(dev: &Device, f: &dyn Fn() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let mut v = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok((v[4] + v[5]) / 2.0)
}

/// The `--device` argument: cpu (default) or cuda.
fn device_arg() -> anyhow::Result<Device> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--device")
        .map(|i| args.get(i + 1))
    {
        None => Ok(Device::Cpu),
        Some(Some(d)) if d == "cpu" => Ok(Device::Cpu),
        Some(Some(d)) if d == "cuda" => Ok(Device::new_cuda(0)?),
        Some(d) => anyhow::bail!("--device {d:?}: cpu or cuda"),
    }
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    let dev = device_arg()?;
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 224, 224), &dev)?;
    let mb = MobileNetV2DeepLab::pretrained(&dev, true)?;
    let t = median_ms(&dev, &|| {
        mb.forward(&x)?;
        Ok(())
    })?;
    println!("deeplabv3-mobilenetv2-voc forward 1x3x224x224: {t:.1} ms");
    println!("BENCH deeplabv3-mobilenetv2-voc forward 224\t{t}");
    let vm = VarMap::new();
    let r = DeepLabV3::new(
        DeepLabConfig::default(),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )?;
    let t = median_ms(&dev, &|| {
        r.forward_t(&x, false)?;
        Ok(())
    })?;
    println!("deeplabv3-resnet101 forward 1x3x224x224: {t:.1} ms");
    println!("BENCH deeplabv3-resnet101 forward 224\t{t}");
    head_step(&dev)
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
    let t = median_ms(dev, &|| {
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
