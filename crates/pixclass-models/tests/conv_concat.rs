//! `Conv2d::forward_concat` computes `forward(cat(parts))` without the
//! concatenation: the same values and the same gradients (inputs, weight,
//! bias), in f64 for the Winograd-sized part and the 1-channel part alike,
//! also when the last part is a constant (one fused op).
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use pixclass_models::layers::{Conv2d, Conv2dConfig, Padding};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn forward_concat_matches_the_concatenation() {
    let dev = Device::Cpu;
    // The UNet's last layer (features + grey input, Winograd for the first
    // part) and a strided one with three parts.
    // `constant_tail`: the last part is a plain tensor (the UNet's grey
    // input), which takes the one-op path and gets no gradient.
    for (chans, stride, padding, constant_tail) in [
        (vec![9usize, 1], 1, Padding::Same, false),
        (vec![9usize, 1], 1, Padding::Same, true),
        (vec![2, 3, 4], 2, Padding::Symmetric(1), false),
        (vec![5, 2], 2, Padding::Symmetric(1), true),
    ] {
        let cin: usize = chans.iter().sum();
        let vm = VarMap::new();
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = Conv2d::new(
            cin,
            10,
            3,
            cfg,
            VarBuilder::from_varmap(&vm, DType::F64, &dev),
        )
        .unwrap();
        let parts: Vec<Var> = chans
            .iter()
            .enumerate()
            .map(|(i, &c)| Var::from_tensor(&rand_tensor(&[3, c, 8, 6], 60 + i as u64)).unwrap())
            .collect();
        let mut tensors: Vec<&Tensor> = parts.iter().map(|p| p.as_tensor()).collect();
        let detached = parts.last().unwrap().as_tensor().detach();
        if constant_tail {
            *tensors.last_mut().unwrap() = &detached;
        }
        let r = rand_tensor(&[3, 10, 8 / stride, 6 / stride], 70);
        let split = conv.forward_concat(&tensors).unwrap();
        let whole = conv.forward(&Tensor::cat(&tensors, 1).unwrap()).unwrap();
        assert!(max_diff(&split, &whole) < 1e-12, "{chans:?}: values");
        let g_split = (split * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_whole = (whole * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let tracked = if constant_tail {
            &tensors[..tensors.len() - 1]
        } else {
            &tensors[..]
        };
        let mut watched: Vec<Tensor> = tracked.iter().map(|t| (*t).clone()).collect();
        watched.push(conv.weight().clone());
        watched.push(conv.bias().unwrap().clone());
        if constant_tail {
            assert!(g_split.get(&detached).is_none(), "{chans:?}: the constant");
        }
        for t in &watched {
            let (a, b) = (g_split.get(t).unwrap(), g_whole.get(t).unwrap());
            assert!(
                max_diff(a, b) < 1e-12,
                "{chans:?}: gradient of {:?}",
                t.dims()
            );
        }
    }
    // Parts whose channels do not add up are an error, not a panic.
    let vm = VarMap::new();
    let conv = Conv2d::new(
        3,
        2,
        3,
        Conv2dConfig::default(),
        VarBuilder::from_varmap(&vm, DType::F64, &dev),
    )
    .unwrap();
    let x = rand_tensor(&[1, 2, 5, 5], 1);
    let err = conv.forward_concat(&[&x, &x]).unwrap_err();
    assert!(err.to_string().contains("do not add up"), "{err}");
}
