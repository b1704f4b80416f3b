//! `pixclass segment` and `pixclass weights` end to end: the offline
//! pretrained model on a real photo, a tiny fine-tuning on the embedded
//! Oxford-17 sample, and weights downloads from a server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

#[path = "../../pixclass-data/tests/common/serve.rs"]
mod serve;

use std::path::Path;
use std::process::{Command, Output};

use pixclass_data::checksum::sha256_bytes;

fn pixclass(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixclass"));
    c.env_remove("PIXCLASS_DATA")
        .env("PIXCLASS_CACHE", cache)
        .env("HF_HOME", cache.join("hf"))
        .env_remove("HF_HUB_OFFLINE")
        .arg("--quiet");
    c
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CIFAR-10 test horse no. 3 (a real photo) from the embedded sample, as PNG.
fn horse_png(path: &Path) {
    let rec = &pixclass_data::embedded::CIFAR_HORSE_TEST[3 * 3073..4 * 3073];
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        let p = (y * 32 + x) as usize;
        image::Rgb([rec[1 + p], rec[1 + 1024 + p], rec[1 + 2048 + p]])
    });
    image::imageops::resize(&img, 128, 128, image::imageops::FilterType::CatmullRom)
        .save(path)
        .unwrap();
}

#[test]
fn pretrained_model_finds_the_horse() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("horse.png");
    horse_png(&input);
    let output = tmp.path().join("out.png");
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "predict",
            "--model",
            "deeplabv3-mobilenetv2-voc",
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let text = check(out, "segment predict");
    assert!(text.contains("horse"), "{text}");
    let img = image::open(&output).unwrap();
    // Photo, overlay and legend side by side.
    assert!(img.width() > 2 * 128 && img.height() >= 128);
}

#[test]
fn finetune_eval_predict_on_the_embedded_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "finetune",
            "--embedded",
            "--loss",
            "iou",
            "--epochs",
            "2",
            "--size",
            "64",
            "--train-batch-size",
            "12",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let text = check(out, "segment finetune");
    assert!(text.contains("best val thresholded mIOU"), "{text}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    // The robust default recipe, recorded next to the run.
    assert_eq!(cfg["head_init"], "prior");
    assert_eq!(cfg["feature_norm"], true);
    assert_eq!(cfg["ce_warmup_epochs"], 0);
    assert_eq!(cfg["ce_weight"], 1.0);
    let out = pixclass(tmp.path())
        .args(["segment", "eval", "--embedded", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    let text = check(out, "segment eval");
    assert!(
        text.contains("foreground IoU") && text.contains("on 12 images"),
        "{text}"
    );
    let input = tmp.path().join("horse.png");
    horse_png(&input);
    let out = pixclass(tmp.path())
        .args(["segment", "predict", "--checkpoint"])
        .arg(&run)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("mask.png"))
        .output()
        .unwrap();
    let text = check(out, "segment predict --checkpoint");
    assert!(text.contains("% foreground"), "{text}");
    // --reference switches the recipe back.
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "finetune",
            "--embedded",
            "--epochs",
            "1",
            "--size",
            "32",
            "--train-batch-size",
            "12",
            "--reference",
            "--out",
        ])
        .arg(tmp.path().join("ref"))
        .output()
        .unwrap();
    check(out, "segment finetune --reference");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("ref/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["head_init"], "torch");
    assert_eq!(cfg["feature_norm"], false);
}

#[test]
fn weights_fetch_verify_resume_offline_and_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pixclass-models/tests/golden/tiny.pth"),
    )
    .unwrap();
    let sum = sha256_bytes(&body);
    let dest = tmp
        .path()
        .join("weights/deeplabv3_resnet50_coco-cd0a2569.pth");
    let fetch = |url: &str, sha: &str, extra: &[(&str, &str)]| {
        let mut c = pixclass(tmp.path());
        c.args([
            "weights",
            "fetch",
            "deeplabv3-resnet50-coco",
            "--no-hub",
            "--url",
            url,
            "--sha256",
            sha,
        ]);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Offline with nothing cached: a clear error saying where to put the file.
    let out = fetch("http://127.0.0.1:9/x", &sum, &[("HF_HUB_OFFLINE", "1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("deeplabv3_resnet50_coco-cd0a2569.pth"),
        "{err}"
    );
    // Wrong checksum: refused, nothing left at the destination.
    let (url, _) = serve::serve(body.clone(), 0);
    let out = fetch(&url, &"0".repeat(64), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    assert!(!dest.exists());
    // Interrupted (the server breaks the first response), then resumed.
    let (url, count) = serve::serve(body.clone(), 1);
    let out = fetch(&url, &sum, &[]);
    assert!(!out.status.success(), "the first attempt is cut off");
    let text = check(fetch(&url, &sum, &[]), "weights fetch (resume)");
    assert!(
        text.contains("deeplabv3_resnet50_coco-cd0a2569.pth"),
        "{text}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(count.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // Listed as cached; a registered name resolves to the cached file.
    let text = check(
        pixclass(tmp.path())
            .args(["weights", "list"])
            .output()
            .unwrap(),
        "weights list",
    );
    assert!(
        text.contains("deeplabv3-resnet50-coco") && text.contains("cached at"),
        "{text}"
    );
    // ... but it is not the published file (fetched under another checksum),
    // and the list says so.
    assert!(text.contains("FAILS the published checksum"), "{text}");
    // Convert the .pth to safetensors.
    let st = tmp.path().join("tiny.safetensors");
    let text = check(
        pixclass(tmp.path())
            .args(["weights", "convert"])
            .arg(&dest)
            .arg(&st)
            .output()
            .unwrap(),
        "weights convert",
    );
    assert!(text.contains("4 tensors"), "{text}");
    // The cached file is not the published ResNet-50 (it was fetched under
    // another checksum): used by name, it is refused before any work.
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "finetune",
            "--embedded",
            "--model",
            "deeplabv3-resnet50",
            "--out",
        ])
        .arg(tmp.path().join("r50"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the published") && err.contains("--weights PATH"),
        "{err}"
    );
    assert!(!tmp.path().join("r50").join("config.json").exists());
    // Passed as a file, it is used as asked, and it is not a DeepLab
    // checkpoint: a clear error.
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "finetune",
            "--embedded",
            "--model",
            "deeplabv3-resnet50",
            "--weights",
        ])
        .arg(&dest)
        .arg("--out")
        .arg(tmp.path().join("r50"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("classifier.4.weight"), "{err}");
    // An unknown name.
    let out = pixclass(tmp.path())
        .args([
            "segment",
            "finetune",
            "--embedded",
            "--weights",
            "nope",
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a file nor a registered name"));
}
