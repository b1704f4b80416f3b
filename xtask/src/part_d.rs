//! Part D of `cargo xtask reproduce`: DeepLabV3 head fine-tuning on
//! Oxford-17 (SPEC §B) with both losses, the reference recipe next to
//! pixclass's default (issue 9's seed study), feature-cache timings, and
//! the prediction pictures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pixclass_runs::{EpochRecord, RunRecord, RunStatus};
use serde_json::{json, Value};

use crate::reuse;

/// Reference bands of the best val thresholded "mIOU" (SPEC §B.4).
const BAND_CE: (f64, f64) = (0.335, 0.365);
const BAND_IOU: (f64, f64) = (0.30, 0.34);
/// A run whose best thresholded mIOU stays below this predicted a constant mask.
const COLLAPSED: f64 = 0.05;

/// What Part D runs on.
pub struct Plan {
    /// `--data-dir D` or `--embedded` (+ `--limit`), passed to every run.
    pub data_args: Vec<String>,
    /// The data in words (for the report).
    pub data_note: String,
    /// Epochs per run.
    pub epochs: usize,
    /// Training batch of every run (`None`: each recipe's own: 16 for the
    /// default, 128 for the reference).
    pub batch: Option<usize>,
    /// Seeds of the recipe study.
    pub seeds: Vec<u64>,
    /// Time a run without the feature cache (2 epochs).
    pub time_no_cache: bool,
    /// The device.
    pub device: String,
}

/// One fine-tuning run's outcome: its record.
pub(crate) struct Run(pub(crate) RunRecord);

/// Metric names of a segmentation run (pixclass-train's `segment::task`).
const THR: &str = "val_miou_thr";
const IOU_FG: &str = "val_iou_fg";
const MIOU: &str = "val_miou";
const ACC: &str = "val_pixel_acc";

/// The value of `name` in `e` (NaN when absent: the report shows it).
fn val(e: &EpochRecord, name: &str) -> f64 {
    e.get(name).unwrap_or(f64::NAN)
}

impl Run {
    fn best(&self) -> Result<&EpochRecord> {
        self.0
            .best_by(THR)
            .with_context(|| format!("run {:?} has no epochs", self.0.label))
    }
    fn best_thr(&self) -> f64 {
        self.best().map_or(f64::NAN, |b| val(b, THR))
    }
    pub(crate) fn seconds(&self, epoch: usize) -> f64 {
        self.0.epoch(epoch).map_or(f64::NAN, |e| e.seconds)
    }
    /// Epochs 0 and 1: with a cold cache, epoch 0's validation extracts
    /// the validation features and epoch 1 the training ones.
    pub(crate) fn cold_seconds(&self) -> f64 {
        self.seconds(0) + self.seconds(1)
    }
    fn mean_later_seconds(&self) -> f64 {
        let later: Vec<f64> = self
            .0
            .epochs
            .iter()
            .filter(|e| e.epoch >= 2)
            .map(|e| e.seconds)
            .collect();
        later.iter().sum::<f64>() / later.len().max(1) as f64
    }
    /// The metrics of epoch 0 (before training).
    fn start(&self) -> Option<&EpochRecord> {
        self.0.epoch(0)
    }
}

/// The options `finetune` passes to `pixclass segment finetune`.
fn finetune_args(plan: &Plan, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--epochs", &plan.epochs.to_string()]
        .into_iter()
        .chain(["--device", &plan.device])
        .map(String::from)
        .collect();
    if let Some(b) = plan.batch {
        args.extend(["--train-batch-size".to_string(), b.to_string()]);
    }
    args.extend(plan.data_args.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The full command line of one fine-tuning into `dir`.
fn command(plan: &Plan, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["--quiet", "segment", "finetune", "--out"]
        .into_iter()
        .map(String::from)
        .collect();
    a.push(dir.to_string_lossy().into_owned());
    a.extend(finetune_args(plan, extra));
    a
}

/// True when `dir` holds a finished run of these options (to be reused).
pub(crate) fn finished(dir: &Path, plan: &Plan, extra: &[&str]) -> bool {
    reuse::same_options(dir, &command(plan, dir, extra))
        && RunRecord::read(dir).is_ok_and(|r| r.status == RunStatus::Finished)
}

/// Runs (or reuses, or resumes) one fine-tuning into `dir`.
pub(crate) fn finetune(bin: &Path, plan: &Plan, dir: &Path, extra: &[&str]) -> Result<Run> {
    Ok(Run(crate::reproduce::run_or_reuse(
        bin,
        dir,
        &command(plan, dir, extra),
    )?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn band_note(v: f64, band: (f64, f64)) -> String {
    if v < band.0 {
        format!("{:+.3}", v - band.0)
    } else if v > band.1 {
        format!("{:+.3}", v - band.1)
    } else {
        "in band".into()
    }
}

/// Runs Part D into `out/segment` and returns (markdown, json, failures).
pub fn run(
    bin: &Path,
    out: &Path,
    plan: &Plan,
    full: bool,
) -> Result<(String, Value, Vec<String>)> {
    let root = out.join("segment");
    // A cache folder of this reproduction, so epoch 1 of the first run
    // includes the feature extraction (a cold cache).
    let cache = root.join("feature-cache");
    let cache_s = cache.to_string_lossy().into_owned();
    let mut md = String::new();
    let mut failures = Vec::new();
    writeln!(md, "## Part D: segmentation as per-pixel classification\n")?;
    writeln!(
        md,
        "> **Data:** {} — **approximate data**: the trimaps are derived, blockier than the published ones \
         (see `../shared/data/README.md`).\n>\n> **Model:** DeepLabV3-MobileNetV2 (VOC, TensorFlow), the offline \
         pretrained model shipped in `assets/`; the reference used DeepLabV3-ResNet-101 (COCO), whose weights \
         were not available here (`pixclass weights fetch deeplabv3-resnet101-coco` on a machine with internet). \
         Only the last 1x1 conv (256 -> 2, 514 numbers) is trained, {} epochs, bilinear masks (SPEC §B.1-B.2). \
         **Reference recipe** (`--reference`): the study's Adam lr 0.05 constant, batch {}, PyTorch head init on raw \
         features, at this model's native 257x257 (the study fed 224: its row is in the size table). **pixclass default**: \
         batch {}, lr 0.01 with a cosine decay, standardised features, the head started at the class prior, soft losses \
         trained with `+ 1·CE`, inputs upsampled to 385x385. Epoch 0 is the validation before the first step.\n",
        plan.data_note,
        plan.epochs,
        plan.batch.map_or("128".to_string(), |b| b.to_string()),
        plan.batch.map_or("16".to_string(), |b| b.to_string()),
    )?;

    // 1. Default recipe, both losses, seed 0. The first run starts from an
    // empty cache unless it already finished.
    let first = ["--loss", "ce", "--seed", "0", "--cache-dir", &cache_s];
    if !finished(&root.join("default-ce-s0"), plan, &first) {
        let _ = std::fs::remove_dir_all(&cache);
    }
    let mut main: Vec<MainRun> = Vec::new();
    let recipes: [(&str, &str, Vec<&str>); 2] = [
        ("pixclass default", "default", vec![]),
        ("reference recipe", "reference", vec!["--reference"]),
    ];
    for (recipe, tag, flags) in &recipes {
        for loss in ["ce", "iou"] {
            let dir = root.join(format!("{tag}-{loss}-s0"));
            let mut extra = vec!["--loss", loss, "--seed", "0", "--cache-dir", &cache_s];
            extra.extend(flags.iter().copied());
            let run = finetune(bin, plan, &dir, &extra)?;
            main.push((recipe.to_string(), tag.to_string(), loss, dir, run));
        }
    }
    writeln!(
        md,
        "### Best validation scores over {} epochs (seed 0)\n",
        plan.epochs
    )?;
    writeln!(md, "| loss | recipe | input | reference \"mIOU\" (ResNet-101) | ours: thresholded mIOU (best epoch) | vs band | foreground IoU | mIoU | pixel acc |\n|---|---|---:|---|---:|---|---:|---:|---:|")?;
    let mut main_json = Vec::new();
    for (recipe, _, loss, _, run) in &main {
        let b = run.best()?;
        let (thr, fg, miou, acc) = (val(b, THR), val(b, IOU_FG), val(b, MIOU), val(b, ACC));
        let band = if *loss == "ce" { BAND_CE } else { BAND_IOU };
        writeln!(
            md,
            "| {} | {recipe} | {} | {:.3}-{:.3} | {:.3} ({}) | {} | {:.3} | {:.3} | {:.3} |",
            if *loss == "ce" {
                "cross-entropy"
            } else {
                "soft IoU"
            },
            size_of(run),
            band.0,
            band.1,
            thr,
            b.epoch,
            band_note(thr, band),
            fg,
            miou,
            acc
        )?;
        main_json.push(json!({"loss": loss, "recipe": recipe, "best_epoch": b.epoch, "miou_thr": thr, "iou_fg": fg, "miou": miou, "pixel_acc": acc, "reference_band": [band.0, band.1]}));
    }
    writeln!(
        md,
        "\nDifferent model and approximate masks: the bands are context, not a target.\n"
    )?;
    let (size_md, size_json) = size_study(bin, plan, &root, &cache_s, &main)?;
    md.push_str(&size_md);
    let (zs_md, zs_json, zs_fail) = zero_shot_study(bin, plan, &root, &cache_s, &main, full)?;
    md.push_str(&zs_md);
    failures.extend(zs_fail);
    let (abl_md, abl_json) = recipe_ablations(bin, plan, &root, &cache_s, &main)?;
    md.push_str(&abl_md);
    if full {
        let ce = main
            .iter()
            .find(|m| m.1 == "default" && m.2 == "ce")
            .map_or(f64::NAN, |m| m.4.best_thr());
        if ce.is_nan() || ce <= 0.36 {
            failures.push(format!(
                "Part D: cross-entropy best thresholded mIOU {ce:.3} is not above 0.36"
            ));
        }
    }

    // 2. The recipe study across seeds (issue 9).
    writeln!(
        md,
        "### Soft-IoU across seeds: reference recipe vs pixclass default\n"
    )?;
    writeln!(md, "Best val thresholded mIOU per seed; **collapsed** = the run ends predicting one class everywhere (best score < {COLLAPSED}).\n")?;
    let mut header = "| loss | recipe |".to_string();
    let mut rule = "|---|---|".to_string();
    for s in &plan.seeds {
        header.push_str(&format!(" seed {s} |"));
        rule.push_str("---:|");
    }
    writeln!(md, "{header} collapsed | median |\n{rule}---:|---:|")?;
    let mut study = Vec::new();
    let mut medians = std::collections::HashMap::new();
    let mut fg_medians = std::collections::HashMap::new();
    for (recipe, tag, flags) in &recipes {
        for loss in ["ce", "iou"] {
            let mut scores = Vec::new();
            let mut fgs = Vec::new();
            for &seed in &plan.seeds {
                let dir = root.join(format!("{tag}-{loss}-s{seed}"));
                let seed_s = seed.to_string();
                let mut extra = vec!["--loss", loss, "--seed", &seed_s, "--cache-dir", &cache_s];
                extra.extend(flags.iter().copied());
                let r = finetune(bin, plan, &dir, &extra)?;
                scores.push(r.best_thr());
                fgs.push(r.best().map_or(f64::NAN, |b| val(b, IOU_FG)));
            }
            fg_medians.insert((tag.to_string(), loss), median(fgs.clone()));
            let collapsed = scores.iter().filter(|&&s| s < COLLAPSED).count();
            let med = median(scores.clone());
            medians.insert((tag.to_string(), loss), med);
            let cells: String = scores
                .iter()
                .map(|s| {
                    if *s < COLLAPSED {
                        format!(" **{s:.3}** |")
                    } else {
                        format!(" {s:.3} |")
                    }
                })
                .collect();
            writeln!(
                md,
                "| {loss} | {recipe} |{cells} {collapsed} of {} | {med:.3} |",
                scores.len()
            )?;
            study.push(json!({"loss": loss, "recipe": recipe, "seeds": plan.seeds, "best_miou_thr": scores, "collapsed": collapsed, "median": med}));
            if full && *tag == "default" && loss == "iou" && collapsed > 0 {
                failures.push(format!(
                    "Part D: default soft-IoU collapsed in {collapsed} of {} seeds",
                    scores.len()
                ));
            }
        }
    }
    // Ablations of the default soft-IoU recipe: without the CE term, and
    // the earlier remedy (two CE epochs, then soft IoU alone).
    let ablations: [(&str, &str, Vec<&str>); 2] = [
        (
            "default without the CE term (`--ce-weight 0`)",
            "pure",
            vec!["--ce-weight", "0"],
        ),
        (
            "2 CE epochs, then soft IoU alone (`--ce-weight 0 --ce-warmup-epochs 2`)",
            "warmup",
            vec!["--ce-weight", "0", "--ce-warmup-epochs", "2"],
        ),
    ];
    for (recipe, tag, flags) in &ablations {
        let mut scores = Vec::new();
        for &seed in &plan.seeds {
            let dir = root.join(format!("{tag}-iou-s{seed}"));
            let seed_s = seed.to_string();
            let mut extra = vec!["--loss", "iou", "--seed", &seed_s, "--cache-dir", &cache_s];
            extra.extend(flags.iter().copied());
            scores.push(finetune(bin, plan, &dir, &extra)?.best_thr());
        }
        let collapsed = scores.iter().filter(|&&s| s < COLLAPSED).count();
        let med = median(scores.clone());
        let cells: String = scores.iter().map(|s| format!(" {s:.3} |")).collect();
        writeln!(
            md,
            "| iou | {recipe} |{cells} {collapsed} of {} | {med:.3} |",
            scores.len()
        )?;
        study.push(json!({"loss": "iou", "recipe": recipe, "seeds": plan.seeds, "best_miou_thr": scores, "collapsed": collapsed, "median": med}));
    }
    writeln!(
        md,
        "\nSoft IoU's gradient on a pixel is proportional to `p(1-p)`: it vanishes on confidently \
         wrong pixels, so the reference recipe's first steps (which push every pixel to one class) \
         never recover. Standardised features and the class-prior start avoid the collapse; the \
         cross-entropy term, whose gradient `p - y` does not vanish there, keeps correcting such \
         pixels for the whole run.\n"
    )?;
    if full {
        let (iou, ce) = (
            medians
                .get(&("default".to_string(), "iou"))
                .copied()
                .unwrap_or(f64::NAN),
            medians
                .get(&("default".to_string(), "ce"))
                .copied()
                .unwrap_or(f64::NAN),
        );
        if iou.is_nan() || ce.is_nan() || iou < ce {
            failures.push(format!("Part D: default soft-IoU median {iou:.3} is below the cross-entropy median {ce:.3}"));
        }
    }

    // Issue 19's targets for the default recipe.
    let get = |m: &std::collections::HashMap<(String, &str), f64>, loss: &str| {
        m.get(&("default".to_string(), loss))
            .copied()
            .unwrap_or(f64::NAN)
    };
    writeln!(
        md,
        "\n### Default recipe against its targets (median of {} seeds, {} epochs)\n",
        plan.seeds.len(),
        plan.epochs
    )?;
    writeln!(
        md,
        "| measure | value | target | met |\n|---|---:|---:|---|"
    )?;
    let mut target_json = Vec::new();
    for (what, v, t) in [
        (
            "cross-entropy, best thresholded mIOU",
            get(&medians, "ce"),
            0.50,
        ),
        (
            "soft IoU, best thresholded mIOU",
            get(&medians, "iou"),
            0.50,
        ),
        (
            "cross-entropy, foreground IoU",
            get(&fg_medians, "ce"),
            0.75,
        ),
        ("soft IoU, foreground IoU", get(&fg_medians, "iou"), 0.75),
    ] {
        let met = if v >= t { "yes" } else { "**no**" };
        writeln!(md, "| {what} | {v:.3} | >= {t:.2} | {met} |")?;
        target_json.push(json!({"measure": what, "value": v, "target": t}));
    }
    writeln!(md)?;

    // 3. Time per epoch, with and without the feature cache.
    writeln!(md, "\n### Time per epoch ({} device)\n", plan.device)?;
    let first = &main[0].4;
    let (e1, later) = (first.cold_seconds(), first.mean_later_seconds());
    writeln!(
        md,
        "| run | epochs 0 + 1 (s) | epochs 2..{} mean (s) | first / later |\n|---|---:|---:|---:|",
        plan.epochs
    )?;
    writeln!(
        md,
        "| feature cache, cold (epoch 0 extracts the validation features, epoch 1 the training ones) | {e1:.1} | {later:.2} | {:.1}x |",
        e1 / later
    )?;
    let mut timing = json!({"cold_epoch1_s": e1, "cached_epoch_s": later});
    if plan.time_no_cache {
        let nc_plan = Plan {
            epochs: 2,
            data_args: plan.data_args.clone(),
            data_note: plan.data_note.clone(),
            batch: plan.batch,
            seeds: vec![],
            time_no_cache: false,
            device: plan.device.clone(),
        };
        let dir = root.join("no-cache-ce");
        let run = finetune(bin, &nc_plan, &dir, &["--loss", "ce", "--cache", "off"])?;
        writeln!(
            md,
            "| no cache (features recomputed every step) | {:.1} | {:.1} | {:.1}x |",
            run.cold_seconds(),
            run.seconds(2),
            run.cold_seconds() / run.seconds(2)
        )?;
        timing["no_cache_epoch_s"] = json!([run.cold_seconds(), run.seconds(2)]);
        // The frozen-mode train quirk: BatchNorm is folded in this model,
        // so train mode computes the same features.
        let dir = root.join("frozen-train-ce");
        let cache_s = cache.to_string_lossy().into_owned();
        let tr = finetune(
            bin,
            &nc_plan,
            &dir,
            &[
                "--loss",
                "ce",
                "--frozen-mode",
                "train",
                "--cache-dir",
                &cache_s,
            ],
        )?;
        writeln!(md, "\n`--frozen-mode train` (the reference's quirk) on this model: BatchNorm is folded into its convs and it has no dropout, so train mode is the same function and the cache stays valid (epoch 2 val thresholded mIOU {:.3}, as in eval mode).", tr.0.last().map_or(f64::NAN, |r| val(r, THR)))?;
    }
    writeln!(md)?;
    if plan.time_no_cache {
        let (rmd, rjson) = crate::resnet_timing::run(bin, out, plan)?;
        md.push_str(&rmd);
        timing["resnet101"] = rjson;
    }

    // 4. Pictures.
    let mut pics = String::new();
    for (recipe, tag, loss, dir, _) in &main {
        if tag != "default" {
            continue;
        }
        let rel = |f: &str| -> String {
            dir.join(f)
                .strip_prefix(out)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        writeln!(
            pics,
            "#### {} ({recipe})\n\n![curves]({})\n\n![predictions]({})\n",
            if *loss == "ce" {
                "Cross-entropy"
            } else {
                "Soft IoU"
            },
            rel("curves.png"),
            rel(&format!("predictions_epoch_{:02}.png", plan.epochs))
        )?;
    }
    writeln!(md, "### Pictures\n\nPanels per row (titled): image, predicted mask, ground truth, overlay (prediction tinted red, the true outline in yellow), validation images.\n\n{pics}")?;
    let json = json!({"data": plan.data_note, "runs": main_json, "sizes": size_json, "zero_shot": zs_json, "ablations": abl_json, "seed_study": study, "targets": target_json, "timing": timing});
    Ok((md, json, failures))
}

/// The Part D plan for this reproduction.
pub fn plan(data_dir: &str, quick: bool, device: &str) -> Plan {
    let has = PathBuf::from(data_dir)
        .join("flowers17")
        .join("jpg")
        .is_dir();
    if quick || !has {
        Plan {
            data_args: if has {
                vec![
                    "--data-dir".into(),
                    data_dir.into(),
                    "--limit".into(),
                    "48".into(),
                ]
            } else {
                vec!["--embedded".into()]
            },
            data_note: if has {
                format!("QUICK run: the first 48 train / 48 val images of Oxford-17 at `{data_dir}`, few epochs")
            } else {
                "EMBEDDED SAMPLE of Oxford-17 (36 train / 12 val images shipped in the binary), few epochs".into()
            },
            epochs: 3,
            batch: Some(12),
            seeds: vec![0, 1],
            time_no_cache: false,
            device: device.into(),
        }
    } else {
        Plan {
            data_args: vec!["--data-dir".into(), data_dir.into()],
            data_note: format!("Oxford-17 at `{data_dir}` (shared split: 635 train / 211 val)"),
            epochs: 10,
            batch: None,
            seeds: vec![0, 1, 2, 3, 4],
            time_no_cache: true,
            device: device.into(),
        }
    }
}

/// The input side a run was made at (from its configuration).
fn size_of(run: &Run) -> String {
    run.0.config["preprocess"]["size"]
        .as_u64()
        .map_or("?".into(), |s| s.to_string())
}

/// One main run of `main` by recipe tag and loss.
fn main_run<'a>(main: &'a [MainRun], tag: &str, loss: &str) -> Option<&'a Run> {
    main.iter()
        .find(|m| m.1 == tag && m.2 == loss)
        .map(|m| &m.4)
}

/// (recipe, tag, loss, dir, run) of the seed-0 runs.
type MainRun = (String, String, &'static str, PathBuf, Run);

/// Both recipes and losses at the study's 224, the model's native 257 and
/// the default recipe's 385 (seed 0); a recipe's own size reuses its main
/// run.
fn size_study(
    bin: &Path,
    plan: &Plan,
    root: &Path,
    cache: &str,
    main: &[MainRun],
) -> Result<(String, Value)> {
    const SIZES: [u32; 3] = [224, 257, 385];
    let mut md = String::new();
    writeln!(
        md,
        "### Input size: the study's 224, the model's native 257, the default's 385 (seed 0)\n"
    )?;
    writeln!(md, "Best validation thresholded mIOU / foreground IoU; **bold** = the recipe's default size.\n")?;
    writeln!(
        md,
        "| recipe | loss | 224 | 257 | 385 |\n|---|---|---:|---:|---:|"
    )?;
    let mut rows = Vec::new();
    for (recipe, tag, flags) in [
        ("pixclass default", "default", vec![]),
        ("reference recipe", "reference", vec!["--reference"]),
    ] {
        for loss in ["ce", "iou"] {
            let own = main_run(main, tag, loss).context("main run")?;
            let mut cells = String::new();
            let mut scores = Vec::new();
            for size in SIZES {
                let size_s = size.to_string();
                let is_own = size_of(own) == size_s;
                let run;
                let r = if is_own {
                    own
                } else {
                    let dir = root.join(format!("{tag}-{loss}-s0-size{size}"));
                    let mut extra = vec!["--loss", loss, "--seed", "0", "--cache-dir", cache];
                    extra.extend(flags.iter().copied());
                    extra.extend(["--size", &size_s]);
                    run = finetune(bin, plan, &dir, &extra)?;
                    &run
                };
                let b = r.best()?;
                let (thr, fg) = (val(b, THR), val(b, IOU_FG));
                if is_own {
                    write!(cells, " **{thr:.3} / {fg:.3}** |")?;
                } else {
                    write!(cells, " {thr:.3} / {fg:.3} |")?;
                }
                scores.push(json!({"size": size, "miou_thr": thr, "iou_fg": fg}));
            }
            writeln!(md, "| {recipe} | {loss} |{cells}")?;
            rows.push(json!({"recipe": recipe, "loss": loss, "by_size": scores}));
        }
    }
    writeln!(
        md,
        "\nThe MobileNet was made for 257x257 (output stride 8 on an align_corners grid: 33x33 features); \
         upsampling to 385 gives a 49x49 grid and finer mask edges for the same head.\n"
    )?;
    Ok((md, json!(rows)))
}

/// The pretrained model's own "potted plant" vs the rest, zero-shot at the
/// native 257 and at 385, and the default recipe started from that class
/// (`--head-init class:pottedplant`), whose epoch 0 is the zero-shot score.
fn zero_shot_study(
    bin: &Path,
    plan: &Plan,
    root: &Path,
    cache: &str,
    main: &[MainRun],
    full: bool,
) -> Result<(String, Value, Vec<String>)> {
    let mut md = String::new();
    let mut failures = Vec::new();
    writeln!(
        md,
        "### Zero-shot baseline: the VOC model's \"potted plant\" vs the rest\n"
    )?;
    writeln!(
        md,
        "| model | input | thresholded mIOU | foreground IoU | mIoU | pixel acc |\n|---|---:|---:|---:|---:|---:|"
    )?;
    let mut zs = Vec::new();
    for size in ["257", "385"] {
        let dir = root.join(format!("zero-shot-pottedplant-{size}"));
        let mut args: Vec<String> = [
            "--quiet",
            "segment",
            "eval",
            "--model",
            "deeplabv3-mobilenetv2-voc",
            "--class",
            "pottedplant",
            "--size",
            size,
            "--device",
            &plan.device,
            "--out",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.push(dir.to_string_lossy().into_owned());
        args.extend(plan.data_args.iter().cloned());
        let r = Run(crate::reproduce::run_or_reuse(bin, &dir, &args)?);
        let e = r.start().context("zero-shot run without epoch 0")?;
        writeln!(
            md,
            "| zero-shot (no training) | {size} | {:.3} | {:.3} | {:.3} | {:.3} |",
            val(e, THR),
            val(e, IOU_FG),
            val(e, MIOU),
            val(e, ACC)
        )?;
        zs.push((size, val(e, THR), val(e, IOU_FG)));
    }
    let dir = root.join("default-ce-s0-class-init");
    let extra = [
        "--loss",
        "ce",
        "--seed",
        "0",
        "--cache-dir",
        cache,
        "--head-init",
        "class:pottedplant",
    ];
    let class_run = finetune(bin, plan, &dir, &extra)?;
    let start = class_run
        .start()
        .context("class-init run without epoch 0")?;
    let b = class_run.best()?;
    writeln!(
        md,
        "| default recipe from `--head-init class:pottedplant`, epoch 0 | 385 | {:.3} | {:.3} | {:.3} | {:.3} |",
        val(start, THR),
        val(start, IOU_FG),
        val(start, MIOU),
        val(start, ACC)
    )?;
    writeln!(
        md,
        "| the same, fine-tuned (best epoch {}) | 385 | {:.3} | {:.3} | {:.3} | {:.3} |",
        b.epoch,
        val(b, THR),
        val(b, IOU_FG),
        val(b, MIOU),
        val(b, ACC)
    )?;
    let prior = main_run(main, "default", "ce").context("default CE run")?;
    let pb = prior.best()?;
    writeln!(
        md,
        "| default recipe (class-prior start), fine-tuned (best epoch {}) | 385 | {:.3} | {:.3} | {:.3} | {:.3} |\n",
        pb.epoch,
        val(pb, THR),
        val(pb, IOU_FG),
        val(pb, MIOU),
        val(pb, ACC)
    )?;
    let (zs_thr, zs_fg) = (zs[1].1, zs[1].2);
    // The fine-tuning run scores cached features through the standardised head, the zero-shot run
    // the full forward: the same logits up to float rounding, which can flip a pixel whose two
    // logits tie. 1e-5 of the foreground IoU is a few hundred of the 31 M validation pixels.
    let gap = (val(start, THR) - zs_thr)
        .abs()
        .max((val(start, IOU_FG) - zs_fg).abs());
    let same = gap < 1e-5;
    writeln!(
        md,
        "Epoch 0 of the class-initialised head {} the zero-shot score at the same size (largest gap {gap:.1e}, \
         float rounding on near-tied pixels): the head is the \
         pretrained classifier's background and potted-plant rows (`segment eval --model M --class NAME` \
         scores a pixel as that class when its logit beats background's). Flowers are not VOC potted plants, \
         so here fine-tuning gains {:+.3} foreground IoU over zero-shot.\n",
        if same { "equals" } else { "**differs from**" },
        val(b, IOU_FG) - zs_fg
    )?;
    if !same {
        failures.push("Part D: the class-initialised head's epoch 0 differs from zero-shot".into());
    }
    if full && val(b, IOU_FG) < zs_fg + 0.02 {
        failures.push(format!(
            "Part D: fine-tuned foreground IoU {:.3} is not 0.02 above zero-shot's {zs_fg:.3}",
            val(b, IOU_FG)
        ));
    }
    let json = json!({
        "zero_shot": zs.iter().map(|(s, t, f)| json!({"size": s, "miou_thr": t, "iou_fg": f})).collect::<Vec<_>>(),
        "class_init": {"epoch0_miou_thr": val(start, THR), "epoch0_iou_fg": val(start, IOU_FG), "best_miou_thr": val(b, THR), "best_iou_fg": val(b, IOU_FG), "best_epoch": b.epoch},
    });
    Ok((md, json, failures))
}

/// Each part of the default recipe taken away in turn (cross-entropy,
/// seed 0).
fn recipe_ablations(
    bin: &Path,
    plan: &Plan,
    root: &Path,
    cache: &str,
    main: &[MainRun],
) -> Result<(String, Value)> {
    let mut md = String::new();
    writeln!(
        md,
        "### The default recipe, one part at a time (cross-entropy, seed 0)\n"
    )?;
    writeln!(
        md,
        "| variant | thresholded mIOU (best epoch) | foreground IoU | mIoU |\n|---|---:|---:|---:|"
    )?;
    let mut rows = Vec::new();
    let own = main_run(main, "default", "ce").context("default CE run")?;
    let mut variants: Vec<(&str, &str, Vec<&str>)> = vec![(
        "without the cosine decay (`--lr-schedule constant`)",
        "constant-lr",
        vec!["--lr-schedule", "constant"],
    )];
    if plan.batch.is_none() {
        variants.insert(
            0,
            (
                "the study's steps: batch 128, lr 0.05 constant (40 steps)",
                "study-steps",
                vec![
                    "--train-batch-size",
                    "128",
                    "--lr",
                    "0.05",
                    "--lr-schedule",
                    "constant",
                ],
            ),
        );
    }
    let b = own.best()?;
    writeln!(
        md,
        "| pixclass default | {:.3} ({}) | {:.3} | {:.3} |",
        val(b, THR),
        b.epoch,
        val(b, IOU_FG),
        val(b, MIOU)
    )?;
    for (what, tag, flags) in variants {
        let dir = root.join(format!("ablation-{tag}-ce-s0"));
        let mut extra = vec!["--loss", "ce", "--seed", "0", "--cache-dir", cache];
        extra.extend(flags.iter().copied());
        let r = finetune(bin, plan, &dir, &extra)?;
        let b = r.best()?;
        writeln!(
            md,
            "| {what} | {:.3} ({}) | {:.3} | {:.3} |",
            val(b, THR),
            b.epoch,
            val(b, IOU_FG),
            val(b, MIOU)
        )?;
        rows.push(json!({"variant": what, "miou_thr": val(b, THR), "iou_fg": val(b, IOU_FG), "best_epoch": b.epoch}));
    }
    writeln!(
        md,
        "\nAt the native 257 instead of 385: the size table above.\n"
    )?;
    Ok((md, json!(rows)))
}
