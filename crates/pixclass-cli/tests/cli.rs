//! The `pixclass` binary end to end, on the embedded sample (always runs).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn pixclass() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixclass"));
    c.env_remove("PIXCLASS_DATA").arg("--quiet");
    c
}

fn run(args: &[&str]) -> Output {
    let out = pixclass().args(args).output().expect("run pixclass");
    out
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "pixclass {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// metrics.csv without the wall-time column.
fn metrics_without_time(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

fn model_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(
        dir.join("checkpoint.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(k, _)| k.starts_with("model."))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

const TRAIN: &[&str] = &[
    "colourize",
    "train",
    "--embedded",
    "--limit",
    "100",
    "--batch-size",
    "50",
    "--model",
    "unet",
    "--filters",
    "8",
];

#[test]
fn summary_json_totals() {
    for (model, total) in [
        ("pool-upsample", 49728),
        ("conv-transpose", 49728),
        ("unet", 56856),
    ] {
        let out = ok(&["colourize", "summary", "--model", model, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sum: u64 = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["params"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, total, "{model}");
    }
    let text = ok(&[
        "colourize",
        "summary",
        "--model",
        "pool-upsample",
        "--kernel",
        "5",
        "--filters",
        "16",
    ]);
    assert!(text.contains("total"));
}

#[test]
fn short_training_run_learns_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A few hundred real images, 2 epochs, the study's batch size.
    let args = [
        "colourize",
        "train",
        "--embedded",
        "--limit",
        "300",
        "--batch-size",
        "100",
        "--model",
        "unet",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    ok(&args);
    for f in [
        "config.json",
        "metrics.csv",
        "curves.png",
        "samples_epoch_01.png",
        "samples_epoch_02.png",
        "checkpoint.safetensors",
        "class_prior.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        csv.lines().next().unwrap(),
        "epoch,train_loss,val_loss,val_acc,val_balanced_acc,val_rgb_error,val_psnr,val_colourfulness,val_colourfulness_truth,seconds"
    );
    assert!(rows[1][1] < rows[0][1], "train loss must fall: {csv}");
    assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite())));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["batch_size"], 100);
    assert_eq!(cfg["model"]["kind"], "unet");
    // The reference program's random streams by default.
    assert_eq!(cfg["rng"], "torch");
    // The samples strip: 6 rows (grey, truth, palette truth, argmax,
    // annealed mean, balanced) x 10 images of 32 px scaled x3.
    let img = image::open(out.join("samples_epoch_02.png")).unwrap();
    assert_eq!((img.width(), img.height()), (10 * 98 + 2, 6 * 98 + 2));

    // eval reproduces the last epoch's validation numbers.
    let e = ok(&[
        "colourize",
        "eval",
        "--embedded",
        "--checkpoint",
        out.to_str().unwrap(),
    ]);
    let last = &rows[1];
    assert!(
        e.contains(&format!("val loss {:.4}", last[2])),
        "{e} vs {last:?}"
    );
    assert!(e.contains(&format!("val accuracy {:.2} %", last[3])), "{e}");

    // image colourizes a non-square photo of any size.
    let photo = dir.path().join("photo.png");
    image::RgbImage::from_fn(70, 45, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
    })
    .save(&photo)
    .unwrap();
    let result = dir.path().join("out.png");
    ok(&[
        "colourize",
        "image",
        "--checkpoint",
        out.to_str().unwrap(),
        "--input",
        photo.to_str().unwrap(),
        "--output",
        result.to_str().unwrap(),
    ]);
    let img = image::open(&result).unwrap();
    assert_eq!((img.width(), img.height()), (4 + 2 * (68 + 4), 44 + 8));

    // The balanced decoding needs the run's class prior: image reads it
    // from the run directory, and refuses, naming it, when it is missing.
    let balanced = dir.path().join("balanced.png");
    let image_args = |output: &std::path::Path| {
        vec![
            "colourize".to_string(),
            "image".into(),
            "--decode".into(),
            "balanced".into(),
            "--checkpoint".into(),
            out.to_str().unwrap().into(),
            "--input".into(),
            photo.to_str().unwrap().into(),
            "--output".into(),
            output.to_str().unwrap().into(),
        ]
    };
    let a = image_args(&balanced);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(balanced.is_file());
    std::fs::remove_file(out.join("class_prior.json")).unwrap();
    let a = image_args(&dir.path().join("refused.png"));
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("class_prior.json"), "{err}");
    // eval computes the same prior from the training split instead.
    let e = ok(&[
        "colourize",
        "eval",
        "--embedded",
        "--decode",
        "balanced",
        "--checkpoint",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("decoded by balanced"), "{e}");
}

#[test]
fn same_seed_same_metrics_and_killed_run_resumes_exactly() {
    // Enough epochs that the run is still going when it is killed after its
    // first one (the test fails, rather than passing without a resume, when
    // that premise does not hold).
    const EPOCHS: &str = "6";
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let mut args = TRAIN.to_vec();
    args.extend(["--epochs", EPOCHS, "--out", full.to_str().unwrap()]);
    ok(&args);

    // Kill a second run after its first epoch, then resume it.
    let part = dir.path().join("part");
    let mut args = TRAIN.to_vec();
    args.extend(["--epochs", EPOCHS, "--out", part.to_str().unwrap()]);
    let mut child = pixclass().args(&args).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let done = std::fs::read_to_string(part.join("metrics.csv"))
            .map(|s| s.lines().count() >= 2)
            .unwrap_or(false);
        if done || t0.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let epochs_done = std::fs::read_to_string(part.join("metrics.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert!(epochs_done >= 1);
    assert!(
        epochs_done < 6 && !status.success(),
        "premise: the run must be killed part-way (it had finished {epochs_done} epochs, {status})"
    );
    // `--resume DIR` alone: the saved settings, data included.
    ok(&["colourize", "train", "--resume", part.to_str().unwrap()]);
    assert_eq!(metrics_without_time(&full), metrics_without_time(&part));
    assert_eq!(model_tensors(&full), model_tensors(&part));

    // Resuming with other settings is refused.
    let mut args = TRAIN.to_vec();
    args.extend([
        "--epochs",
        "4",
        "--lr",
        "0.5",
        "--resume",
        part.to_str().unwrap(),
    ]);
    let out = run(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--lr asks for 0.5 but the run has 0.001"),
        "the contradicting option is named with both values: {err}"
    );
}

#[test]
fn user_errors_are_messages_not_panics() {
    let out = run(&[
        "colourize",
        "train",
        "--embedded",
        "--device",
        "cuda",
        "--epochs",
        "1",
        "--limit",
        "10",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda") && !err.contains("panicked"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "colourize",
        "train",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pixclass data fetch cifar10"),
        "{err}"
    );

    let out = run(&["colourize", "summary", "--kernel", "1"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("kernel size must be >= 2")
    );

    let out = run(&[
        "colourize",
        "train",
        "--embedded",
        "--colours",
        "20",
        "--epochs",
        "1",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("16, 24 and 32")
    );
    // An unknown RNG scheme names the known ones.
    let out = run(&[
        "colourize",
        "train",
        "--embedded",
        "--rng",
        "mt",
        "--epochs",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("torch") && err.contains("chacha"),
        "{err}"
    );

    // Offline fetch fails fast and says where to put the files.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
    let out = run(&[
        "data",
        "fetch",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--url",
        &url,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cifar-10-binary.tar.gz") && err.contains("by hand"),
        "{err}"
    );
}

#[test]
fn data_info_on_the_embedded_sample() {
    let out = ok(&["data", "info", "--embedded"]);
    assert!(
        out.contains("train horses: 500") && out.contains("test horses: 100"),
        "{out}"
    );
}

#[test]
fn kmeans_on_the_embedded_sample_reports_distortion() {
    let out = ok(&[
        "colours",
        "kmeans",
        "--k",
        "8",
        "--embedded",
        "--max-iter",
        "5",
    ]);
    assert!(out.contains("distortion"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| !l.starts_with('#')
                && l.split_whitespace().count() == 3
                && l.split_whitespace().all(|x| x.parse::<f64>().is_ok()))
            .count(),
        8,
        "{out}"
    );
}
