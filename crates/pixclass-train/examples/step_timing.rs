//! Times the parts of one colourization training step (batch 100).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use pixclass_models::init::seeded_var_builder;
use pixclass_models::layers::trainable_vars;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_train::adam::{Adam, AdamConfig};

fn main() -> anyhow::Result<()> {
    for kind in ColourModelKind::ALL {
        let vm = VarMap::new();
        let net = ColourNet::new(
            ColourNetConfig {
                kind,
                ..Default::default()
            },
            seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu),
        )?;
        let mut adam = Adam::new(trainable_vars(&vm), AdamConfig::default())?;
        let x = Tensor::rand(0f32, 1.0, (100, 1, 32, 32), &Device::Cpu)?;
        let y = Tensor::zeros((100, 32, 32), DType::U32, &Device::Cpu)?;
        for it in 0..3 {
            let t0 = Instant::now();
            let logits = net.forward_t(&x, true)?;
            let t1 = Instant::now();
            let loss = pixclass_metrics::cross_entropy(&logits, &y)?;
            let t2 = Instant::now();
            let g = loss.backward()?;
            let t3 = Instant::now();
            adam.step(&g)?;
            let t4 = Instant::now();
            let _ = net.forward_t(&x, false)?.argmax(1)?;
            let t5 = Instant::now();
            if it > 0 {
                println!(
                    "{kind}: fwd {:?} loss {:?} bwd {:?} adam {:?} | eval {:?}",
                    t1 - t0,
                    t2 - t1,
                    t3 - t2,
                    t4 - t3,
                    t5 - t4
                );
            }
        }
    }
    Ok(())
}
