//! Colourization beyond the study (issue 22) on the embedded CIFAR-10
//! sample: rebalancing weights, annealed-mean decoding, flips, and a short
//! run of the improved recipe's options end to end.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use pixclass_data::cifar::CifarSource;
use pixclass_data::Palette;
use pixclass_runs::{RunRecord, Start};
use pixclass_train::colourize::task::rebalance_weights;
use pixclass_train::colourize::{
    load_colouriser, prepare_data, train_colouriser, training_prior, ClassPrior, ColourRecipe,
    ColourTrainConfig, Decoding, CLASS_PRIOR_JSON, VAL_ACC, VAL_BALANCED_ACC, VAL_COLOURFULNESS,
    VAL_COLOURFULNESS_TRUTH, VAL_PSNR, VAL_RGB_ERROR,
};
use pixclass_train::DeviceKind;

#[test]
fn rebalancing_weights_have_mean_one_and_favour_rare_colours() {
    let hist = [900usize, 90, 10, 0];
    let w = rebalance_weights(&hist, 0.5);
    let total: usize = hist.iter().sum();
    let mean: f64 = hist
        .iter()
        .zip(&w)
        .map(|(&c, w)| c as f64 / total as f64 * w)
        .sum();
    assert!((mean - 1.0).abs() < 1e-12, "{mean}");
    assert!(w[0] < w[1] && w[1] < w[2] && w[2] < w[3], "{w:?}");
    // By hand: p = (0.9, 0.09, 0.01, 0); raw 1 / (0.5 p + 0.5 / 4).
    let raw: Vec<f64> = [0.9, 0.09, 0.01, 0.0]
        .iter()
        .map(|p| 1.0 / (0.5 * p + 0.125))
        .collect();
    let scale = 0.9 * raw[0] + 0.09 * raw[1] + 0.01 * raw[2];
    for (a, b) in w.iter().zip(&raw) {
        assert!((a - b / scale).abs() < 1e-12);
    }
    // lambda 1: the uniform prior, every colour weighs 1.
    assert!(rebalance_weights(&hist, 1.0)
        .iter()
        .all(|&v| (v - 1.0).abs() < 1e-12));
}

#[test]
fn annealed_mean_is_the_expected_colour_and_tends_to_argmax() {
    let palette = Palette::new(
        vec![[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25]],
        None,
    )
    .unwrap();
    let dev = Device::Cpu;
    let logits = Tensor::new(&[1.0f32, 0.0, -1.0], &dev)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let rgb = |d: Decoding| -> Vec<f32> {
        d.decode(&logits, &palette, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    // T = 1: softmax(1, 0, -1) times the centres.
    let e: Vec<f64> = [1.0f64, 0.0, -1.0].iter().map(|v| v.exp()).collect();
    let z: f64 = e.iter().sum();
    let want = [e[0] / z, 0.5 * e[1] / z, 0.25 * e[2] / z];
    let got = rgb(Decoding {
        temperature: 1.0,
        ..Decoding::annealed()
    });
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // A low temperature approaches the argmax colour; argmax is it exactly.
    let cold = rgb(Decoding {
        temperature: 0.01,
        ..Decoding::annealed()
    });
    assert!((cold[0] - 1.0).abs() < 1e-6 && cold[1].abs() < 1e-6);
    assert_eq!(rgb(Decoding::default()), vec![1.0, 0.0, 0.0]);
    assert!(Decoding {
        temperature: 0.0,
        ..Decoding::annealed()
    }
    .validate()
    .is_err());
}

#[test]
fn balanced_decoding_divides_out_the_training_prior() {
    // Histogram 899 / 99 / 0 with a pseudo-count each: prior 900 / 100 / 1.
    let prior = ClassPrior::new(&[899, 99, 0], None).unwrap();
    let want = [900.0 / 1001.0, 100.0 / 1001.0, 1.0 / 1001.0];
    for (p, w) in prior.probabilities.iter().zip(want) {
        assert!((p - w).abs() < 1e-15, "{:?}", prior.probabilities);
    }
    // Loss weights multiply in: w = (1, 9, 2) gives 900 / 900 / 2.
    let weighted = ClassPrior::new(&[899, 99, 0], Some(&[1.0, 9.0, 2.0])).unwrap();
    let want = [900.0 / 1802.0, 900.0 / 1802.0, 2.0 / 1802.0];
    for (p, w) in weighted.probabilities.iter().zip(want) {
        assert!((p - w).abs() < 1e-15, "{:?}", weighted.probabilities);
    }
    // Weights must be positive and one per colour.
    assert!(ClassPrior::new(&[1, 2], Some(&[1.0])).is_err());
    assert!(ClassPrior::new(&[1, 2], Some(&[1.0, 0.0])).is_err());
    assert!(ClassPrior::new(&[1, 2], Some(&[1.0, f64::NAN])).is_err());
    assert!(ClassPrior::new(&[], None).is_err());
    let dev = Device::Cpu;
    // Two pixels: class 0 leads by 1 (its prior is 9x class 1's, log 9 =
    // 2.2) and class 0 leads by 3 (more than log 9).
    let logits = Tensor::new(&[1.0f32, 3.0, 0.0, 0.0, -5.0, -5.0], &dev)
        .unwrap()
        .reshape((1, 3, 1, 2))
        .unwrap();
    let classes = |d: Decoding, p: Option<&ClassPrior>| -> Vec<u32> {
        d.classes(&logits, p)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(classes(Decoding::default(), None), vec![0, 0]);
    assert_eq!(classes(Decoding::balanced(), Some(&prior)), vec![1, 0]);
    // The uniform prior changes nothing.
    let uniform = ClassPrior::new(&[5, 5, 5], None).unwrap();
    assert_eq!(classes(Decoding::balanced(), Some(&uniform)), vec![0, 0]);
    // Without a prior, or with one of another length, an error, not a guess.
    let err = Decoding::balanced().classes(&logits, None).unwrap_err();
    assert!(err.to_string().contains("class prior"), "{err}");
    let two = ClassPrior::new(&[1, 1], None).unwrap();
    assert!(Decoding::balanced().classes(&logits, Some(&two)).is_err());
    // Its colours are the palette colours of its classes.
    let palette = Palette::new(
        vec![[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25]],
        None,
    )
    .unwrap();
    let rgb: Vec<f32> = Decoding::balanced()
        .decode(&logits, &palette, Some(&prior))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(rgb, vec![0.0, 1.0, 0.5, 0.0, 0.0, 0.0]);
}

#[test]
fn flipped_batches_mirror_grey_and_colours() {
    let palette = Palette::reference(24).unwrap();
    let (train, _) = prepare_data(
        &CifarSource::Embedded,
        7,
        Some(8),
        &palette,
        0,
        pixclass_data::RngScheme::Torch,
    )
    .unwrap();
    let dev = Device::Cpu;
    let (g, c) = train.gather(&[3, 1], &[true, false], &dev).unwrap();
    let g: Vec<Vec<Vec<f32>>> = g.squeeze(1).unwrap().to_vec3().unwrap();
    let c: Vec<Vec<Vec<u32>>> = c.to_vec3().unwrap();
    let one = |i: usize| -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
        let (g, c) = train.batch(i, 1, &dev).unwrap();
        (
            g.squeeze(1).unwrap().squeeze(0).unwrap().to_vec2().unwrap(),
            c.squeeze(0).unwrap().to_vec2().unwrap(),
        )
    };
    let (g3, c3) = one(3);
    for y in 0..32 {
        for x in 0..32 {
            assert_eq!(g[0][y][x], g3[y][31 - x]);
            assert_eq!(c[0][y][x], c3[y][31 - x]);
        }
    }
    let (g1, c1) = one(1);
    assert_eq!((&g[1], &c[1]), (&g1, &c1));
    assert!(train.gather(&[8], &[], &dev).is_err());
}

#[test]
fn the_recipe_options_run_end_to_end_and_keep_the_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ColourTrainConfig {
        epochs: 3,
        batch_size: 50,
        limit: Some(100),
        ..ColourTrainConfig::for_recipe(ColourRecipe::Pixclass)
    };
    assert!(cfg.extras.hflip && cfg.extras.reshuffle && cfg.extras.keep_best);
    cfg.model.num_filters = 8;
    cfg.extras.rebalance = Some(0.5);
    cfg.extras.decode = Decoding::annealed();
    let run = train_colouriser(
        &cfg,
        &CifarSource::Embedded,
        dir.path(),
        Start::Fresh,
        false,
    )
    .unwrap();
    let rec = RunRecord::read(dir.path()).unwrap();
    assert_eq!(rec.epochs.len(), 3);
    let best = rec.best.as_ref().unwrap();
    assert_eq!(best.metric, VAL_ACC);
    assert!(dir.path().join("best.safetensors").is_file());
    for e in &run.record.epochs {
        for m in [VAL_BALANCED_ACC, VAL_RGB_ERROR, VAL_PSNR, VAL_COLOURFULNESS] {
            let v = e.get(m).unwrap();
            assert!(v.is_finite() && v >= 0.0, "{m} {v}");
        }
        // Balanced accuracy is a mean of recalls in %, PSNR of an error < 1.
        assert!(e.get(VAL_BALANCED_ACC).unwrap() <= 100.0);
        assert!(e.get(VAL_PSNR).unwrap() > 0.0);
        assert!(e.get(VAL_COLOURFULNESS_TRUTH).unwrap() > 0.0);
    }
    // The loaded run is the best epoch's: its accuracy is the best's.
    let loaded = load_colouriser(dir.path(), DeviceKind::Cpu).unwrap();
    let palette = Palette::reference(24).unwrap();
    let (train, val) = prepare_data(
        &CifarSource::Embedded,
        cfg.class,
        cfg.limit,
        &palette,
        cfg.seed,
        cfg.rng,
    )
    .unwrap();
    let m = pixclass_train::colourize::evaluate_split(
        &loaded.net,
        &val,
        &palette,
        cfg.batch_size,
        &cfg.extras.decode,
        loaded.prior.as_ref(),
        &Device::Cpu,
    )
    .unwrap();
    assert!((m.get(VAL_ACC).unwrap() - best.value).abs() < 1e-9);
    // The run saved the prior its rebalanced loss fitted, and loading
    // brings it back.
    let want = training_prior(&train, 24, Some(0.5)).unwrap();
    assert!(dir.path().join(CLASS_PRIOR_JSON).is_file());
    assert_eq!(loaded.prior.as_ref(), Some(&want));
    // The balanced decoding scores its own classes: its pixel accuracy is
    // that of argmax(logits - log prior), not the argmax's.
    let bal = pixclass_train::colourize::evaluate_split(
        &loaded.net,
        &val,
        &palette,
        cfg.batch_size,
        &Decoding::balanced(),
        loaded.prior.as_ref(),
        &Device::Cpu,
    )
    .unwrap();
    let (x, y) = val.batch(0, val.len(), &Device::Cpu).unwrap();
    let logits = candle_nn::ModuleT::forward_t(&loaded.net, &x, false).unwrap();
    let classes: Vec<u32> = Decoding::balanced()
        .classes(&logits, Some(&want))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let truth: Vec<u32> = y.flatten_all().unwrap().to_vec1().unwrap();
    let right = classes.iter().zip(&truth).filter(|(a, b)| a == b).count();
    let acc = 100.0 * right as f64 / truth.len() as f64;
    assert!((bal.get(VAL_ACC).unwrap() - acc).abs() < 1e-9);
    // The strip: 6 rows (grey, truth, palette truth, argmax, annealed mean,
    // balanced) of 10 tiles of 32 px at scale 3 with 2-px gaps.
    let img = image::open(dir.path().join("samples_epoch_03.png")).unwrap();
    assert_eq!(img.height(), 6 * (96 + 2) + 2);
    // An out-of-range rebalancing is refused before any work.
    cfg.extras.rebalance = Some(1.5);
    let err = train_colouriser(
        &cfg,
        &CifarSource::Embedded,
        &dir.path().join("x"),
        Start::Fresh,
        false,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("--rebalance"), "{err}");
}
