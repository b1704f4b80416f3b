//! Part D fine-tuning on the embedded Oxford-17 sample (real photos and
//! trimaps), small enough for CI: the loss falls with both losses, the
//! default soft-IoU recipe does not collapse to a constant mask, the feature
//! cache gives the same numbers as recomputing, and a killed run resumes to
//! the same result.
#![allow(clippy::unwrap_used)]

use pixclass_runs::Start;
use std::path::Path;

use pixclass_data::segment::{Preprocess, SegSet, SegSource, SegSplits};
use pixclass_metrics::Loss;
use pixclass_train::segment::{
    evaluate_masks, finetune, load_segmenter, FeatureCache, HeadInit, SegTrainConfig,
};
use pixclass_train::DeviceKind;

fn splits() -> SegSplits {
    SegSource::Embedded.splits().unwrap()
}

/// 24 train / 8 val images at 64x64, batch 8, lr 0.05.
fn small(loss: Loss, cache_dir: &Path) -> SegTrainConfig {
    SegTrainConfig {
        loss,
        train_batch_size: 8,
        val_batch_size: 8,
        epochs: 2,
        limit: Some(24),
        preprocess: Preprocess {
            size: 64,
            ..Preprocess::default()
        },
        cache: FeatureCache::Disk,
        cache_dir: Some(cache_dir.to_path_buf()),
        // A constant rate, so a 1-epoch run extended to 2 equals a 2-epoch
        // run (a cosine's horizon is the run's epochs).
        lr_schedule: pixclass_train::engine::LrSchedule::Constant,
        ..SegTrainConfig::default()
    }
}

/// Every epoch's train loss and metrics (in column order) from the run's
/// metrics.csv, read by the typed reader; the wall time is left out.
fn metrics(dir: &Path) -> Vec<Vec<f64>> {
    pixclass_runs::csv_file::read(&dir.join("metrics.csv"))
        .unwrap()
        .into_iter()
        .map(|r| {
            // Epoch 0 (validated before training) has no training loss.
            let mut v = vec![r.epoch as f64, r.train_loss.unwrap_or(-1.0)];
            v.extend(r.metrics.iter().map(|(_, x)| x));
            v
        })
        .collect()
}

#[test]
fn both_losses_fall_and_write_their_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    for loss in [Loss::Ce, Loss::Iou] {
        let dir = tmp.path().join(loss.name());
        let cfg = SegTrainConfig {
            epochs: 3,
            ..small(loss, &tmp.path().join("cache"))
        };
        let run = finetune(&cfg, splits(), &dir, Start::Fresh, false).unwrap();
        // Epoch 0 is the validation before the first step.
        let epochs: Vec<usize> = run.record.epochs.iter().map(|e| e.epoch).collect();
        assert_eq!(epochs, [0, 1, 2, 3]);
        assert_eq!(run.record.epochs[0].train_loss, None);
        let first = run.record.epochs[1].train_loss.unwrap();
        let last = run.record.epochs[3].train_loss.unwrap();
        assert!(last < first, "{loss:?}: train loss {first} -> {last}");
        for f in [
            "config.json",
            "metrics.csv",
            "curves.png",
            "predictions_epoch_00.png",
            "predictions_epoch_03.png",
            "checkpoint.safetensors",
            "best.safetensors",
        ] {
            assert!(dir.join(f).is_file(), "{loss:?}: {f} missing");
        }
        let header = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert!(header.starts_with(
            "epoch,train_loss,val_loss,val_miou_thr,val_iou_fg,val_miou,val_pixel_acc,seconds"
        ));
        // The prediction panel: a title band over 6 rows of 4 tiles (image,
        // prediction, truth, overlay) of 64 px with 4 px gaps.
        let img = image::open(dir.join("predictions_epoch_03.png")).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (4 * 68 + 4, 6 * 68 + 4 + pixclass_train::plot::TITLE_BAND)
        );
    }
}

#[test]
fn reference_soft_iou_collapses_and_the_default_recipe_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let splits = splits();
    let pre = Preprocess {
        size: 64,
        ..Preprocess::default()
    };
    let val = SegSet::load(&splits.val, &pre, false).unwrap();
    let frac = |dir: &Path| {
        let m = load_segmenter(dir, DeviceKind::Cpu).unwrap();
        let idx: Vec<usize> = (0..val.len()).collect();
        let pred = m.predict(&val, &idx).unwrap();
        pred.iter().map(|&p| p as f64).sum::<f64>() / pred.len() as f64
    };
    // The reference recipe (PyTorch init, raw features, no CE warm-up).
    let reference = tmp.path().join("reference");
    let cfg = SegTrainConfig {
        epochs: 8,
        limit: None,
        train_batch_size: 12,
        head_init: HeadInit::Torch,
        feature_norm: false,
        ce_warmup_epochs: 0,
        ce_weight: 0.0,
        ..small(Loss::Iou, &cache)
    };
    let reference_run = finetune(&cfg, splits.clone(), &reference, Start::Fresh, false).unwrap();
    // The default recipe of `pixclass segment finetune`.
    let fixed = tmp.path().join("default");
    let cfg = SegTrainConfig {
        epochs: 8,
        limit: None,
        train_batch_size: 12,
        head_init: HeadInit::Prior,
        feature_norm: true,
        ce_warmup_epochs: 0,
        ce_weight: 1.0,
        ..small(Loss::Iou, &cache)
    };
    finetune(&cfg, splits, &fixed, Start::Fresh, false).unwrap();
    let f = frac(&fixed);
    assert!(
        f > 0.02 && f < 0.98,
        "default recipe predicts a constant mask ({f} foreground)"
    );
    // Better than the constant "all flower" mask, whose IoU is the flower fraction.
    let m = load_segmenter(&fixed, DeviceKind::Cpu).unwrap();
    let scores = evaluate_masks(&m, &val).unwrap();
    let flower = val.foreground_fraction();
    assert!(
        scores.iou_fg > flower,
        "{scores:?} vs flower fraction {flower}"
    );
    // The reference recipe ends predicting flower everywhere: its last
    // epoch's pixel accuracy is the flower fraction (its best checkpoint
    // may be the untrained epoch 0).
    let last = reference_run.record.epochs.last().unwrap();
    let acc = last.get("val_pixel_acc").unwrap();
    assert!(
        (acc - flower).abs() < 0.02,
        "reference recipe's last epoch: pixel accuracy {acc} vs flower fraction {flower}"
    );
}

#[test]
fn cache_on_disk_equals_recomputing_and_resume_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // No cache: features recomputed at every step.
    let off = tmp.path().join("off");
    let cfg_off = SegTrainConfig {
        cache: FeatureCache::Off,
        ..small(Loss::Ce, &cache)
    };
    finetune(&cfg_off, splits(), &off, Start::Fresh, false).unwrap();
    // Disk cache, cold then warm.
    let cold = tmp.path().join("cold");
    finetune(
        &small(Loss::Ce, &cache),
        splits(),
        &cold,
        Start::Fresh,
        false,
    )
    .unwrap();
    let files = std::fs::read_dir(cache.join("deeplabv3-mobilenetv2-voc"))
        .unwrap()
        .count();
    assert_eq!(files, 24 + 12, "one cached feature file per image");
    let warm = tmp.path().join("warm");
    finetune(
        &small(Loss::Ce, &cache),
        splits(),
        &warm,
        Start::Fresh,
        false,
    )
    .unwrap();
    let strip = |rows: Vec<Vec<f64>>| rows;
    // The three runs agree to rounding (the mean train loss may differ in
    // its last bits when other tests share the thread pool).
    let close = |a: &Path, b: &Path| {
        let (ra, rb) = (strip(metrics(a)), strip(metrics(b)));
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().flatten().zip(rb.iter().flatten()) {
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                "{}: {x} vs {y}",
                b.display()
            );
        }
    };
    close(&off, &cold);
    close(&cold, &warm);
    // Resume: stop after 1 of 2 epochs, then continue; same metrics.
    let part = tmp.path().join("part");
    let one = SegTrainConfig {
        epochs: 1,
        ..small(Loss::Ce, &cache)
    };
    finetune(&one, splits(), &part, Start::Fresh, false).unwrap();
    finetune(
        &small(Loss::Ce, &cache),
        splits(),
        &part,
        Start::Resume,
        false,
    )
    .unwrap();
    close(&cold, &part);
    // Resuming with other settings is refused.
    let other = SegTrainConfig {
        adam: pixclass_train::adam::AdamConfig {
            lr: 0.02,
            ..Default::default()
        },
        ..small(Loss::Ce, &cache)
    };
    let err = finetune(&other, splits(), &part, Start::Resume, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn too_few_images_for_a_batch_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SegTrainConfig {
        train_batch_size: 128,
        ..small(Loss::Ce, &tmp.path().join("cache"))
    };
    let err = finetune(&cfg, splits(), &tmp.path().join("r"), Start::Fresh, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("24 images") && err.contains("--train-batch-size"),
        "{err}"
    );
}

#[test]
fn zero_shot_scores_equal_a_hand_computed_confusion_matrix() {
    use pixclass_models::segment::{SegBackbone, SegModelKind};
    use pixclass_train::segment::{voc_class, zero_shot, ZeroShotConfig};
    let tmp = tempfile::tempdir().unwrap();
    let pre = Preprocess {
        size: 64,
        ..Preprocess::default()
    };
    let class = voc_class("potted plant").unwrap();
    assert_eq!(class, voc_class("16").unwrap());
    assert!(voc_class("unicorn").is_err() && voc_class("0").is_err());
    let cfg = ZeroShotConfig {
        model: SegModelKind::Deeplabv3Mobilenetv2Voc,
        weights: None,
        class,
        preprocess: pre,
        limit: Some(5),
        skip_bad: false,
        device: DeviceKind::Cpu,
        data: String::new(),
        data_dir: None,
    };
    let run = zero_shot(&cfg, splits(), tmp.path(), Start::Fresh).unwrap();
    // By hand: the pretrained logits, foreground where the class beats
    // background, counted pixel by pixel.
    let sp = splits().limit(Some(5));
    let val = SegSet::load(&sp.val, &pre, false).unwrap();
    let dev = candle_core::Device::Cpu;
    let net = SegBackbone::load(cfg.model, None, &dev).unwrap();
    let (mean, std) = net.normalisation();
    let (mut tp, mut fp, mut fn_, mut tn) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..val.len() {
        let x = val.images_tensor(&[i], mean, std, &dev).unwrap();
        let l: Vec<Vec<Vec<f32>>> = net.forward(&x).unwrap().get(0).unwrap().to_vec3().unwrap();
        for (p, &t) in val.mask_bytes(i).iter().enumerate() {
            let (y, x) = (p / 64, p % 64);
            let fg = l[class][y][x] > l[0][y][x];
            match (fg, t != 0) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                (false, false) => tn += 1.0,
            }
        }
    }
    let m = run.metrics;
    let fg_iou = tp / (tp + fp + fn_);
    let bg_iou = tn / (tn + fp + fn_);
    assert!(
        (m.iou_fg - fg_iou).abs() < 1e-12,
        "{} vs {fg_iou}",
        m.iou_fg
    );
    assert!((m.miou - (fg_iou + bg_iou) / 2.0).abs() < 1e-12);
    assert!((m.pixel_acc - (tp + tn) / (tp + tn + fp + fn_)).abs() < 1e-12);
    // The same run record and pictures as fine-tuning, at epoch 0.
    let rec = pixclass_runs::RunRecord::read(tmp.path()).unwrap();
    assert_eq!(rec.epochs.len(), 1);
    assert_eq!(rec.epochs[0].epoch, 0);
    assert_eq!(rec.epochs[0].get("val_iou_fg"), Some(m.iou_fg));
    assert!(tmp.path().join("predictions_epoch_00.png").is_file());
}

#[test]
fn class_init_starts_at_the_zero_shot_score() {
    use pixclass_models::segment::SegModelKind;
    use pixclass_train::segment::{voc_class, zero_shot, ZeroShotConfig};
    let tmp = tempfile::tempdir().unwrap();
    let class = voc_class("pottedplant").unwrap();
    // The native 257: at 64 px the pretrained model finds no plant.
    let base = SegTrainConfig {
        limit: Some(8),
        preprocess: Preprocess {
            size: 257,
            ..Preprocess::default()
        },
        ..small(Loss::Ce, &tmp.path().join("cache"))
    };
    let zs = ZeroShotConfig {
        model: SegModelKind::Deeplabv3Mobilenetv2Voc,
        weights: None,
        class,
        preprocess: base.preprocess,
        limit: base.limit,
        skip_bad: false,
        device: DeviceKind::Cpu,
        data: String::new(),
        data_dir: None,
    };
    let reference = zero_shot(&zs, splits(), &tmp.path().join("zs"), Start::Fresh).unwrap();
    let want = &reference.record.epochs[0];
    assert!(want.get("val_iou_fg").unwrap() > 0.0);
    // Raw and standardised features: the head is the pretrained rows'
    // function either way (standardisation folded into its start).
    for feature_norm in [false, true] {
        let cfg = SegTrainConfig {
            head_init: "class:potted plant".parse().unwrap(),
            feature_norm,
            epochs: 1,
            ..base.clone()
        };
        assert_eq!(
            cfg.head_init,
            pixclass_train::segment::HeadInit::Class(class)
        );
        let dir = tmp.path().join(format!("class-{feature_norm}"));
        let run = finetune(&cfg, splits(), &dir, Start::Fresh, false).unwrap();
        let got = &run.record.epochs[0];
        assert_eq!(got.epoch, 0);
        for m in ["val_miou_thr", "val_iou_fg", "val_miou", "val_pixel_acc"] {
            let (g, w) = (got.get(m).unwrap(), want.get(m).unwrap());
            assert!(
                (g - w).abs() < 1e-9,
                "feature_norm {feature_norm}: {m} {g} at epoch 0 vs zero-shot {w}"
            );
        }
        // Saved and read back as text.
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(saved["head_init"], "class:pottedplant");
    }
    assert!("class:unicorn"
        .parse::<pixclass_train::segment::HeadInit>()
        .is_err());
    assert!("zeros"
        .parse::<pixclass_train::segment::HeadInit>()
        .is_err());
}

#[test]
fn the_mobilenet_is_fine_tuned_at_its_native_257() {
    // The reference recipe at the model's native side; the default recipe
    // upsamples to 385.
    let reference = SegTrainConfig::reference();
    assert_eq!(reference.preprocess.size, 257);
    assert_eq!(SegTrainConfig::default().preprocess.size, 385);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SegTrainConfig {
        epochs: 1,
        limit: Some(8),
        train_batch_size: 8,
        cache: FeatureCache::Disk,
        cache_dir: Some(tmp.path().join("cache")),
        ..reference
    };
    let dir = tmp.path().join("run");
    finetune(&cfg, splits(), &dir, Start::Fresh, false).unwrap();
    // The cached features are the model's 33x33 grid of a 257 input
    // (output stride 8, align_corners: (257 - 1) / 8 + 1).
    let cached = std::fs::read_dir(tmp.path().join("cache/deeplabv3-mobilenetv2-voc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let t = candle_core::safetensors::load(&cached, &candle_core::Device::Cpu).unwrap();
    let dims: Vec<Vec<usize>> = t.values().map(|v| v.dims().to_vec()).collect();
    assert!(dims.iter().any(|d| d.ends_with(&[256, 33, 33])), "{dims:?}");
    let img = image::open(dir.join("predictions_epoch_01.png")).unwrap();
    assert_eq!(img.width(), 4 * (257 + 4) + 4);
}
