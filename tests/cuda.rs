//! The GPU path against the CPU path, on an NVIDIA GPU:
//!
//!     cargo test -p pixclass-tests --features cuda --test cuda
//!
//! The CPU path is pinned to PyTorch by the golden tests of each crate; here
//! the same weights and batches go through candle's CUDA kernels (pixclass's
//! portable ops: no CPU kernel runs on a GPU tensor) and must give the same
//! logits, losses, gradients and Adam updates, and whole training runs must
//! end at the same metrics. Built only with the `cuda` feature; without a
//! GPU these tests fail (they never fall back to the CPU).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pixclass_data::cifar::CifarSource;
use pixclass_data::segment::{Preprocess, SegSource};
use pixclass_metrics::{ConfusionMatrix, Loss};
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3};
use pixclass_models::init::{seeded_var_builder, torch_var_builder};
use pixclass_models::layers::trainable_vars;
use pixclass_models::mobilenet::MobileNetV2DeepLab;
use pixclass_models::segment::SegHead;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_ops as ops;
use pixclass_ops::Loss as BinaryLossKind;
use pixclass_train::adam::{Adam, AdamConfig};
use pixclass_train::colourize::{train_colouriser, ColourTrainConfig};
use pixclass_train::segment::{finetune, FeatureCache, SegTrainConfig};
use pixclass_train::DeviceKind;

fn gpu() -> Device {
    Device::new_cuda(0).expect("the cuda tests need an NVIDIA GPU and its driver")
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `b`
/// (at least `floor`).
fn rel(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (f64s(a), f64s(b));
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Copies every variable of `src` into the same-named variable of `dst`.
fn copy_vars(src: &VarMap, dst: &VarMap) {
    let s = src.data().lock().unwrap();
    let d = dst.data().lock().unwrap();
    assert_eq!(s.len(), d.len());
    for (name, var) in d.iter() {
        var.set(&s[name].as_tensor().to_device(var.device()).unwrap())
            .unwrap();
    }
}

/// Uniform `[0, 1)` inputs of shape `x` and labels `0..classes` of shape `y`,
/// on the CPU and copied to `dev`: `(x, y, x on dev, y on dev)`.
fn batch(x: &[usize], y: &[usize], classes: usize, dev: &Device) -> [Tensor; 4] {
    let xc = Tensor::rand(0f32, 1.0, x, &Device::Cpu).unwrap();
    let yc = Tensor::rand(0f32, classes as f32, y, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let (xg, yg) = (xc.to_device(dev).unwrap(), yc.to_device(dev).unwrap());
    [xc, yc, xg, yg]
}

fn assert_same_vars(cpu: &VarMap, gpu: &VarMap, tol: f64, what: &str) {
    let c = cpu.data().lock().unwrap();
    let g = gpu.data().lock().unwrap();
    for (name, var) in c.iter() {
        let e = rel(g[name].as_tensor(), var.as_tensor(), 1e-3);
        assert!(e < tol, "{what}: {name} differs by {e}");
    }
}

#[test]
fn colour_nets_train_steps_match_the_cpu() {
    let dev = gpu();
    // One fixed batch (odd size), on both devices.
    let [x, y, xg, yg] = batch(&[7, 1, 32, 32], &[7, 32, 32], 24, &dev);
    for kind in ColourModelKind::ALL {
        let cfg = ColourNetConfig {
            kind,
            ..Default::default()
        };
        let (vc, vg) = (VarMap::new(), VarMap::new());
        let cpu = ColourNet::new(cfg, torch_var_builder(&vc, 0, DType::F32, &Device::Cpu)).unwrap();
        let gpu = ColourNet::new(cfg, VarBuilder::from_varmap(&vg, DType::F32, &dev)).unwrap();
        copy_vars(&vc, &vg);
        let mut adam_c = Adam::new(trainable_vars(&vc), AdamConfig::default()).unwrap();
        let mut adam_g = Adam::new(trainable_vars(&vg), AdamConfig::default()).unwrap();
        for step in 0..3 {
            let lc = cpu.forward_t(&x, true).unwrap();
            let lg = gpu.forward_t(&xg, true).unwrap();
            let e = rel(&lg, &lc, 1.0);
            assert!(e < 1e-4, "{kind} step {step}: train logits differ by {e}");
            let loss_c = pixclass_metrics::cross_entropy(&lc, &y).unwrap();
            let loss_g = pixclass_metrics::cross_entropy(&lg, &yg).unwrap();
            let e = rel(&loss_g, &loss_c, 1.0);
            assert!(e < 1e-5, "{kind} step {step}: loss differs by {e}");
            let (gc, mut gg) = (loss_c.backward().unwrap(), loss_g.backward().unwrap());
            for ((name, vc), (_, vg)) in trainable_vars(&vc).iter().zip(trainable_vars(&vg).iter())
            {
                let b = gc.get(vc.as_tensor()).unwrap();
                let e = rel(gg.get(vg.as_tensor()).unwrap(), b, 1e-3);
                assert!(
                    e < 1e-3,
                    "{kind} step {step}: gradient of {name} differs by {e}"
                );
                // Adam divides by the root of the squared gradients: where a
                // gradient is ~0, rounding noise becomes a full-size step.
                // The GPU's Adam gets the CPU's gradients, so both runs stay
                // on one trajectory and the update itself is compared.
                gg.insert(vg.as_tensor(), b.to_device(&dev).unwrap());
            }
            adam_c.step(&gc).unwrap();
            adam_g.step(&gg).unwrap();
        }
        // Weights after three Adam steps, and the BN running statistics.
        assert_same_vars(&vc, &vg, 1e-4, &format!("{kind} after 3 steps"));
        let (ec, eg) = (
            cpu.forward_t(&x, false).unwrap(),
            gpu.forward_t(&xg, false).unwrap(),
        );
        let e = rel(&eg, &ec, 1.0);
        assert!(e < 1e-3, "{kind}: eval logits differ by {e}");
    }
}

#[test]
fn deeplab_forwards_match_the_cpu() {
    let dev = gpu();
    // Odd sizes: TF "SAME" padding and align-corners resizing at their edges.
    let x = Tensor::rand(-1f32, 1.0, (2, 3, 97, 131), &Device::Cpu).unwrap();
    let xg = x.to_device(&dev).unwrap();
    let mc = MobileNetV2DeepLab::pretrained(&Device::Cpu, true).unwrap();
    let mg = MobileNetV2DeepLab::pretrained(&dev, true).unwrap();
    let e = rel(&mg.forward(&xg).unwrap(), &mc.forward(&x).unwrap(), 1.0);
    assert!(e < 1e-4, "MobileNetV2 logits differ by {e}");

    let x = Tensor::rand(-1f32, 1.0, (2, 3, 65, 81), &Device::Cpu).unwrap();
    let xg = x.to_device(&dev).unwrap();
    let (vc, vg) = (VarMap::new(), VarMap::new());
    let cfg = DeepLabConfig::default();
    let rc = DeepLabV3::new(cfg, seeded_var_builder(&vc, 0, DType::F32, &Device::Cpu)).unwrap();
    let rg = DeepLabV3::new(cfg, VarBuilder::from_varmap(&vg, DType::F32, &dev)).unwrap();
    copy_vars(&vc, &vg);
    // Eval mode only: with seeded random weights and batch statistics, the
    // train-mode forward of this deep net is chaotic (on the CPU alone, a
    // 1e-6 relative change of the input moves its logits by ~80 %), so
    // CPU and GPU rounding cannot be compared there; train-mode BatchNorm
    // on the GPU is checked by the colourization nets above.
    let e = rel(
        &rg.forward_t(&xg, false).unwrap(),
        &rc.forward_t(&x, false).unwrap(),
        1e-3,
    );
    assert!(e < 1e-3, "ResNet-101 logits differ by {e}");
}

#[test]
fn segmentation_losses_metrics_and_head_gradients_match_the_cpu() {
    let dev = gpu();
    let [f, y, fg, yg] = batch(&[3, 16, 9, 11], &[3, 65, 81], 2, &dev);
    let (vc, vg) = (VarMap::new(), VarMap::new());
    let hc = SegHead::new(
        16,
        2,
        true,
        true,
        seeded_var_builder(&vc, 1, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let hg = SegHead::new(
        16,
        2,
        true,
        true,
        VarBuilder::from_varmap(&vg, DType::F32, &dev),
    )
    .unwrap();
    copy_vars(&vc, &vg);
    for kind in [
        BinaryLossKind::Ce,
        BinaryLossKind::Iou,
        BinaryLossKind::Dice,
    ] {
        let (mc, mg) = (
            hc.forward_margin(&f, 65, 81).unwrap(),
            hg.forward_margin(&fg, 65, 81).unwrap(),
        );
        assert!(rel(&mg, &mc, 1.0) < 1e-5, "{kind:?}: margins differ");
        let lc = ops::margin_loss(&mc, &y, kind).unwrap();
        let lg = ops::margin_loss(&mg, &yg, kind).unwrap();
        let e = rel(&lg, &lc, 1.0);
        assert!(e < 1e-5, "{kind:?}: loss differs by {e}");
        let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
        for ((name, vc), (_, vg)) in trainable_vars(&vc).iter().zip(trainable_vars(&vg).iter()) {
            let e = rel(
                gg.get(vg.as_tensor()).unwrap(),
                gc.get(vc.as_tensor()).unwrap(),
                1e-3,
            );
            assert!(e < 1e-4, "{kind:?}: gradient of {name} differs by {e}");
        }
    }
    // Two-class logits: the study's soft IoU and cross-entropy, and the
    // confusion matrix of their argmax.
    let (lc, lg) = (
        hc.forward(&f, 65, 81).unwrap(),
        hg.forward(&fg, 65, 81).unwrap(),
    );
    for (name, a, b) in [
        (
            "soft IoU",
            pixclass_metrics::soft_iou_loss(&lg, &yg).unwrap(),
            pixclass_metrics::soft_iou_loss(&lc, &y).unwrap(),
        ),
        (
            "cross-entropy",
            pixclass_metrics::cross_entropy(&lg, &yg).unwrap(),
            pixclass_metrics::cross_entropy(&lc, &y).unwrap(),
        ),
    ] {
        let e = rel(&a, &b, 1.0);
        assert!(e < 1e-5, "{name} differs by {e}");
    }
    let (mut cc, mut cg) = (ConfusionMatrix::new(2), ConfusionMatrix::new(2));
    cc.add_logits(&lc, &y).unwrap();
    cg.add_logits(&lg, &yg).unwrap();
    // Ties aside (none at random margins), every pixel lands in the same cell.
    for t in 0..2 {
        for p in 0..2 {
            assert_eq!(cg.get(t, p), cc.get(t, p), "confusion cell ({t}, {p})");
        }
    }
    assert_eq!(
        pixclass_metrics::correct_pixels(&lg, &yg).unwrap(),
        pixclass_metrics::correct_pixels(&lc, &y).unwrap()
    );
}

#[test]
fn training_runs_on_the_gpu_end_where_the_cpu_runs_end() {
    let tmp = tempfile::tempdir().unwrap();
    // Colourization: two epochs of ConvTransposeNet on 300 embedded horses.
    let mut ends = Vec::new();
    for device in [DeviceKind::Cpu, DeviceKind::Cuda] {
        let mut cfg = ColourTrainConfig {
            epochs: 2,
            batch_size: 50,
            limit: Some(300),
            device,
            ..Default::default()
        };
        cfg.model.kind = ColourModelKind::ConvTranspose;
        let run = train_colouriser(
            &cfg,
            &CifarSource::Embedded,
            &tmp.path().join(format!("colour-{}", device)),
            pixclass_runs::Start::Fresh,
            false,
        )
        .unwrap();
        ends.push(run.record.epochs[1].clone());
    }
    let (c, g) = (&ends[0], &ends[1]);
    let (ct, gt) = (c.train_loss.unwrap(), g.train_loss.unwrap());
    let v = |e: &pixclass_runs::EpochRecord, m: &str| e.get(m).unwrap();
    assert!(
        (ct - gt).abs() < 1e-3 * ct,
        "colourization train loss: CPU {ct} vs GPU {gt}"
    );
    let (cl, gl) = (v(c, "val_loss"), v(g, "val_loss"));
    assert!(
        (cl - gl).abs() < 1e-3 * cl,
        "colourization val loss: CPU {cl} vs GPU {gl}"
    );
    let (ca, ga) = (v(c, "val_acc"), v(g, "val_acc"));
    assert!(
        (ca - ga).abs() < 0.5,
        "colourization val accuracy: CPU {ca} vs GPU {ga}"
    );

    // Segmentation: the head fine-tuned on MobileNetV2 features of the
    // embedded Oxford-17 sample, with both losses.
    for loss in [Loss::Ce, Loss::Iou] {
        let mut ends = Vec::new();
        for device in [DeviceKind::Cpu, DeviceKind::Cuda] {
            let cfg = SegTrainConfig {
                loss,
                train_batch_size: 8,
                val_batch_size: 8,
                epochs: 2,
                limit: Some(24),
                preprocess: Preprocess {
                    size: 64,
                    ..Preprocess::default()
                },
                cache: FeatureCache::Memory,
                device,
                ..SegTrainConfig::default()
            };
            let dir = tmp.path().join(format!("seg-{}-{}", loss.name(), device));
            let run = finetune(
                &cfg,
                SegSource::Embedded.splits().unwrap(),
                &dir,
                pixclass_runs::Start::Fresh,
                false,
            )
            .unwrap();
            ends.push(run.record.epochs[1].clone());
        }
        let (c, g) = (&ends[0], &ends[1]);
        let (ct, gt) = (c.train_loss.unwrap(), g.train_loss.unwrap());
        assert!(
            (ct - gt).abs() < 1e-3 * ct.abs().max(1e-3),
            "{loss:?} train loss: CPU {ct} vs GPU {gt}"
        );
        for ((k, a), (_, b)) in c.metrics.iter().zip(g.metrics.iter()) {
            assert!(
                (a - b).abs() < 5e-3,
                "{loss:?} val metric {k}: CPU {a} vs GPU {b}"
            );
        }
    }
}
