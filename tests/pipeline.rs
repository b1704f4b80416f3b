//! The whole colourization pipeline through the library APIs only: embedded
//! data -> preprocessing -> a model -> the training loop -> a checkpoint ->
//! a reloaded model whose evaluation equals the run's last metrics row.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use pixclass_data::cifar::CifarSource;
use pixclass_models::ColourModelKind;
use pixclass_runs::{RunRecord, RunStatus, Start};
use pixclass_train::colourize::{
    evaluate_split, load_colouriser, palette_for, prepare_data, train_colouriser,
    ColourTrainConfig, VAL_ACC, VAL_LOSS,
};
use pixclass_train::DeviceKind;

#[test]
fn train_reload_evaluate_round_trip_with_a_partial_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ColourTrainConfig {
        epochs: 2,
        batch_size: 64,
        limit: Some(150),
        ..Default::default()
    };
    cfg.model.kind = ColourModelKind::ConvTranspose;
    cfg.model.num_filters = 8;
    // 150 images in batches of 64: 64, 64, 22 (a partial last batch).
    let run = train_colouriser(
        &cfg,
        &CifarSource::Embedded,
        dir.path(),
        Start::Fresh,
        false,
    )
    .unwrap();
    let rows = &run.record.epochs;
    assert_eq!(rows.len(), 2);
    assert!(rows[1].train_loss < rows[0].train_loss);
    // The run record on disk is the one returned, and names its data.
    let on_disk = RunRecord::read(dir.path()).unwrap();
    assert_eq!(on_disk.epochs, *rows);
    assert_eq!(on_disk.status, RunStatus::Finished);
    assert_eq!((on_disk.data.train, on_disk.data.val), (150, 100));
    assert!(on_disk.data.embedded);

    let loaded = load_colouriser(dir.path(), DeviceKind::Cpu).unwrap();
    let palette = palette_for(&loaded.config.model).unwrap();
    let (train, val) = prepare_data(
        &CifarSource::Embedded,
        cfg.class,
        cfg.limit,
        &palette,
        cfg.seed,
        cfg.rng,
    )
    .unwrap();
    assert_eq!(train.len(), 150);
    assert_eq!(train.num_batches(64), 3);
    assert_eq!(val.len(), 100);
    let m = evaluate_split(
        &loaded.net,
        &val,
        &palette,
        cfg.batch_size,
        &pixclass_train::colourize::Decoding::default(),
        loaded.prior.as_ref(),
        &Device::Cpu,
    )
    .unwrap();
    let (loss, acc) = (m.get(VAL_LOSS).unwrap(), m.get(VAL_ACC).unwrap());
    let last = &rows[1];
    // Every colour measure of the last epoch, recomputed from the saved run.
    for name in [
        "val_balanced_acc",
        "val_rgb_error",
        "val_psnr",
        "val_colourfulness",
        "val_colourfulness_truth",
    ] {
        let (a, b) = (m.get(name).unwrap(), last.get(name).unwrap());
        assert!(
            (a - b).abs() < 1e-6 * b.abs().max(1.0),
            "{name}: {a} vs {b}"
        );
    }
    let (want_loss, want_acc) = (last.get(VAL_LOSS).unwrap(), last.get(VAL_ACC).unwrap());
    assert!((loss - want_loss).abs() < 1e-6, "{loss} vs {want_loss}");
    assert!((acc - want_acc).abs() < 1e-9, "{acc} vs {want_acc}");
    // The data source is recorded in the saved configuration.
    assert!(loaded.config.data.contains("embedded sample"));
}

#[test]
fn configs_from_before_the_rng_field_keep_their_chacha_streams() {
    let mut json = serde_json::to_value(ColourTrainConfig::default()).unwrap();
    assert_eq!(json["rng"], "torch");
    json.as_object_mut().unwrap().remove("rng");
    let old: ColourTrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.rng, pixclass_data::RngScheme::Chacha);
}
