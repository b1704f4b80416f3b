//! Canaries: candle 0.11's built-ins that pixclass-ops replaces are still
//! wrong, each in the way its test names (a wrong gradient, a missing or a
//! failing backward), checked by the same finite differences and PyTorch
//! fixtures as the ops. When one fails, upstream fixed that built-in and
//! the op may use it again. Each fails too when its premise stops holding.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Tensor};
use common::*;

const TOL: f64 = 1e-6;

#[test]
fn builtin_max_pool_gradient_is_detected_as_wrong() {
    // candle 0.11's max_pool2d backward is scaled by 1/(k*k). If this test
    // fails, upstream fixed it: ops::max_pool2d may then use the built-in.
    let x = rand_tensor(&[2, 3, 6, 8], 1);
    let r = rand_tensor(&[2, 3, 3, 4], 2);
    let f = |x: &Tensor| weighted_sum(&x.max_pool2d(2)?, &r);
    // The premise: the backward runs and is wrong (an error would be another defect).
    let err = gradient_error(&f, &x).expect("the built-in's backward runs");
    assert!(err > TOL, "built-in max_pool2d backward is now right");
}

#[test]
fn builtin_upsample_gradient_is_detected_as_wrong() {
    // The input is used directly first, then upsampled: candle 0.11's
    // upsample_nearest2d backward overwrites the accumulated gradient.
    let x = rand_tensor(&[2, 3, 4, 5], 5);
    let r = rand_tensor(&[2, 3, 8, 10], 6);
    let r2 = rand_tensor(&[2, 3, 4, 5], 7);
    let f = |x: &Tensor| weighted_sum(x, &r2)? + weighted_sum(&x.upsample_nearest2d(8, 10)?, &r)?;
    let g = |x: &Tensor| weighted_sum(&x.upsample_nearest2d(8, 10)?, &r)? + weighted_sum(x, &r2)?;
    let ef = gradient_error(&f, &x).expect("the built-in's backward runs");
    let eg = gradient_error(&g, &x).expect("the built-in's backward runs");
    assert!(
        ef.max(eg) > TOL,
        "built-in upsample_nearest2d backward is now right"
    );
}

#[test]
fn builtin_softmax_last_dim_has_no_gradient() {
    let x = rand_tensor(&[2, 5, 3, 4], 9).to_dtype(DType::F32).unwrap();
    let r = rand_tensor(&[2, 5, 3, 4], 10).to_dtype(DType::F32).unwrap();
    let v = candle_core::Var::from_tensor(&x).unwrap();
    let y = candle_nn::ops::softmax_last_dim(v.as_tensor()).unwrap();
    // The premise: the forward runs and the backward is not supported
    // (any other failure is not what this canary watches for).
    let loss = weighted_sum(&y, &r).expect("the forward runs");
    match loss.backward() {
        Err(e) => assert!(
            e.to_string().contains("no backward") || e.to_string().contains("not supported"),
            "the built-in's backward failed for another reason: {e}"
        ),
        Ok(g) => assert!(
            g.get(v.as_tensor()).is_none(),
            "built-in softmax_last_dim now has a gradient"
        ),
    }
}

#[test]
fn builtin_strided_conv_fails_on_mixed_parity() {
    let w = rand_tensor(&[4, 3, 3, 3], 11);
    let x = rand_tensor(&[2, 3, 7, 10], 12);
    let r = rand_tensor(&[2, 4, 4, 5], 13);
    let f = |x: &Tensor| weighted_sum(&x.conv2d(&w, 1, 2, 1, 1)?, &r);
    // The premise: the forward runs, the backward fails (the bug is a
    // shape error in the transposed convolution it uses).
    f(&x).expect("the built-in's forward runs");
    let backward = analytic(&f, &x);
    assert!(
        backward.is_err(),
        "built-in conv2d stride-2 backward now works"
    );
}

#[test]
fn builtin_max_pool_with_ties_differs_from_pytorch() {
    let t = load("ops.safetensors");
    let r = t["maxpool.r"].clone();
    let err = fixture_grad(&t, "maxpool", &|x| weighted_sum(&x.max_pool2d(2)?, &r));
    assert!(err > 1e-3, "built-in max_pool2d now matches PyTorch");
}
