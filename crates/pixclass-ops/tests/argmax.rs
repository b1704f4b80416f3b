//! `argmax_classes` agrees with candle's `argmax(1)` bit for bit: the first
//! maximum on ties, a NaN never chosen after the first class, across block
//! edges (pixels not a multiple of the kernel's block), several images, f32
//! and f64.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

/// Scores quantised to a few levels (so ties are common) with a NaN here
/// and there, in class 0 too.
fn scores(shape: &[usize], seed: u64) -> Tensor {
    let v: Vec<f64> = rand_tensor(shape, seed)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let v: Vec<f64> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if i % 97 == 5 {
                f64::NAN
            } else {
                (x * 3.0).round()
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn check(shape: &[usize], dtype: DType) {
    let x = scores(shape, 11).to_dtype(dtype).unwrap();
    let want: Vec<u32> = x
        .argmax(1)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got = pixclass_ops::argmax_classes(&x).unwrap();
    assert_eq!(got.dims(), &[shape[0], shape[2], shape[3]]);
    assert_eq!(got.dtype(), DType::U32);
    let got: Vec<u32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want, "{shape:?} {dtype:?}");
    // The premise: with several classes, more than one of them wins.
    if shape[1] > 1 {
        assert!(want.iter().any(|&c| c > 0) && want.contains(&0));
    }
}

#[test]
fn argmax_classes_matches_candle_with_ties_nans_and_block_edges() {
    check(&[3, 5, 37, 43], DType::F32); // 1591 pixels: 3 blocks and a tail
    check(&[1, 24, 32, 32], DType::F64);
    check(&[2, 1, 4, 4], DType::F32); // one class: all zeros
}

#[test]
fn argmax_classes_of_a_non_contiguous_input() {
    let x = scores(&[2, 6, 9, 7], 3);
    let t = x.transpose(2, 3).unwrap(); // [2, 6, 7, 9], strided
    let want = t.argmax(1).unwrap().to_dtype(DType::U32).unwrap();
    let got = pixclass_ops::argmax_classes(&t).unwrap();
    let d = got.ne(&want).unwrap().to_dtype(DType::U32).unwrap();
    assert_eq!(d.sum_all().unwrap().to_scalar::<u32>().unwrap(), 0);
}
