//! Checkpoint reading and checking: a PyTorch zip `.pth` made by torch
//! (`golden/make_tiny_pth.py`), safetensors round trips of a DeepLabV3, and
//! every bad-weights case naming the tensor and both shapes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::golden;
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3, ResNetDepth};
use pixclass_models::init::{seeded_frozen_builder, seeded_var_builder};
use pixclass_models::segment::{load_resnet, load_resnet_with_classes};
use pixclass_models::weights::{expected_tensors, read_tensors, save_safetensors, validate};

/// The largest absolute difference of two f32 tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn reads_a_pytorch_zip_checkpoint() {
    let t = read_tensors(&golden("tiny.pth"), &Device::Cpu).unwrap();
    let w: Vec<f32> = t["conv.weight"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(t["conv.weight"].dims(), &[2, 3, 2, 2]);
    assert_eq!(w[5], 0.5);
    let b: Vec<f32> = t["conv.bias"].to_vec1().unwrap();
    assert_eq!(b, [0.5, -1.25]);
    // The transposed view keeps its logical layout.
    let fc: Vec<Vec<f32>> = t["fc.weight"].to_vec2().unwrap();
    assert_eq!(fc, [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]);
    // Convert to safetensors and read back: same tensors.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    save_safetensors(&t, &out).unwrap();
    let back = read_tensors(&out, &Device::Cpu).unwrap();
    assert_eq!(back.len(), t.len());
    let fc2: Vec<Vec<f32>> = back["fc.weight"].to_vec2().unwrap();
    assert_eq!(fc2, fc);
    // Not a checkpoint at all.
    std::fs::write(dir.path().join("x.pth"), b"hello world").unwrap();
    let err = read_tensors(&dir.path().join("x.pth"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.pth"), "{err}");
}

fn zeros_like(
    expected: &std::collections::BTreeMap<String, Vec<usize>>,
) -> HashMap<String, Tensor> {
    expected
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

#[test]
fn bad_weights_name_the_tensor_and_shapes() {
    let cfg = DeepLabConfig {
        depth: ResNetDepth::ResNet50,
        num_classes: 21,
        aux: false,
    };
    let expected = expected_tensors(|vb| DeepLabV3::new(cfg, vb).map(|_| ())).unwrap();
    assert!(expected.contains_key("backbone.layer4.2.conv3.weight"));
    assert!(expected.contains_key("backbone.bn1.running_var"));
    let p = std::path::Path::new("w.safetensors");
    let good = zeros_like(&expected);
    validate(p, &expected, &good, &[]).unwrap();
    // num_batches_tracked is never an error.
    let mut extra = good.clone();
    extra.insert(
        "backbone.bn1.num_batches_tracked".into(),
        Tensor::new(3i64, &Device::Cpu).unwrap(),
    );
    validate(p, &expected, &extra, &[]).unwrap();
    // Missing.
    let mut missing = good.clone();
    missing.remove("backbone.layer3.5.bn2.weight");
    let err = validate(p, &expected, &missing, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w.safetensors")
            && err.contains("missing tensor backbone.layer3.5.bn2.weight")
            && err.contains("[256]"),
        "{err}"
    );
    // Wrong shape.
    let mut wrong = good.clone();
    wrong.insert(
        "classifier.4.weight".into(),
        Tensor::zeros((2, 256, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = validate(p, &expected, &wrong, &[]).unwrap_err().to_string();
    assert!(
        err.contains("classifier.4.weight")
            && err.contains("[21, 256, 1, 1]")
            && err.contains("[2, 256, 1, 1]"),
        "{err}"
    );
    // ... which is fine when that head is to be re-initialised.
    validate(p, &expected, &wrong, &["classifier.4."]).unwrap();
    // Unexpected.
    let mut more = good.clone();
    more.insert(
        "backbone.fc.weight".into(),
        Tensor::zeros((1000, 2048), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = validate(p, &expected, &more, &[]).unwrap_err().to_string();
    assert!(
        err.contains("unexpected tensor backbone.fc.weight") && err.contains("[1000, 2048]"),
        "{err}"
    );
}

/// Largest difference between a DeepLab through variables and the same
/// weights frozen, whose eval-mode BatchNorms are folded into their
/// convolutions (logits of order 1: rounding is ~1e-8).
const FOLD_TOLERANCE: f32 = 1e-5;

#[test]
fn deeplab_round_trip_and_new_class_count() {
    let dev = Device::Cpu;
    let cfg = DeepLabConfig {
        depth: ResNetDepth::ResNet50,
        num_classes: 21,
        aux: true,
    };
    let vm = VarMap::new();
    let model = DeepLabV3::new(cfg, seeded_var_builder(&vm, 3, DType::F32, &dev)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r50.safetensors");
    vm.save(&path).unwrap();
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 40, 48), &dev).unwrap();
    let want = model.forward_t(&x, false).unwrap();
    // Same file, same logits; class count and aux head follow the file.
    let loaded = load_resnet(&path, ResNetDepth::ResNet50, &dev).unwrap();
    assert_eq!(loaded.config().num_classes, 21);
    assert!(loaded.config().aux);
    let got = loaded.forward_t(&x, false).unwrap();
    // Loaded weights are frozen: their BatchNorms fold into the
    // convolutions, which changes only the rounding.
    assert!(max_abs_diff(&got, &want) < FOLD_TOLERANCE);
    // The wrong depth: a clear error.
    let err = load_resnet(&path, ResNetDepth::ResNet101, &dev)
        .err()
        .unwrap()
        .to_string();
    // (ResNet-101 has 23 blocks in layer3, ResNet-50 only 6.)
    assert!(
        err.contains("missing tensor backbone.layer3.") && err.contains("r50.safetensors"),
        "{err}"
    );
    // 2 classes: backbone and features loaded, the heads re-initialised.
    let two = DeepLabConfig {
        num_classes: 2,
        aux: false,
        ..cfg
    };
    let m2 = load_resnet_with_classes(&path, two, 0, &dev).unwrap();
    let f1 = model.features_t(&x, false).unwrap();
    let f2 = m2.features_t(&x, false).unwrap();
    assert!(max_abs_diff(&f1, &f2) < FOLD_TOLERANCE);
    assert_eq!(m2.forward_t(&x, false).unwrap().dims(), &[1, 2, 40, 48]);
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    let dev = candle_core::Device::Cpu;
    let good = candle_core::Tensor::new(&[1f32, 2.0], &dev).unwrap();
    let bad = candle_core::Tensor::new(&[1f32, f32::NAN, f32::INFINITY], &dev).unwrap();
    let t = HashMap::from([("a.weight".to_string(), good), ("b.bias".to_string(), bad)]);
    candle_core::safetensors::save(&t, &p).unwrap();
    let err = pixclass_models::weights::read_tensors(&p, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("b.bias") && err.contains("2 non-finite") && err.contains("bad.safetensors"),
        "{err}"
    );
}

#[test]
fn a_frozen_seeded_network_has_the_seeded_weights_and_records_no_graph() {
    let dev = Device::Cpu;
    let cfg = DeepLabConfig {
        depth: ResNetDepth::ResNet50,
        num_classes: 3,
        aux: false,
    };
    let vm = VarMap::new();
    let trainable = DeepLabV3::new(cfg, seeded_var_builder(&vm, 5, DType::F32, &dev)).unwrap();
    let frozen = DeepLabV3::new(cfg, seeded_frozen_builder(5, DType::F32, &dev)).unwrap();
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 32, 40), &dev).unwrap();
    let (a, b) = (
        trainable.forward_t(&x, false).unwrap(),
        frozen.forward_t(&x, false).unwrap(),
    );
    // The frozen net folds its BatchNorms (rounding only; other weights
    // would differ by far more).
    assert!(max_abs_diff(&a, &b) < FOLD_TOLERANCE);
    // Through variables the output carries the autograd graph (and with it
    // every activation); through frozen weights it carries nothing.
    assert!(a.track_op());
    assert!(!b.track_op());
}
