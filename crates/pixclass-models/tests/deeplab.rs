//! DeepLabV3-ResNet101 against torchvision, with closed-form weights (the
//! same formula as `golden/make_deeplab_golden.py`), non-identity BatchNorm
//! statistics and a non-square input.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use pixclass_models::deeplab::{DeepLabConfig, DeepLabV3, ResNetDepth};
use pixclass_models::layers::trainable_scalars;

fn fnv1a(name: &str) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn formula(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let phase = (fnv1a(name) % 100003) as f64 / 100003.0 * 2.0 * std::f64::consts::PI;
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let base = (phase + 0.37 * i as f64).sin();
            let v = if name.ends_with("running_var") {
                1.0 + 0.5 * base.abs()
            } else if name.ends_with("running_mean") {
                0.05 * base
            } else if shape.len() == 1 && name.ends_with("weight") {
                1.0 + 0.2 * base
            } else if shape.len() == 1 {
                0.05 * base
            } else {
                base / ((n / shape[0]) as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn build(cfg: DeepLabConfig) -> (VarMap, DeepLabV3) {
    let vm = VarMap::new();
    // Zeros first (fast), then every tensor set by the formula.
    let model = DeepLabV3::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &device())).unwrap();
    (vm, model)
}

#[test]
fn resnet101_matches_torchvision() {
    let (vm, model) = build(DeepLabConfig::default());
    // torchvision's parameter count (buffers excluded).
    assert_eq!(trainable_scalars(&vm), 60_996_202);
    {
        let data = vm.data().lock().unwrap();
        assert_eq!(
            data.len(),
            676 - 112,
            "torchvision state-dict keys less the 112 num_batches_tracked"
        );
        for (name, var) in data.iter() {
            var.set(&formula(name, var.dims()).to_device(var.device()).unwrap())
                .unwrap();
        }
    }
    let t = load("deeplab_r101.safetensors");
    let x = &t["x"].to_device(&device()).unwrap();
    let features = model.features_t(x, false).unwrap();
    assert_eq!(features.dims(), &[1, 256, 6, 8]);
    let e = max_rel_strict(&features, &t["features"]);
    assert!(e < 1e-4, "features off by {e}");
    let logits = model.forward_t(x, false).unwrap();
    assert_eq!(logits.dims(), &[1, 21, 48, 64]);
    let e = max_rel_strict(&logits, &t["logits"]);
    assert!(e < 1e-4, "logits off by {e}");
    let aux = model.aux_forward_t(x, false).unwrap().unwrap();
    let aux_sub = aux
        .reshape((1, 21, 12, 4, 16, 4))
        .unwrap()
        .narrow(3, 0, 1)
        .unwrap()
        .narrow(5, 0, 1)
        .unwrap()
        .reshape((1, 21, 12, 16))
        .unwrap();
    let e = max_rel_strict(&aux_sub, &t["aux_sub"]);
    assert!(e < 1e-4, "aux logits off by {e}");
    // The same weights as plain tensors (a pretrained, frozen backbone):
    // every BatchNorm is folded into its convolution, within the same
    // tolerance.
    let frozen: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().copy().unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(frozen, DType::F32, &device());
    let model = DeepLabV3::new(DeepLabConfig::default(), vb).unwrap();
    for _ in 0..2 {
        // Folded on the first forward, reused on the second.
        let e = max_rel_strict(&model.features_t(x, false).unwrap(), &t["features"]);
        assert!(e < 1e-4, "folded features off by {e}");
        let e = max_rel_strict(&model.forward_t(x, false).unwrap(), &t["logits"]);
        assert!(e < 1e-4, "folded logits off by {e}");
    }
}

#[test]
fn resnet50_has_torchvisions_parameter_count_and_shapes() {
    let cfg = DeepLabConfig {
        depth: ResNetDepth::ResNet50,
        num_classes: 21,
        aux: true,
    };
    let (vm, model) = build(cfg);
    assert_eq!(trainable_scalars(&vm), 42_004_074);
    let x = Tensor::zeros((1, 3, 33, 41), DType::F32, &device()).unwrap();
    assert_eq!(model.forward_t(&x, false).unwrap().dims(), &[1, 21, 33, 41]);
    // A 2-class head: only classifier.4 changes.
    let (vm2, _) = build(DeepLabConfig {
        num_classes: 2,
        aux: false,
        ..cfg
    });
    assert_eq!(
        trainable_scalars(&vm) - trainable_scalars(&vm2),
        (256 * 21 + 21) - (256 * 2 + 2) + (1024 * 256 * 9 + 512 + 256 * 21 + 21)
    );
}

#[test]
fn bilinear_resize_matches_pytorch_conventions_and_gradients() {
    use pixclass_ops::resize_bilinear;
    // align_corners=False, 2 -> 4: PyTorch gives [a, .75a+.25b, .25a+.75b, b].
    let x = Tensor::new(&[[[[1f64, 3.0]]]], &Device::Cpu).unwrap();
    let y = resize_bilinear(&x, 1, 4, false).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        vec![1.0, 1.5, 2.5, 3.0]
    );
    let y = resize_bilinear(&x, 1, 3, true).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // Gradient against finite differences (upsampling and downsampling).
    for (oh, ow, ac) in [(7usize, 9usize, false), (3, 2, false), (7, 9, true)] {
        let x = rand_tensor(&[2, 3, 4, 5], 50);
        let r = rand_tensor(&[2, 3, oh, ow], 51);
        let f = |x: &Tensor| weighted_sum(&resize_bilinear(x, oh, ow, ac)?, &r);
        assert!(gradient_ok(&f, &x, 1e-6), "{oh}x{ow} align_corners={ac}");
    }
}

#[test]
fn strided_max_pool_matches_finite_differences_and_portable_path() {
    use pixclass_ops::max_pool2d_strided;
    let x = rand_tensor(&[2, 3, 9, 8], 60);
    let y = max_pool2d_strided(&x, 3, 2, 1).unwrap();
    assert_eq!(y.dims(), &[2, 3, 5, 4]);
    let r = rand_tensor(y.dims(), 61);
    let f = |x: &Tensor| weighted_sum(&max_pool2d_strided(x, 3, 2, 1)?, &r);
    assert!(gradient_ok(&f, &x, 1e-6));
    // The same values as a brute-force window maximum.
    let xv: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let yv: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
    for p in 0..6 {
        for oy in 0..5 {
            for ox in 0..4 {
                let mut m = f64::MIN;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (iy, ix) = ((oy * 2 + dy) as isize - 1, (ox * 2 + dx) as isize - 1);
                        if (0..9).contains(&iy) && (0..8).contains(&ix) {
                            m = m.max(xv[p * 72 + iy as usize * 8 + ix as usize]);
                        }
                    }
                }
                assert_eq!(yv[p * 20 + oy * 4 + ox], m);
            }
        }
    }
}
