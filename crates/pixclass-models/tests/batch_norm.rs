//! `BatchNorm2d` in train and eval mode: its fused CPU path and its portable
//! path (what GPUs run) against finite differences and against each other,
//! the running statistics included.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Tensor};
use common::*;

#[test]
fn batch_norm_train_matches_finite_differences() {
    use candle_nn::{VarBuilder, VarMap};
    use pixclass_models::layers::{BatchNorm2d, BatchNormConfig};
    let vm = VarMap::new();
    let bn = BatchNorm2d::new(
        3,
        BatchNormConfig::default(),
        VarBuilder::from_varmap(&vm, DType::F64, &candle_core::Device::Cpu),
    )
    .unwrap();
    {
        let data = vm.data().lock().unwrap();
        data["weight"].set(&rand_tensor(&[3], 40)).unwrap();
        data["bias"]
            .set(&rand_tensor(&[3], 41).affine(0.3, 0.0).unwrap())
            .unwrap();
    }
    let x = rand_tensor(&[2, 3, 4, 5], 42);
    let r = rand_tensor(&[2, 3, 4, 5], 43);
    for relu in [false, true] {
        let kernel = |x: &Tensor| {
            weighted_sum(
                &if relu {
                    bn.forward_relu_t(x, true)?
                } else {
                    bn.forward_t(x, true)?
                },
                &r,
            )
        };
        let portable = |x: &Tensor| weighted_sum(&bn.forward_portable_t(x, true, relu)?, &r);
        assert!(gradient_ok(&kernel, &x, 1e-6), "kernel relu={relu}");
        assert!(gradient_ok(&portable, &x, 1e-6), "portable relu={relu}");
        let a = kernel(&x).unwrap().to_scalar::<f64>().unwrap();
        let b = portable(&x).unwrap().to_scalar::<f64>().unwrap();
        assert!((a - b).abs() < 1e-12, "same forward: {a} vs {b}");
    }
    // Gradients of weight and bias agree between the two paths.
    let data = vm.data().lock().unwrap().clone();
    let (w, b) = (data["weight"].clone(), data["bias"].clone());
    let g1 = weighted_sum(&bn.forward_relu_t(&x, true).unwrap(), &r)
        .unwrap()
        .backward()
        .unwrap();
    let g2 = weighted_sum(&bn.forward_portable_t(&x, true, true).unwrap(), &r)
        .unwrap()
        .backward()
        .unwrap();
    for v in [&w, &b] {
        let a: Vec<f64> = g1.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        let c: Vec<f64> = g2.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(rel_err(&a, &c) < 1e-12, "{a:?} vs {c:?}");
    }
}

#[test]
fn batch_norm_eval_kernel_matches_portable_and_finite_differences() {
    use candle_nn::{VarBuilder, VarMap};
    use pixclass_models::layers::{BatchNorm2d, BatchNormConfig};
    let vm = VarMap::new();
    let bn = BatchNorm2d::new(
        3,
        BatchNormConfig::default(),
        VarBuilder::from_varmap(&vm, DType::F64, &candle_core::Device::Cpu),
    )
    .unwrap();
    {
        let data = vm.data().lock().unwrap();
        data["weight"].set(&rand_tensor(&[3], 50)).unwrap();
        data["bias"]
            .set(&rand_tensor(&[3], 51).affine(0.3, 0.0).unwrap())
            .unwrap();
        data["running_mean"]
            .set(&rand_tensor(&[3], 52).affine(0.5, 0.0).unwrap())
            .unwrap();
        data["running_var"]
            .set(
                &rand_tensor(&[3], 53)
                    .abs()
                    .unwrap()
                    .affine(1.0, 0.2)
                    .unwrap(),
            )
            .unwrap();
    }
    // An odd plane; values on both sides of the ReLU.
    let x = rand_tensor(&[2, 3, 3, 5], 54);
    let r = rand_tensor(&[2, 3, 3, 5], 55);
    let data = vm.data().lock().unwrap().clone();
    let (w, b) = (data["weight"].clone(), data["bias"].clone());
    for relu in [false, true] {
        let kernel = |x: &Tensor| {
            weighted_sum(
                &if relu {
                    bn.forward_relu_t(x, false)?
                } else {
                    bn.forward_t(x, false)?
                },
                &r,
            )
        };
        let portable = |x: &Tensor| weighted_sum(&bn.forward_portable_t(x, false, relu)?, &r);
        assert!(gradient_ok(&kernel, &x, 1e-6), "kernel relu={relu}");
        let a = kernel(&x).unwrap().to_scalar::<f64>().unwrap();
        let c = portable(&x).unwrap().to_scalar::<f64>().unwrap();
        assert!((a - c).abs() < 1e-12, "same forward: {a} vs {c}");
        // Weight and bias gradients agree between the two paths.
        let g1 = kernel(&x).unwrap().backward().unwrap();
        let g2 = portable(&x).unwrap().backward().unwrap();
        for v in [&w, &b] {
            let a: Vec<f64> = g1.get(v.as_tensor()).unwrap().to_vec1().unwrap();
            let c: Vec<f64> = g2.get(v.as_tensor()).unwrap().to_vec1().unwrap();
            assert!(rel_err(&a, &c) < 1e-12, "relu={relu}: {a:?} vs {c:?}");
        }
    }
    // Eval mode leaves the running statistics alone.
    let rm: Vec<f64> = bn.running_mean().to_vec1().unwrap();
    let want: Vec<f64> = rand_tensor(&[3], 52)
        .affine(0.5, 0.0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(rm, want);
}
