//! Gradients of every op the models use, checked element by element against
//! finite differences (f64) and against PyTorch; and proof that the buggy
//! candle built-ins they replace are detected as wrong by the same checks.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Tensor, D};
use common::*;
use pixclass_ops as ops;

const TOL: f64 = 1e-6;

#[test]
fn max_pool_matches_finite_differences() {
    // The CPU kernel and the portable formulation used on GPUs.
    for pool in [ops::max_pool2d, ops::max_pool2d_portable] {
        let x = rand_tensor(&[2, 3, 6, 8], 1);
        let r = rand_tensor(&[2, 3, 3, 4], 2);
        let f = |x: &Tensor| weighted_sum(&pool(x, 2)?, &r);
        assert!(gradient_ok(&f, &x, TOL));
        // Window 3 with dropped trailing rows and columns.
        let x = rand_tensor(&[1, 2, 7, 8], 3);
        let r = rand_tensor(&[1, 2, 2, 2], 4);
        let f = |x: &Tensor| weighted_sum(&pool(x, 3)?, &r);
        assert!(gradient_ok(&f, &x, TOL));
    }
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum_on_ties() {
    // Finite differences cannot see ties; PyTorch sends the gradient to the
    // first maximum of a window in row-major order.
    let x = Tensor::new(
        &[[[[5f32, 5., 1., 3.], [5., 5., 3., 2.]]]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let v = candle_core::Var::from_tensor(&x).unwrap();
    let y = ops::max_pool2d(v.as_tensor(), 2).unwrap();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [5., 3.]);
    let r = Tensor::new(&[[[[2f32, 7.]]]], &candle_core::Device::Cpu).unwrap();
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
    assert_eq!(
        gx.to_vec1::<f32>().unwrap(),
        [2., 0., 0., 7., 0., 0., 0., 0.]
    );
}

#[test]
fn upsample_used_twice_matches_finite_differences() {
    for up in [ops::upsample_nearest, ops::upsample_nearest_portable] {
        let x = rand_tensor(&[2, 3, 4, 5], 5);
        let r = rand_tensor(&[2, 3, 8, 10], 6);
        let r2 = rand_tensor(&[2, 3, 4, 5], 7);
        let f = |x: &Tensor| weighted_sum(x, &r2)? + weighted_sum(&up(x, 2)?, &r)?;
        assert!(gradient_ok(&f, &x, TOL));
        let r3 = rand_tensor(&[2, 3, 12, 15], 8);
        let f = |x: &Tensor| weighted_sum(&up(x, 3)?, &r3)? + weighted_sum(x, &r2)?;
        assert!(gradient_ok(&f, &x, TOL));
    }
}

#[test]
fn softmax_and_log_softmax_match_finite_differences() {
    let x = rand_tensor(&[2, 5, 3, 4], 9);
    let r = rand_tensor(&[2, 5, 3, 4], 10);
    let f = |x: &Tensor| weighted_sum(&ops::softmax(x, 1)?, &r);
    assert!(gradient_ok(&f, &x, TOL));
    let f = |x: &Tensor| weighted_sum(&ops::log_softmax(x, 1)?, &r);
    assert!(gradient_ok(&f, &x, TOL));
    let f = |x: &Tensor| weighted_sum(&ops::softmax(x, D::Minus1)?, &r);
    assert!(gradient_ok(&f, &x, TOL));
}

#[test]
fn strided_conv_on_mixed_parity_input_matches_finite_differences() {
    let w = rand_tensor(&[4, 3, 3, 3], 11);
    for (h, wd) in [(7usize, 10usize), (8, 9), (9, 9), (10, 10)] {
        let x = rand_tensor(&[2, 3, h, wd], 12);
        let ho = (h + 2 - 3) / 2 + 1;
        let wo = (wd + 2 - 3) / 2 + 1;
        let r = rand_tensor(&[2, 4, ho, wo], 13);
        // The CPU GEMM kernels and the portable path used on GPUs.
        for conv in [ops::conv2d, ops::conv2d_portable] {
            let fx = |x: &Tensor| weighted_sum(&conv(x, &w, (1, 1), (1, 1), 2, 1, 1)?, &r);
            assert!(gradient_ok(&fx, &x, 1e-5), "input gradient at {h}x{wd}");
            let fw = |w: &Tensor| weighted_sum(&conv(&x, w, (1, 1), (1, 1), 2, 1, 1)?, &r);
            assert!(gradient_ok(&fw, &w, 1e-5), "weight gradient at {h}x{wd}");
        }
    }
    // Asymmetric "same" padding (even kernel), stride 1.
    let w2 = rand_tensor(&[2, 3, 4, 4], 14);
    let x = rand_tensor(&[1, 3, 6, 5], 15);
    let r = rand_tensor(&[1, 2, 6, 5], 16);
    let p = ops::same_padding(4, 1);
    for conv in [ops::conv2d, ops::conv2d_portable] {
        let fx = |x: &Tensor| weighted_sum(&conv(x, &w2, p, p, 1, 1, 1)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-5));
        let fw = |w: &Tensor| weighted_sum(&conv(&x, w, p, p, 1, 1, 1)?, &r);
        assert!(gradient_ok(&fw, &w2, 1e-5));
    }
    // Dilation 2, stride 2, odd sizes.
    let w3 = rand_tensor(&[3, 2, 3, 3], 17);
    let x = rand_tensor(&[2, 2, 9, 8], 18);
    let y = ops::conv2d(&x, &w3, (2, 2), (2, 2), 2, 2, 1).unwrap();
    let r = rand_tensor(y.dims(), 19);
    for conv in [ops::conv2d, ops::conv2d_portable] {
        let fx = |x: &Tensor| weighted_sum(&conv(x, &w3, (2, 2), (2, 2), 2, 2, 1)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-5));
        let fw = |w: &Tensor| weighted_sum(&conv(&x, w, (2, 2), (2, 2), 2, 2, 1)?, &r);
        assert!(gradient_ok(&fw, &w3, 1e-5));
    }
    // Stride 3 (the kernels' general strided copy; stride 2 has its own).
    let x = rand_tensor(&[2, 2, 11, 10], 20);
    let y = ops::conv2d(&x, &w3, (1, 1), (1, 1), 3, 1, 1).unwrap();
    let portable = ops::conv2d_portable(&x, &w3, (1, 1), (1, 1), 3, 1, 1).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4, 4]);
    assert!(max_rel(&y, &portable) < 1e-12);
    let r = rand_tensor(y.dims(), 21);
    let fx = |x: &Tensor| weighted_sum(&ops::conv2d(x, &w3, (1, 1), (1, 1), 3, 1, 1)?, &r);
    assert!(gradient_ok(&fx, &x, 1e-5), "stride 3 input gradient");
    let fw = |w: &Tensor| weighted_sum(&ops::conv2d(&x, w, (1, 1), (1, 1), 3, 1, 1)?, &r);
    assert!(gradient_ok(&fw, &w3, 1e-5), "stride 3 weight gradient");
}

#[test]
fn dilated_conv_whose_taps_fall_in_the_padding() {
    // ASPP-style: dilation 6 on a 5x4 map, so some kernel taps only ever
    // read padding (a regression test for the GEMM kernels' index ranges).
    let w = rand_tensor(&[2, 3, 3, 3], 70);
    let x = rand_tensor(&[2, 3, 5, 4], 71);
    let r = rand_tensor(&[2, 2, 5, 4], 72);
    let y = ops::conv2d(&x, &w, (6, 6), (6, 6), 1, 6, 1).unwrap();
    let y2 = ops::conv2d_portable(&x, &w, (6, 6), (6, 6), 1, 6, 1).unwrap();
    assert_eq!(y.dims(), &[2, 2, 5, 4]);
    let d: Vec<f64> = (y - y2)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(d.iter().all(|v| *v < 1e-12));
    // One image (the column matrix built by all threads) with dilations that
    // leave some taps live (3: rows, 4: columns too) or only the centre (6).
    let x1 = rand_tensor(&[1, 3, 5, 4], 73);
    // (3 and 4 take the per-tap GEMMs over each tap's live rectangle, whose
    // gradients are the im2col kernels': checked against finite differences.)
    for dil in [3, 4, 6] {
        let a = ops::conv2d(&x1, &w, (dil, dil), (dil, dil), 1, dil, 1).unwrap();
        let b = ops::conv2d_portable(&x1, &w, (dil, dil), (dil, dil), 1, dil, 1).unwrap();
        assert!(max_rel(&a, &b) < 1e-12, "dilation {dil}");
        let r1 = rand_tensor(a.dims(), 76);
        let p = (dil, dil);
        let fx = |x: &Tensor| weighted_sum(&ops::conv2d(x, &w, p, p, 1, dil, 1)?, &r1);
        assert!(
            gradient_ok(&fx, &x1, 1e-6),
            "input gradient, dilation {dil}"
        );
        let fw = |w: &Tensor| weighted_sum(&ops::conv2d(&x1, w, p, p, 1, dil, 1)?, &r1);
        assert!(
            gradient_ok(&fw, &w, 1e-6),
            "weight gradient, dilation {dil}"
        );
    }
    // No live tap at all (a 1x1 kernel, stride 3, reading only padding): zeros.
    let x0 = rand_tensor(&[1, 3, 1, 1], 74);
    let w0 = rand_tensor(&[2, 3, 1, 1], 75);
    let a = ops::conv2d(&x0, &w0, (1, 1), (1, 1), 3, 1, 1).unwrap();
    let b = ops::conv2d_portable(&x0, &w0, (1, 1), (1, 1), 3, 1, 1).unwrap();
    assert_eq!(a.dims(), b.dims());
    assert_eq!(f64s(&a), f64s(&b));
    for conv in [ops::conv2d, ops::conv2d_portable] {
        let fx = |x: &Tensor| weighted_sum(&conv(x, &w, (6, 6), (6, 6), 1, 6, 1)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-6));
        let fw = |w: &Tensor| weighted_sum(&conv(&x, w, (6, 6), (6, 6), 1, 6, 1)?, &r);
        assert!(gradient_ok(&fw, &w, 1e-6));
    }
}

#[test]
fn dilated_same_convs_taken_by_winograd_match_the_portable_ones() {
    // Big enough for the phase-split Winograd kernel (DeepLab's dilated
    // stages): dilation 2 with an odd height (phases of unequal sizes) and
    // dilation 3 over two images. Forward with bias, and both gradients,
    // against candle's own convolution (its gradients are the ones the
    // finite-difference tests above check at small sizes).
    for (i, (shape, d)) in [([1, 8, 63, 64], 2), ([2, 8, 48, 50], 3)]
        .into_iter()
        .enumerate()
    {
        let seed = 80 + 10 * i as u64;
        let x = rand_tensor(&shape, seed);
        let w = rand_tensor(&[9, 8, 3, 3], seed + 1);
        let b = rand_tensor(&[9], seed + 2);
        let ours = ops::conv2d_bias(&x, &w, Some(&b), (d, d), (d, d), 1, d, 1).unwrap();
        let portable = ops::conv2d_portable(&x, &w, (d, d), (d, d), 1, d, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 9, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), portable.dims());
        assert!(max_rel(&ours, &portable) < 1e-12, "forward d={d}");
        let r = rand_tensor(ours.dims(), seed + 3);
        for (what, ours, theirs) in [
            (
                "input",
                analytic(
                    &|x| weighted_sum(&ops::conv2d(x, &w, (d, d), (d, d), 1, d, 1)?, &r),
                    &x,
                ),
                analytic(
                    &|x| weighted_sum(&ops::conv2d_portable(x, &w, (d, d), (d, d), 1, d, 1)?, &r),
                    &x,
                ),
            ),
            (
                "weight",
                analytic(
                    &|w| weighted_sum(&ops::conv2d(&x, w, (d, d), (d, d), 1, d, 1)?, &r),
                    &w,
                ),
                analytic(
                    &|w| weighted_sum(&ops::conv2d_portable(&x, w, (d, d), (d, d), 1, d, 1)?, &r),
                    &w,
                ),
            ),
        ] {
            let e = rel_err(&ours.unwrap(), &theirs.unwrap());
            assert!(e < 1e-12, "{what} gradient d={d}: {e}");
        }
    }
}

#[test]
fn strided_conv_forward_matches_candle_for_every_padding_and_kernel() {
    // The stride-2 kernels read each tap from the image's parity planes:
    // odd and even kernels, no padding and padding wider than the kernel's
    // reach, odd and even sizes; then the input and weight gradients.
    for (k, p) in [
        (3usize, 1usize),
        (3, 0),
        (3, 2),
        (2, 0),
        (4, 1),
        (5, 2),
        (1, 0),
    ] {
        for (h, wd) in [(7usize, 10usize), (8, 9), (6, 6)] {
            let w = rand_tensor(&[3, 2, k, k], 30);
            let x = rand_tensor(&[2, 2, h, wd], 31);
            let ours = ops::conv2d(&x, &w, (p, p), (p, p), 2, 1, 1).unwrap();
            let theirs = x.conv2d(&w, p, 2, 1, 1).unwrap();
            assert!(
                max_rel_strict(&ours, &theirs) < 1e-12,
                "forward k={k} p={p} {h}x{wd}"
            );
            let r = rand_tensor(ours.dims(), 32);
            let fx = |x: &Tensor| weighted_sum(&ops::conv2d(x, &w, (p, p), (p, p), 2, 1, 1)?, &r);
            assert!(
                gradient_ok(&fx, &x, 1e-5),
                "input gradient k={k} p={p} {h}x{wd}"
            );
            let fw = |w: &Tensor| weighted_sum(&ops::conv2d(&x, w, (p, p), (p, p), 2, 1, 1)?, &r);
            assert!(
                gradient_ok(&fw, &w, 1e-5),
                "weight gradient k={k} p={p} {h}x{wd}"
            );
        }
    }
}

#[test]
fn conv_transpose_matches_finite_differences() {
    for (k, p, op) in [(3usize, 1usize, 1usize), (4, 1, 0), (5, 2, 1), (2, 0, 0)] {
        let w = rand_tensor(&[3, 2, k, k], 20);
        let x = rand_tensor(&[2, 3, 4, 3], 21);
        let y0 = ops::conv_transpose2d(&x, &w, p, op, 2, 1).unwrap();
        let y1 = x.conv_transpose2d(&w, p, op, 2, 1).unwrap();
        assert!(
            y0.sub(&y1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                < 1e-12,
            "forward = candle's"
        );
        let r = rand_tensor(y0.dims(), 22);
        let fx = |x: &Tensor| weighted_sum(&ops::conv_transpose2d(x, &w, p, op, 2, 1)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-5), "input gradient k={k}");
        let fw = |w: &Tensor| weighted_sum(&ops::conv_transpose2d(&x, w, p, op, 2, 1)?, &r);
        assert!(gradient_ok(&fw, &w, 1e-5), "weight gradient k={k}");
    }
}

#[test]
fn ops_match_pytorch() {
    let t = load("ops.safetensors");
    // Max-pool with exact ties: PyTorch routes the gradient to the first max.
    let r = t["maxpool.r"].clone();
    assert!(
        fixture_grad(&t, "maxpool", &|x| weighted_sum(
            &ops::max_pool2d(x, 2)?,
            &r
        )) < 1e-12
    );
    let r = t["maxpool_odd.r"].clone();
    assert!(
        fixture_grad(&t, "maxpool_odd", &|x| weighted_sum(
            &ops::max_pool2d(x, 2)?,
            &r
        )) < 1e-12
    );
    let (r, r2) = (t["upsample.r"].clone(), t["upsample.r2"].clone());
    assert!(
        fixture_grad(&t, "upsample", &|x| weighted_sum(
            &ops::upsample_nearest(x, 2)?,
            &r
        )? + weighted_sum(x, &r2)?)
            < 1e-12
    );
    let r = t["softmax.r"].clone();
    assert!(fixture_grad(&t, "softmax", &|x| weighted_sum(&ops::softmax(x, 1)?, &r)) < 1e-12);

    let (x, w, r) = (&t["conv_s2.x"], &t["conv_s2.w"], &t["conv_s2.r"]);
    let y = ops::conv2d(x, w, (1, 1), (1, 1), 2, 1, 1).unwrap();
    let yt: Vec<f64> = t["conv_s2.y"].flatten_all().unwrap().to_vec1().unwrap();
    assert!(rel_err(&y.flatten_all().unwrap().to_vec1().unwrap(), &yt) < 1e-12);
    let gx = analytic(
        &|x| weighted_sum(&ops::conv2d(x, w, (1, 1), (1, 1), 2, 1, 1)?, r),
        x,
    )
    .unwrap();
    let gw = analytic(
        &|w| weighted_sum(&ops::conv2d(x, w, (1, 1), (1, 1), 2, 1, 1)?, r),
        w,
    )
    .unwrap();
    let tx: Vec<f64> = t["conv_s2.grad_x"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let tw: Vec<f64> = t["conv_s2.grad_w"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(rel_err(&gx, &tx) < 1e-12);
    assert!(rel_err(&gw, &tw) < 1e-12);
}

#[test]
fn conv_gradients_are_bitwise_independent_of_thread_count() {
    // The weight gradient sums over images; its partition is fixed, so the
    // result must not depend on how many threads run it (or how they are
    // scheduled). Both kernels: im2col (37 images, stride 2) and Winograd
    // (41 images of 16x16, stride 1, 8 channels); several partial sums and a
    // ragged last one each.
    for (xd, wd, stride) in [
        ([37, 3, 9, 7], [4, 3, 3, 3], 2),
        ([41, 8, 16, 16], [8, 8, 3, 3], 1),
    ] {
        let x = rand_tensor(&xd, 80).to_dtype(DType::F32).unwrap();
        let w = rand_tensor(&wd, 81).to_dtype(DType::F32).unwrap();
        let y0 = ops::conv2d(&x, &w, (1, 1), (1, 1), stride, 1, 1).unwrap();
        let r = rand_tensor(y0.dims(), 82).to_dtype(DType::F32).unwrap();
        let grads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let wv = candle_core::Var::from_tensor(&w).unwrap();
                let xv = candle_core::Var::from_tensor(&x).unwrap();
                let y = ops::conv2d(xv.as_tensor(), wv.as_tensor(), (1, 1), (1, 1), stride, 1, 1)
                    .unwrap();
                let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |v: &candle_core::Var| -> Vec<f32> {
                    g.get(v.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                };
                (flat(&wv), flat(&xv))
            })
        };
        let one = grads(1);
        for t in [2, 3, 5] {
            assert_eq!(grads(t), one, "stride {stride}: {t} threads");
        }
    }
}

#[test]
fn cross_entropy_kernel_matches_portable_and_finite_differences() {
    let x = rand_tensor(&[2, 5, 3, 4], 90).affine(3.0, 0.0).unwrap();
    let t = Tensor::from_vec(
        (0..24u32).map(|i| (i * 7 + 3) % 5).collect(),
        (2, 3, 4),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let a = ops::cross_entropy(&x, &t)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let b = ops::cross_entropy_portable(&x, &t)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    for ce in [ops::cross_entropy, ops::cross_entropy_portable] {
        let f = |x: &Tensor| ce(x, &t)?.affine(2.5, 0.0);
        assert!(gradient_ok(&f, &x, 1e-6));
    }
    // f32 logits (single-precision exp, stored log-sum-exp) agree with f64.
    let x32 = candle_core::Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
    let l32 = ops::cross_entropy(x32.as_tensor(), &t).unwrap();
    let g32 = l32.backward().unwrap();
    let g32 = g32
        .get(x32.as_tensor())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let l32 = f64::from(l32.to_scalar::<f32>().unwrap());
    assert!((l32 - a).abs() < 1e-6 * a, "{l32} vs {a}");
    let x64 = candle_core::Var::from_tensor(&x).unwrap();
    let g64 = ops::cross_entropy(x64.as_tensor(), &t)
        .unwrap()
        .backward()
        .unwrap();
    let g64 = g64.get(x64.as_tensor()).unwrap();
    let diff = (&g32 - g64).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-8, "{diff}");
    // A NaN logit makes the loss NaN (the trainer stops on it).
    let mut v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[7] = f64::NAN;
    let xn = Tensor::from_vec(v, x.shape(), x.device())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let ln = ops::cross_entropy(&xn, &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(ln.is_nan(), "{ln}");
    // A class out of range is an error, not a panic.
    let bad = Tensor::from_vec(vec![7u32; 24], (2, 3, 4), &candle_core::Device::Cpu).unwrap();
    let err = ops::cross_entropy(&x, &bad).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn cross_entropy_backward_twice_recomputes_the_kept_gradient() {
    // The forward of tracked logits writes their gradient and the first
    // backward takes it; a second backward over the same graph (and a
    // scaled upstream gradient) computes it afresh, to the same values.
    let x = rand_tensor(&[3, 4, 5, 2], 17).affine(2.0, 0.0).unwrap();
    let t = Tensor::from_vec(
        (0..30u32).map(|i| (i * 5 + 1) % 4).collect(),
        (3, 5, 2),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for dtype in [DType::F32, DType::F64] {
        let v = candle_core::Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let loss = ops::cross_entropy(v.as_tensor(), &t).unwrap();
        let grad = |l: &Tensor| {
            let g = l.backward().unwrap();
            g.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap()
        };
        let first = grad(&loss);
        let second = grad(&loss);
        let diff = (&first - &second)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-7, "{dtype:?}: {diff}");
        let scaled = grad(&loss.affine(3.0, 0.0).unwrap());
        let diff = ((&first * 3.0).unwrap() - &scaled)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-7, "{dtype:?}: {diff}");
        // Each pixel's gradient sums to zero over the classes.
        let sums = first
            .sum_keepdim(1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(sums.to_scalar::<f64>().unwrap() < 1e-7, "{dtype:?}: {sums}");
    }
}

#[test]
fn depthwise_conv_matches_grouped_conv_and_finite_differences() {
    // Strides 1 and 2, dilation 1 and 2, asymmetric (TF "SAME") padding,
    // an odd x even input.
    for (stride, dilation, ph, pw) in [
        (1, 1, (1, 1), (1, 1)),
        (2, 1, (0, 1), (1, 1)),
        (1, 2, (2, 2), (2, 2)),
    ] {
        let x = rand_tensor(&[2, 3, 7, 6], 21);
        let w = rand_tensor(&[3, 1, 3, 3], 22);
        let ours = ops::depthwise_conv2d(&x, &w, ph, pw, stride, dilation).unwrap();
        let portable = ops::depthwise_conv2d_portable(&x, &w, ph, pw, stride, dilation).unwrap();
        assert!(
            max_rel(&ours, &portable) < 1e-12,
            "kernel vs portable s={stride} d={dilation}"
        );
        let grouped = ops::conv2d_portable(&x, &w, ph, pw, stride, dilation, 3).unwrap();
        assert_eq!(ours.dims(), grouped.dims());
        assert!(
            max_rel(&ours, &grouped) < 1e-12,
            "forward s={stride} d={dilation}"
        );
        let r = rand_tensor(ours.dims(), 23);
        let fx =
            |t: &Tensor| weighted_sum(&ops::depthwise_conv2d(t, &w, ph, pw, stride, dilation)?, &r);
        assert!(
            gradient_ok(&fx, &x, 1e-6),
            "input gradient s={stride} d={dilation}"
        );
        let fw =
            |t: &Tensor| weighted_sum(&ops::depthwise_conv2d(&x, t, ph, pw, stride, dilation)?, &r);
        assert!(
            gradient_ok(&fw, &w, 1e-6),
            "weight gradient s={stride} d={dilation}"
        );
    }
    // Planes wider than one 16-lane vector, so that each tap's run of valid
    // columns has a vector body and a scalar tail, at every stride and
    // dilation MobileNetV2 uses, and a one-column output: forwards only
    // (against grouped convolution).
    for (h, w_, stride, dilation, ph, pw) in [
        (37, 35, 1, 1, (1, 1), (1, 1)),
        (37, 35, 2, 1, (0, 1), (0, 1)),
        (33, 33, 1, 2, (2, 2), (2, 2)),
        (33, 34, 1, 4, (4, 4), (4, 4)),
        (20, 40, 2, 2, (2, 2), (2, 2)),
        (5, 1, 1, 1, (1, 1), (1, 1)),
    ] {
        let x = rand_tensor(&[2, 3, h, w_], 24);
        let w = rand_tensor(&[3, 1, 3, 3], 25);
        let ours = ops::depthwise_conv2d(&x, &w, ph, pw, stride, dilation).unwrap();
        let grouped = ops::conv2d_portable(&x, &w, ph, pw, stride, dilation, 3).unwrap();
        assert_eq!(
            ours.dims(),
            grouped.dims(),
            "{h}x{w_} s={stride} d={dilation}"
        );
        assert!(
            max_rel(&ours, &grouped) < 1e-12,
            "forward {h}x{w_} s={stride} d={dilation}"
        );
    }
}

#[test]
fn binary_losses_match_portable_and_finite_differences() {
    use pixclass_ops::Loss as K;
    let d = (rand_tensor(&[3, 5, 7], 31) * 3.0).unwrap();
    let t: Vec<u32> = (0..105)
        .map(|i| ((i * 7 + i / 5) % 3 == 0) as u32)
        .collect();
    let t = Tensor::from_vec(t, (3, 5, 7), &candle_core::Device::Cpu).unwrap();
    for kind in [K::Ce, K::Iou, K::Dice] {
        let fused = ops::margin_loss(&d, &t, kind)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let portable = ops::margin_loss_portable(&d, &t, kind)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (fused - portable).abs() < 1e-12,
            "{kind:?}: {fused} vs {portable}"
        );
        let f = |x: &Tensor| ops::margin_loss(x, &t, kind);
        assert!(gradient_ok(&f, &d, 1e-6), "{kind:?} kernel gradient");
        let g = |x: &Tensor| ops::margin_loss_portable(x, &t, kind);
        assert!(gradient_ok(&g, &d, 1e-6), "{kind:?} portable gradient");
        // f32 margins (training's dtype): single-precision exp/log per pixel,
        // f64 sums; value and gradient agree with the f64 kernel.
        let d32 = d.to_dtype(DType::F32).unwrap();
        let v32 = candle_core::Var::from_tensor(&d32).unwrap();
        let l32 = ops::margin_loss(v32.as_tensor(), &t, kind).unwrap();
        let g32 = l32
            .backward()
            .unwrap()
            .get(v32.as_tensor())
            .unwrap()
            .clone();
        let v64 = candle_core::Var::from_tensor(&d).unwrap();
        let l64 = ops::margin_loss(v64.as_tensor(), &t, kind).unwrap();
        let g64 = l64
            .backward()
            .unwrap()
            .get(v64.as_tensor())
            .unwrap()
            .clone();
        let (a, b) = (
            l32.to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            l64.to_scalar::<f64>().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-6 * b.abs().max(1.0),
            "{kind:?} f32 value {a} vs {b}"
        );
        assert!(
            max_rel_strict(&g32.to_dtype(DType::F64).unwrap(), &g64) < 1e-5,
            "{kind:?} f32 gradient"
        );
    }
    // Targets must be 0/1 and shapes must agree.
    let bad = Tensor::new(&[[[2u32]]], &candle_core::Device::Cpu).unwrap();
    let one = Tensor::new(&[[[0.5f64]]], &candle_core::Device::Cpu).unwrap();
    assert!(ops::margin_loss(&one, &bad, K::Ce).is_err());
    assert!(ops::margin_loss(&d, &bad, K::Ce).is_err());
}

#[test]
fn pointwise_conv_fast_path_matches_portable_and_finite_differences() {
    // 1x1, stride 1, no padding: the kernels skip im2col/col2im. Nine images
    // (more than one backward-filter chunk), an odd x even plane; a 1x1 conv
    // with stride 2 or padding takes the general path and must agree too.
    let x = rand_tensor(&[9, 5, 3, 4], 41);
    let w = rand_tensor(&[2, 5, 1, 1], 42);
    for (pad, stride) in [((0, 0), 1), ((1, 1), 1), ((0, 0), 2)] {
        let ours = ops::conv2d(&x, &w, pad, pad, stride, 1, 1).unwrap();
        let portable = ops::conv2d_portable(&x, &w, pad, pad, stride, 1, 1).unwrap();
        assert_eq!(ours.dims(), portable.dims());
        assert!(
            max_rel(&ours, &portable) < 1e-12,
            "pad {pad:?} stride {stride}"
        );
        let r = rand_tensor(ours.dims(), 43);
        let fx = |t: &Tensor| weighted_sum(&ops::conv2d(t, &w, pad, pad, stride, 1, 1)?, &r);
        assert!(
            gradient_ok(&fx, &x, 1e-6),
            "input gradient pad {pad:?} stride {stride}"
        );
        let fw = |t: &Tensor| weighted_sum(&ops::conv2d(&x, t, pad, pad, stride, 1, 1)?, &r);
        assert!(
            gradient_ok(&fw, &w, 1e-6),
            "weight gradient pad {pad:?} stride {stride}"
        );
    }
}

#[test]
fn channel_bias_matches_broadcast_add_and_finite_differences() {
    let x = rand_tensor(&[3, 4, 3, 5], 61);
    let b = rand_tensor(&[4], 62);
    let ours = ops::add_channel_bias(&x, &b).unwrap();
    let plain = x.broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap();
    assert!(max_rel(&ours, &plain) < 1e-15);
    let r = rand_tensor(&[3, 4, 3, 5], 63);
    let fx = |t: &Tensor| weighted_sum(&ops::add_channel_bias(t, &b)?, &r);
    assert!(gradient_ok(&fx, &x, 1e-6), "input gradient");
    let fb = |t: &Tensor| weighted_sum(&ops::add_channel_bias(&x, t)?, &r);
    assert!(gradient_ok(&fb, &b, 1e-6), "bias gradient");
    // A bias of the wrong length is an error naming both shapes.
    let err = ops::add_channel_bias(&x, &rand_tensor(&[3], 64)).unwrap_err();
    assert!(err.to_string().contains("[3]"), "{err}");
}

#[test]
fn channel_bias_clamp_matches_broadcast_add_clamp_and_finite_differences() {
    // ReLU (0, inf) and ReLU6 (0, 6) on values that cross both bounds.
    let x = rand_tensor(&[3, 4, 3, 5], 65).affine(8.0, 1.0).unwrap();
    let b = rand_tensor(&[4], 66);
    let r = rand_tensor(&[3, 4, 3, 5], 67);
    for (lo, hi) in [(0.0, f64::INFINITY), (0.0, 6.0)] {
        let ours = ops::add_channel_bias_clamp(&x, &b, lo, hi).unwrap();
        let plain = x
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .clamp(lo, hi)
            .unwrap();
        assert!(max_rel(&ours, &plain) < 1e-15, "({lo}, {hi})");
        let fx = |t: &Tensor| weighted_sum(&ops::add_channel_bias_clamp(t, &b, lo, hi)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-6), "({lo}, {hi}): input gradient");
        let fb = |t: &Tensor| weighted_sum(&ops::add_channel_bias_clamp(&x, t, lo, hi)?, &r);
        assert!(gradient_ok(&fb, &b, 1e-6), "({lo}, {hi}): bias gradient");
        // The clamped values get no gradient (PyTorch's hardtanh rule).
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let y = ops::add_channel_bias_clamp(v.as_tensor(), &b, lo, hi).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        let (g, y) = (
            g.to_vec1::<f64>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        for (gv, yv) in g.iter().zip(&y) {
            assert_eq!(*gv, if *yv > lo && *yv < hi { 1.0 } else { 0.0 }, "y {yv}");
        }
    }
    // Bounds that are not an interval are an error.
    assert!(ops::add_channel_bias_clamp(&x, &b, 1.0, 0.0).is_err());
}

#[test]
fn fused_conv_bias_matches_separate_bias_and_finite_differences() {
    // Convolution (3x3 stride 2 on a mixed-parity input; 1x1 fast path) and
    // transposed convolution with the bias fused into the kernel: the same
    // values as conv + broadcast add, and every gradient (input, weight,
    // bias) checked by finite differences.
    let x = rand_tensor(&[9, 3, 7, 6], 71);
    for (w_shape, pad, stride) in [([4, 3, 3, 3], (1, 1), 2), ([4, 3, 1, 1], (0, 0), 1)] {
        let w = rand_tensor(&w_shape, 72);
        let b = rand_tensor(&[4], 73);
        let conv = |x: &Tensor, w: &Tensor, b: &Tensor| {
            ops::conv2d_bias(x, w, Some(b), pad, pad, stride, 1, 1)
        };
        let fused = conv(&x, &w, &b).unwrap();
        let separate = ops::conv2d_portable(&x, &w, pad, pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_rel(&fused, &separate) < 1e-12, "{w_shape:?}");
        let r = rand_tensor(fused.dims(), 74);
        assert!(gradient_ok(
            &|t| weighted_sum(&conv(t, &w, &b)?, &r),
            &x,
            1e-6
        ));
        assert!(gradient_ok(
            &|t| weighted_sum(&conv(&x, t, &b)?, &r),
            &w,
            1e-6
        ));
        assert!(gradient_ok(
            &|t| weighted_sum(&conv(&x, &w, t)?, &r),
            &b,
            1e-6
        ));
    }
    let x = rand_tensor(&[2, 4, 3, 5], 75);
    let w = rand_tensor(&[4, 3, 3, 3], 76);
    let b = rand_tensor(&[3], 77);
    let convt =
        |x: &Tensor, w: &Tensor, b: &Tensor| ops::conv_transpose2d_bias(x, w, Some(b), 1, 1, 2, 1);
    let fused = convt(&x, &w, &b).unwrap();
    let separate = x
        .conv_transpose2d(&w, 1, 1, 2, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap())
        .unwrap();
    assert!(max_rel(&fused, &separate) < 1e-12);
    let r = rand_tensor(fused.dims(), 78);
    assert!(gradient_ok(
        &|t| weighted_sum(&convt(t, &w, &b)?, &r),
        &x,
        1e-6
    ));
    assert!(gradient_ok(
        &|t| weighted_sum(&convt(&x, t, &b)?, &r),
        &w,
        1e-6
    ));
    assert!(gradient_ok(
        &|t| weighted_sum(&convt(&x, &w, t)?, &r),
        &b,
        1e-6
    ));
    // A bias of the wrong length is an error.
    let err = ops::conv2d_bias(
        &x,
        &rand_tensor(&[2, 4, 1, 1], 79),
        Some(&b),
        (0, 0),
        (0, 0),
        1,
        1,
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
}

#[test]
fn fused_add_relu_matches_add_then_relu_and_finite_differences() {
    let a = rand_tensor(&[2, 3, 5, 4], 81);
    let b = rand_tensor(&[2, 3, 5, 4], 82).affine(1.0, -0.5).unwrap();
    let ours = ops::add_relu(&a, &b).unwrap();
    let plain = (&a + &b).unwrap().relu().unwrap();
    assert_eq!(f64s(&ours), f64s(&plain));
    let r = rand_tensor(&[2, 3, 5, 4], 83);
    assert!(gradient_ok(
        &|t| weighted_sum(&ops::add_relu(t, &b)?, &r),
        &a,
        1e-6
    ));
    assert!(gradient_ok(
        &|t| weighted_sum(&ops::add_relu(&a, t)?, &r),
        &b,
        1e-6
    ));
    assert!(ops::add_relu(&a, &r.narrow(0, 0, 1).unwrap()).is_err());
}

#[test]
fn winograd_3x3_path_matches_portable_and_finite_differences() {
    // 3x3, stride 1, padding 1, >= 8 channels each side, a batch of several
    // images: the Winograd kernels (forward, backward-data and the weight
    // gradient). Odd x even planes; one 32x32 plane (a
    // block of one image) and small ones (several images per block).
    for (dims, o) in [
        ([6usize, 8usize, 5usize, 6usize], 9usize),
        ([3, 9, 32, 32], 8),
    ] {
        let x = rand_tensor(&dims, 90);
        let w = rand_tensor(&[o, dims[1], 3, 3], 91);
        let ours = ops::conv2d(&x, &w, (1, 1), (1, 1), 1, 1, 1).unwrap();
        let portable = ops::conv2d_portable(&x, &w, (1, 1), (1, 1), 1, 1, 1).unwrap();
        assert!(max_rel(&ours, &portable) < 1e-12, "forward {dims:?}");
        let r = rand_tensor(ours.dims(), 92);
        let fx = |t: &Tensor| weighted_sum(&ops::conv2d(t, &w, (1, 1), (1, 1), 1, 1, 1)?, &r);
        assert!(gradient_ok(&fx, &x, 1e-6), "input gradient {dims:?}");
        let fw = |t: &Tensor| weighted_sum(&ops::conv2d(&x, t, (1, 1), (1, 1), 1, 1, 1)?, &r);
        assert!(gradient_ok(&fw, &w, 1e-6), "weight gradient {dims:?}");
    }
    // A stride-1 transposed convolution (its forward is backward-data).
    let x = rand_tensor(&[4, 8, 6, 5], 93);
    let w = rand_tensor(&[8, 10, 3, 3], 94);
    let ours = ops::conv_transpose2d(&x, &w, 1, 0, 1, 1).unwrap();
    let candle = x.conv_transpose2d(&w, 1, 0, 1, 1).unwrap();
    assert!(max_rel(&ours, &candle) < 1e-12, "transposed forward");
    let r = rand_tensor(ours.dims(), 95);
    let fx = |t: &Tensor| weighted_sum(&ops::conv_transpose2d(t, &w, 1, 0, 1, 1)?, &r);
    assert!(gradient_ok(&fx, &x, 1e-6), "transposed input gradient");
    let fw = |t: &Tensor| weighted_sum(&ops::conv_transpose2d(&x, t, 1, 0, 1, 1)?, &r);
    assert!(gradient_ok(&fw, &w, 1e-6), "transposed weight gradient");
}

#[test]
fn convolutions_with_fused_bias_and_clamp_match_the_separate_ops_and_finite_differences() {
    // Dense (3x3 stride 2 on a mixed-parity input, the 1x1 fast path) and
    // depthwise (3x3, strides 1 and 2) convolutions with the bias and clamp
    // fused into the kernel: bit for bit the convolution followed by
    // `add_channel_bias_clamp`, and every gradient (input, weight, bias)
    // checked by finite differences, for a ReLU, a two-sided clamp that
    // cuts many values, and no clamp.
    let x = rand_tensor(&[3, 4, 7, 6], 81);
    let b = rand_tensor(&[4], 82);
    let layers = [
        (false, [4, 4, 3, 3], 2),
        (false, [4, 4, 1, 1], 1),
        (true, [4, 1, 3, 3], 1),
        (true, [4, 1, 3, 3], 2),
    ];
    for bounds in [
        (0.0, f64::INFINITY),
        (-0.3, 0.4),
        (f64::NEG_INFINITY, f64::INFINITY),
    ] {
        for (depthwise, w_shape, stride) in layers {
            let what = format!("depthwise {depthwise}, {w_shape:?}, stride {stride}, {bounds:?}");
            let w = rand_tensor(&w_shape, 83);
            let pad = if w_shape[2] == 3 { (1, 1) } else { (0, 0) };
            let fused = |x: &Tensor, w: &Tensor, b: &Tensor| {
                if depthwise {
                    ops::depthwise_conv2d_bias_clamp(x, w, b, pad, pad, stride, 1, bounds)
                } else {
                    ops::conv2d_bias_clamp(x, w, b, pad, pad, stride, 1, 1, bounds)
                }
            };
            let y = fused(&x, &w, &b).unwrap();
            let conv = if depthwise {
                ops::depthwise_conv2d(&x, &w, pad, pad, stride, 1)
            } else {
                ops::conv2d(&x, &w, pad, pad, stride, 1, 1)
            };
            let separate =
                ops::add_channel_bias_clamp(&conv.unwrap(), &b, bounds.0, bounds.1).unwrap();
            assert_eq!(max_rel(&y, &separate), 0.0, "{what}");
            let r = rand_tensor(y.dims(), 84);
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(t, &w, &b)?, &r), &x, 1e-6),
                "{what}: input"
            );
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(&x, t, &b)?, &r), &w, 1e-6),
                "{what}: weight"
            );
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(&x, &w, t)?, &r), &b, 1e-6),
                "{what}: bias"
            );
        }
    }
    // Bounds that are not an interval are an error.
    let w = rand_tensor(&[4, 1, 3, 3], 85);
    let bad = (1.0, 0.0);
    assert!(ops::depthwise_conv2d_bias_clamp(&x, &w, &b, (1, 1), (1, 1), 1, 1, bad).is_err());
    let w = rand_tensor(&[4, 4, 1, 1], 86);
    assert!(ops::conv2d_bias_clamp(&x, &w, &b, (0, 0), (0, 0), 1, 1, 1, (f64::NAN, 1.0)).is_err());
}

#[test]
fn conv_with_a_constant_tail_matches_the_concatenation_and_finite_differences() {
    // `conv2d_bias_clamp_const_tail(x, tail)` against the same convolution
    // of `cat([x, tail], 1)`: a "same" 3x3 (the UNet's last layer: features
    // plus a 1-channel image), a strided one with a 2-channel tail, and a
    // 1x1; with a ReLU, a two-sided clamp and none. The tail is a plain
    // tensor (no gradient); x, the weight and the bias get theirs, checked
    // by finite differences.
    // (x channels, tail channels, kernel, stride, padding, dilation).
    let layers = [
        (5, 1, 3, 1, (1, 1), 1),
        (3, 2, 3, 2, (1, 1), 1),
        (4, 3, 1, 1, (0, 0), 1),
        (2, 1, 3, 1, (2, 2), 2),
        (3, 4, 3, 1, (1, 1), 1),
    ];
    for bounds in [
        (0.0, f64::INFINITY),
        (-0.3, 0.4),
        (f64::NEG_INFINITY, f64::INFINITY),
    ] {
        for (cx, ct, k, stride, pad, d) in layers {
            let what = format!(
                "x {cx} + tail {ct} channels, {k}x{k} stride {stride} dilation {d}, {bounds:?}"
            );
            let x = rand_tensor(&[3, cx, 7, 6], 91);
            let tail = rand_tensor(&[3, ct, 7, 6], 92);
            let w = rand_tensor(&[4, cx + ct, k, k], 93);
            let b = rand_tensor(&[4], 94);
            let fused = |x: &Tensor, w: &Tensor, b: &Tensor| {
                ops::conv2d_bias_clamp_const_tail(x, &tail, w, b, pad, pad, stride, d, bounds)
            };
            let y = fused(&x, &w, &b).unwrap();
            let cat = Tensor::cat(&[&x, &tail], 1).unwrap();
            let whole = ops::conv2d_bias_clamp(&cat, &w, &b, pad, pad, stride, d, 1, bounds);
            assert!(max_rel(&y, &whole.unwrap()) < 1e-14, "{what}: values");
            let r = rand_tensor(y.dims(), 95);
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(t, &w, &b)?, &r), &x, 1e-6),
                "{what}: input"
            );
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(&x, t, &b)?, &r), &w, 1e-6),
                "{what}: weight"
            );
            assert!(
                gradient_ok(&|t| weighted_sum(&fused(&x, &w, t)?, &r), &b, 1e-6),
                "{what}: bias"
            );
        }
    }
    // A tail that needs a gradient, one of another size, and channels that
    // do not make the weight's are errors, not panics.
    let x = rand_tensor(&[2, 3, 5, 5], 96);
    let w = rand_tensor(&[4, 4, 3, 3], 97);
    let b = rand_tensor(&[4], 98);
    let p = (1, 1);
    let tracked = candle_core::Var::from_tensor(&rand_tensor(&[2, 1, 5, 5], 99)).unwrap();
    let call = |tail: &Tensor| {
        ops::conv2d_bias_clamp_const_tail(&x, tail, &w, &b, p, p, 1, 1, ops::NO_CLAMP)
    };
    let err = call(tracked.as_tensor()).unwrap_err().to_string();
    assert!(err.contains("needs a gradient"), "{err}");
    for shape in [[2, 1, 5, 4], [2, 2, 5, 5]] {
        let err = call(&rand_tensor(&shape, 100)).unwrap_err().to_string();
        assert!(err.contains("do not make"), "{shape:?}: {err}");
    }
    // So is a kernel larger than the padded input.
    let (x, tail) = (
        rand_tensor(&[2, 3, 2, 2], 101),
        rand_tensor(&[2, 1, 2, 2], 102),
    );
    let w = rand_tensor(&[4, 4, 5, 5], 103);
    let z = (0, 0);
    let err = ops::conv2d_bias_clamp_const_tail(&x, &tail, &w, &b, z, z, 1, 1, ops::NO_CLAMP)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
}

#[test]
fn batch_norm_after_a_convolution_matches_the_two_ops() {
    // `batch_norm_train_after_conv` against `batch_norm_train` of the
    // convolution's output: bit-identical outputs, statistics and gradients
    // (input, weight, conv bias, γ, β), for a strided convolution on a
    // mixed-parity input, a "same" 3x3 (the Winograd kernels, also followed
    // by a 2x2 max-pooling), a 1x1 followed by an upsampling, and the
    // colourization nets' transposed convolution; with and without ReLU.
    let gamma = rand_tensor(&[4], 121);
    let beta = rand_tensor(&[4], 122);
    let bias = rand_tensor(&[4], 123);
    let conv2d = |pad, stride| ops::ConvSpec::Conv2d {
        pad_h: pad,
        pad_w: pad,
        stride,
        dilation: 1,
    };
    let (pool, up) = (
        Some(ops::Resample::MaxPool(2)),
        Some(ops::Resample::Upsample(2)),
    );
    let cases = [
        ([2, 3, 7, 6], [4, 3, 3, 3], conv2d((1, 1), 2), None),
        ([2, 5, 6, 6], [4, 5, 3, 3], conv2d((1, 1), 1), None),
        ([2, 5, 6, 6], [4, 5, 3, 3], conv2d((1, 1), 1), pool),
        ([2, 3, 5, 4], [4, 3, 1, 1], conv2d((0, 0), 1), up),
        // A pooling window that does not tile the output: the ops apart.
        ([2, 3, 5, 4], [4, 3, 1, 1], conv2d((0, 0), 1), pool),
        (
            [2, 3, 4, 5],
            [3, 4, 3, 3],
            ops::ConvSpec::ConvTranspose2d {
                padding: 1,
                output_padding: 1,
                stride: 2,
                dilation: 1,
            },
            None,
        ),
    ];
    for (x_shape, w_shape, spec, resample) in cases {
        for relu in [true, false] {
            let what = format!("{x_shape:?} {w_shape:?} {spec:?} {resample:?} relu {relu}");
            let var = |t: &Tensor| candle_core::Var::from_tensor(t).unwrap();
            let (x, w, b) = (
                var(&rand_tensor(&x_shape, 124)),
                var(&rand_tensor(&w_shape, 125)),
                var(&bias),
            );
            let (g, be) = (var(&gamma), var(&beta));
            let affine = Some((g.as_tensor(), be.as_tensor()));
            let fused = ops::batch_norm_train_after_conv(
                x.as_tensor(),
                (w.as_tensor(), b.as_tensor()),
                spec,
                resample,
                affine,
                1e-5,
                relu,
            )
            .unwrap();
            let conv = spec
                .apply(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))
                .unwrap();
            let conv = match resample {
                Some(how) => how.apply(&conv).unwrap(),
                None => conv,
            };
            let apart = ops::batch_norm_train(&conv, affine, 1e-5, relu).unwrap();
            assert_eq!(max_rel_strict(&fused.y, &apart.y), 0.0, "{what}: values");
            assert_eq!(
                max_rel_strict(&fused.mean, &apart.mean),
                0.0,
                "{what}: mean"
            );
            assert_eq!(
                max_rel_strict(&fused.var, &apart.var),
                0.0,
                "{what}: variance"
            );
            let r = rand_tensor(fused.y.dims(), 126);
            let g_fused = weighted_sum(&fused.y, &r).unwrap().backward().unwrap();
            let g_apart = weighted_sum(&apart.y, &r).unwrap().backward().unwrap();
            let watched = [
                ("x", &x),
                ("weight", &w),
                ("bias", &b),
                ("gamma", &g),
                ("beta", &be),
            ];
            for (name, v) in watched {
                let (a, e) = (
                    g_fused.get(v.as_tensor()).unwrap(),
                    g_apart.get(v.as_tensor()).unwrap(),
                );
                assert_eq!(max_rel_strict(a, e), 0.0, "{what}: gradient of {name}");
            }
        }
    }
    // A kernel larger than the padded input is an error, not a panic.
    let x = rand_tensor(&[2, 3, 2, 2], 127);
    let w = rand_tensor(&[4, 3, 5, 5], 128);
    let err = ops::batch_norm_train_after_conv(
        &x,
        (&w, &bias),
        conv2d((0, 0), 1),
        None,
        Some((&gamma, &beta)),
        1e-5,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not fit"), "{err}");
}

#[test]
fn bilinear_resize_kernel_matches_the_interpolation_matrices() {
    // The CPU kernel (two taps per side) against the portable matrix
    // products: values and gradients, up and down, both corner conventions,
    // a 1-pixel side, f64 and f32; and finite differences.
    for (h, w, oh, ow) in [
        (4, 5, 7, 9),
        (28, 28, 224, 224),
        (9, 8, 3, 2),
        (1, 6, 4, 1),
        (5, 5, 5, 7),
    ] {
        for ac in [false, true] {
            let what = format!("{h}x{w} -> {oh}x{ow}, align_corners {ac}");
            let x = rand_tensor(&[2, 3, h, w], 110);
            let r = rand_tensor(&[2, 3, oh, ow], 111);
            let fast = ops::resize_bilinear(&x, oh, ow, ac).unwrap();
            let slow = ops::resize_bilinear_portable(&x, oh, ow, ac).unwrap();
            assert!(max_rel(&fast, &slow) < 1e-14, "{what}: values");
            let grad = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
                let v = candle_core::Var::from_tensor(&x).unwrap();
                let g = weighted_sum(&f(v.as_tensor()).unwrap(), &r)
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(v.as_tensor()).unwrap().clone()
            };
            let g_fast = grad(&|t| ops::resize_bilinear(t, oh, ow, ac));
            let g_slow = grad(&|t| ops::resize_bilinear_portable(t, oh, ow, ac));
            assert!(max_rel(&g_fast, &g_slow) < 1e-13, "{what}: gradient");
            if h * w <= 100 {
                let f = |t: &Tensor| weighted_sum(&ops::resize_bilinear(t, oh, ow, ac)?, &r);
                assert!(gradient_ok(&f, &x, 1e-6), "{what}: finite differences");
            }
            let x32 = x.to_dtype(candle_core::DType::F32).unwrap();
            let fast = ops::resize_bilinear(&x32, oh, ow, ac).unwrap();
            let slow = ops::resize_bilinear_portable(&x32, oh, ow, ac).unwrap();
            assert!(max_rel(&fast, &slow) < 1e-6, "{what}: f32 values");
        }
    }
    // A transposed (non-contiguous) input, and an empty one is an error.
    let x = rand_tensor(&[1, 2, 5, 4], 112);
    let t = x.transpose(2, 3).unwrap();
    let fast = ops::resize_bilinear(&t, 6, 8, false).unwrap();
    let slow = ops::resize_bilinear_portable(&t.contiguous().unwrap(), 6, 8, false).unwrap();
    assert!(max_rel(&fast, &slow) < 1e-14, "transposed input");
    let empty = Tensor::zeros(
        (1, 1, 0, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = ops::resize_bilinear(&empty, 2, 2, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to interpolate"), "{err}");
    // An empty output is an empty tensor.
    let y = ops::resize_bilinear(&x, 0, 3, false).unwrap();
    assert_eq!(y.dims(), &[1, 2, 0, 3]);
}
