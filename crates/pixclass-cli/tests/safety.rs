//! No run, checkpoint or user file is lost, mixed or silently replaced, and
//! nothing unverified is used (issue 21): the `pixclass` binary on real
//! files made here, each rule checked by what a user sees.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn pixclass() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixclass"));
    c.env_remove("PIXCLASS_DATA").arg("--quiet");
    c
}

fn run(args: &[&str]) -> Output {
    pixclass().args(args).output().expect("run pixclass")
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!e.contains("panicked"), "a panic, not a message: {e}");
    e
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "pixclass {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny colourization run into `dir` (with extra options, which replace
/// the tiny run's own of the same name).
fn tiny(dir: &Path, extra: &[&str]) -> Output {
    let d = dir.to_str().unwrap();
    let given: Vec<&str> = extra
        .iter()
        .map(|e| e.split('=').next().unwrap_or(e))
        .collect();
    let base = [
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--filters",
        "4",
        "--epochs",
        "1",
    ];
    let mut a: Vec<&str> = vec!["colourize", "train", "--embedded", "--out", d];
    for pair in base.chunks(2) {
        if !given.contains(&pair[0]) {
            a.extend_from_slice(pair);
        }
    }
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn a_run_directory_is_never_silently_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    assert!(tiny(&dir, &[]).status.success());
    let config = std::fs::read(dir.join("config.json")).unwrap();
    // A second run into it is refused, saying what to do; nothing changed.
    let e = err(&tiny(&dir, &["--model", "unet"]));
    assert!(
        e.contains("already holds a run") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
    // A start over whose data fails to load leaves the old run alone.
    let empty = tmp.path().join("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err(&run(&[
        "colourize",
        "train",
        "--data-dir",
        empty.to_str().unwrap(),
        "--overwrite",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(e.contains("no usable data"), "{e}");
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
    // --overwrite starts over: the old run's pictures are gone, not mixed in.
    std::fs::write(dir.join("samples_epoch_07.png"), b"old").unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    assert!(tiny(&dir, &["--overwrite", "--model", "unet"])
        .status
        .success());
    assert!(!dir.join("samples_epoch_07.png").exists());
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(cfg.contains("\"unet\""), "{cfg}");
}

#[test]
fn a_run_directory_in_use_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("busy");
    // This process holds it, as a running pixclass would.
    let held = pixclass_runs::RunDir::open(&dir, pixclass_runs::Start::Fresh).unwrap();
    let e = err(&tiny(&dir, &[]));
    assert!(
        e.contains("in use by process") && e.contains(&std::process::id().to_string()),
        "{e}"
    );
    assert!(!dir.join("config.json").exists());
    drop(held);
    assert!(tiny(&dir, &[]).status.success());
}

#[test]
fn settings_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    for (opt, val, want) in [
        ("--lr", "-1", "--lr -1 is out of range"),
        ("--lr", "nan", "--lr NaN is out of range"),
        ("--batch-size", "0", "--batch-size 0 is out of range"),
        ("--epochs", "0", "--epochs 0 is out of range"),
        ("--colours", "7", "16, 24 and 32"),
    ] {
        let dir = tmp.path().join(format!("r{}", opt.trim_start_matches('-')));
        let e = err(&tiny(&dir, &[&format!("{opt}={val}")]));
        assert!(e.contains(want), "{opt} {val}: {e}");
        assert!(!dir.exists(), "{opt} {val}: nothing may be written");
    }
    let e = err(&run(&[
        "segment",
        "finetune",
        "--embedded",
        "--size",
        "0",
        "--out",
        tmp.path().join("s").to_str().unwrap(),
    ]));
    assert!(e.contains("--size 0 is out of range"), "{e}");
    assert!(e.lines().count() < 5, "a message, not a trace: {e}");
}

/// A real JPEG (the embedded sample's first photo, via a fine-tuning's
/// preprocessing is not needed: encode one here).
fn jpeg(path: &Path) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    img.save(path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn pictures_in_and_out_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = tmp.path().join("photo.jpg");
    let bytes = jpeg(&photo);
    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let predict = |input: &Path, output: &Path, extra: &[&str]| {
        let mut a = vec![
            "segment".to_string(),
            "predict".into(),
            "--model".into(),
            "deeplabv3-mobilenetv2-voc".into(),
            "--input".into(),
            p(input),
            "--output".into(),
            p(output),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&a)
    };
    // A truncated JPEG is an error naming the file.
    let e = err(&predict(&cut, &tmp.path().join("o.png"), &[]));
    assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
    // The output may not be the input, and is a PNG.
    let e = err(&predict(&photo, &photo, &[]));
    assert!(e.contains("refusing to overwrite an input"), "{e}");
    assert_eq!(std::fs::read(&photo).unwrap(), bytes);
    let e = err(&predict(&photo, &tmp.path().join("o.jpg"), &[]));
    assert!(e.contains(".png"), "{e}");
    // Sizes are range-checked before any work.
    for size in ["0", "100000"] {
        let e = err(&predict(
            &photo,
            &tmp.path().join("o.png"),
            &["--size", size],
        ));
        assert!(e.contains("out of range"), "--size {size}: {e}");
    }
    // The good photo works.
    let out = predict(&photo, &tmp.path().join("o.png"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Colourizing a truncated JPEG fails too.
    let run_dir = tmp.path().join("colour");
    assert!(tiny(&run_dir, &[]).status.success());
    let e = err(&run(&[
        "colourize",
        "image",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--input",
        cut.to_str().unwrap(),
        "--output",
        tmp.path().join("c.png").to_str().unwrap(),
    ]));
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn masks_without_foreground_are_an_error_not_a_perfect_score() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    for i in 0..8 {
        let img = image::RgbImage::from_fn(40, 40, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 6) as u8, i * 20])
        });
        img.save(data.join(format!("images/p{i}.png"))).unwrap();
        // Foreground in another colour than the default rule's (128, 0, 0).
        let mask = image::RgbImage::from_fn(40, 40, |x, _| {
            if x < 20 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        mask.save(data.join(format!("masks/p{i}.png"))).unwrap();
    }
    let out_dir = tmp.path().join("seg");
    let e = err(&run(&[
        "segment",
        "finetune",
        "--data-dir",
        data.to_str().unwrap(),
        "--train-batch-size",
        "2",
        "--epochs",
        "1",
        "--size",
        "64",
        "--cache",
        "memory",
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    assert!(e.contains("no mask") && e.contains("--fg-colour"), "{e}");
    assert!(!out_dir.join("config.json").exists());
}

#[test]
fn data_info_fails_on_a_data_directory_without_data() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err(&run(&[
        "data",
        "info",
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(e.contains("no CIFAR-10"), "{e}");
    ok(&["data", "info", "--embedded"]);
}

#[test]
fn truncated_photos_in_a_data_set_are_errors_or_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    for i in 0..8u32 {
        let p = data.join(format!("images/p{i}.jpg"));
        let bytes = jpeg(&p);
        if i == 3 {
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        }
        let mask = image::RgbImage::from_fn(64, 48, |x, _| {
            if x < 32 {
                image::Rgb([128, 0, 0])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        mask.save(data.join(format!("masks/p{i}.png"))).unwrap();
    }
    let args = |out: &str, skip: bool| {
        let mut a = vec![
            "segment".to_string(),
            "finetune".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--train-batch-size".into(),
            "2".into(),
            "--epochs".into(),
            "1".into(),
            "--size".into(),
            "64".into(),
            "--cache".into(),
            "memory".into(),
            "--out".into(),
            tmp.path().join(out).to_str().unwrap().into(),
        ];
        if skip {
            a.push("--skip-bad".into());
        }
        a
    };
    let a = args("strict", false);
    let e = err(&run(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(e.contains("p3.jpg") && e.contains("truncated"), "{e}");
    let a = args("lenient", true);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("skip") || text.contains("Skip"),
        "the skipped photo is counted: {text}"
    );
}
