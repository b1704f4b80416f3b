//! Forward time of both DeepLabV3 models (eval mode, batch 1, 224x224):
//! median of 10 runs after 2 warm-ups. ResNet-101 runs with seeded random
//! weights (the time does not depend on the values).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3};
use pixclass_models::init::seeded_var_builder;
use pixclass_models::mobilenet::MobileNetV2DeepLab;

fn median_ms(f: &dyn Fn() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut v = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok((v[4] + v[5]) / 2.0)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 224, 224), &dev)?;
    let mb = MobileNetV2DeepLab::pretrained(&dev, true)?;
    let t = median_ms(&|| {
        mb.forward(&x)?;
        Ok(())
    })?;
    println!("deeplabv3-mobilenetv2-voc forward 1x3x224x224: {t:.1} ms");
    let vm = VarMap::new();
    let r = DeepLabV3::new(
        DeepLabConfig::default(),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )?;
    let t = median_ms(&|| {
        r.forward_t(&x, false)?;
        Ok(())
    })?;
    println!("deeplabv3-resnet101 forward 1x3x224x224: {t:.1} ms");
    Ok(())
}
