//! `cargo xtask reproduce`: the whole study, with a report next to the
//! reference numbers of SPEC §A.5 and §B.4: Parts A–C (colourization) here,
//! Part D (segmentation) in [`crate::part_d`]. Finished runs in the output
//! folder are reused, so an interrupted reproduction continues.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pixclass_runs::RunRecord;
use serde_json::json;

use crate::build_pixclass;
use crate::report::{copy_dir, machine, publish, verify_report};
use crate::reuse::{self, Prior};

/// `cargo xtask reproduce`.
#[derive(clap::Args)]
pub struct ReproduceArgs {
    /// The quick version (few epochs, a subset) even when the full data is there.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Insist on the full data (an error without it) and on the reference bands.
    #[arg(long)]
    full: bool,
    /// Device of every run.
    #[arg(long, value_parser = ["cpu", "cuda", "metal"], default_value = "cpu")]
    device: String,
    /// Output folder (runs, report.md, results.json).
    #[arg(long, default_value = "runs/reproduce")]
    out: PathBuf,
    /// Data directory (default: $PIXCLASS_DATA, else ./data).
    #[arg(long)]
    data_dir: Option<String>,
    /// Copy the report to docs/RESULTS.md and its pictures to docs/results/.
    #[arg(long)]
    publish: bool,
}

/// One reference row: CLI name, display name, (loss band), (accuracy band),
/// the accuracy a full reproduction must reach.
type Reference = (&'static str, &'static str, (f64, f64), (f64, f64), f64);

/// Reference results (SPEC §A.5).
const PARTS_A: [Reference; 3] = [
    (
        "pool-upsample",
        "PoolUpsampleNet",
        (1.58, 1.59),
        (40.7, 41.3),
        40.5,
    ),
    (
        "conv-transpose",
        "ConvTransposeNet",
        (1.14, 1.15),
        (54.9, 55.7),
        54.5,
    ),
    ("unet", "UNet", (1.06, 1.07), (57.9, 58.3), 57.5),
];
/// Batch-size study of the reference: batch, val acc, val loss.
const PART_B: [(usize, f64, f64); 6] = [
    (10, 57.1, 1.109),
    (20, 56.6, 1.117),
    (50, 54.9, 1.144),
    (100, 55.0, 1.153),
    (200, 52.3, 1.238),
    (500, 46.6, 1.421),
];

struct Mode {
    quick: bool,
    epochs: usize,
    batch_sizes: Vec<usize>,
    data_args: Vec<String>,
    data_note: String,
}

/// Runs (or reuses, by [`reuse::prepare`]'s rule) `pixclass` with `args`
/// into `dir`, and returns the run's record.
pub fn run_or_reuse(bin: &Path, dir: &Path, args: &[String]) -> Result<RunRecord> {
    let mut a = args.to_vec();
    match reuse::prepare(dir, args)? {
        Prior::Finished(r) => return Ok(*r),
        Prior::Interrupted => {
            a.push("--resume".into());
            a.push(dir.to_string_lossy().into_owned());
        }
        Prior::Fresh => {}
    }
    pixclass(bin, &a)?;
    RunRecord::read(dir).with_context(|| format!("reading the run record of {}", dir.display()))
}

/// The number of training horses `pixclass data info` finds in `data_dir`
/// (0 when it finds no CIFAR-10 there).
fn train_horses(bin: &Path, data_dir: &str) -> Result<u64> {
    let out = Command::new(bin)
        .args(["data", "info", "--json", "--data-dir", data_dir])
        .stderr(std::process::Stdio::null())
        .output()?;
    let doc: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(d) => d,
        Err(_) => return Ok(0),
    };
    Ok(doc["cifar10"]["splits"]["train"]["horses"]
        .as_u64()
        .unwrap_or(0))
}

fn pixclass(bin: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("pixclass {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub fn run(args: &ReproduceArgs) -> Result<()> {
    let device = args.device.clone();
    let features = match device.as_str() {
        "cuda" => Some("cuda"),
        "metal" => Some("metal"),
        _ => None,
    };
    let out = args.out.clone();
    let out = if out.is_absolute() {
        out
    } else {
        std::env::current_dir()?.join(out)
    };
    std::fs::create_dir_all(&out)?;
    let bin = build_pixclass(features)?;
    let t0 = Instant::now();

    // Data: --data-dir, $PIXCLASS_DATA or ./data when they hold CIFAR-10,
    // else the embedded sample (and the report says so).
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| std::env::var("PIXCLASS_DATA").ok())
        .unwrap_or_else(|| "data".into());
    let has_data = train_horses(&bin, &data_dir)? == 5000;
    let quick = args.quick || !has_data;
    let full = args.full;
    if full && !has_data {
        bail!("--full needs the full CIFAR-10 data: `cargo xtask fetch cifar10` or --data-dir");
    }
    let (data_args, data_note) = if has_data && !args.quick {
        (
            s(&["--data-dir", &data_dir]),
            format!("full CIFAR-10 data from `{data_dir}`"),
        )
    } else if has_data {
        (s(&["--data-dir", &data_dir, "--limit", "500"]), format!("QUICK run: the first 500/500 horses of `{data_dir}`, few epochs; not comparable to the reference"))
    } else {
        (s(&["--embedded"]), "EMBEDDED SAMPLE (500 train / 100 test horses shipped in the binary), few epochs: no data was found on disk. Full results need `cargo xtask fetch cifar10`".to_string())
    };
    let mode = if quick {
        Mode {
            quick,
            epochs: 8,
            batch_sizes: vec![20, 50, 100],
            data_args,
            data_note,
        }
    } else {
        Mode {
            quick,
            epochs: 25,
            batch_sizes: PART_B.iter().map(|b| b.0).collect(),
            data_args,
            data_note,
        }
    };
    println!("reproduce: {} -> {}", mode.data_note, out.display());

    let mut md = String::new();
    writeln!(md, "# pixclass reproduction report\n")?;
    writeln!(md, "> **Data:** {}\n", mode.data_note)?;
    // A published report names no folder of the machine that made it.
    let command: Vec<String> = std::env::args()
        .skip(2)
        .map(|a| {
            if Path::new(&a).is_absolute() {
                "DIR".to_string()
            } else {
                a
            }
        })
        .collect();
    writeln!(
        md,
        "- Command: `cargo xtask reproduce {}`",
        command.join(" ")
    )?;
    writeln!(md, "- Machine: {}; device: {device}", machine())?;
    writeln!(
        md,
        "- Mode: {} ({} epochs per run)\n",
        if mode.quick { "quick" } else { "full" },
        mode.epochs
    )?;

    // Part A: layer summaries and the three nets.
    writeln!(
        md,
        "## Part A: layer summaries (k 3, NF 32, NC 24, NIC 1, 32x32 input)\n"
    )?;
    for (name, display, ..) in PARTS_A {
        let table = pixclass(
            &bin,
            &s(&[
                "colourize",
                "summary",
                "--model",
                name,
                "--format",
                "markdown",
            ]),
        )?;
        writeln!(md, "### {display}\n\n{table}")?;
    }
    writeln!(
        md,
        "## Parts A and C: colourization, batch 100, final epoch\n"
    )?;
    writeln!(md, "| model | reference val loss | ours | reference val acc (%) | ours | distance to band (pp) | wall time (s) |\n|---|---|---:|---|---:|---:|---:|")?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut pictures = String::new();
    for (name, display, loss_band, acc_band, floor) in PARTS_A {
        let dir = out.join("colourize").join(name);
        let mut a = s(&[
            "--quiet",
            "colourize",
            "train",
            "--model",
            name,
            "--epochs",
            &mode.epochs.to_string(),
            "--device",
            &device,
            "--out",
        ]);
        a.push(dir.to_string_lossy().into_owned());
        a.extend(mode.data_args.clone());
        // A run left by an earlier (possibly interrupted) reproduction with
        // the same options is resumed; a finished one is reused as it is.
        let record = run_or_reuse(&bin, &dir, &a)?;
        let (loss, acc) = (
            record.final_value("val_loss")?,
            record.final_value("val_acc")?,
        );
        let secs = record.train_seconds();
        // Distance to the band (0 inside it); meaningless for quick runs.
        let diff = if mode.quick {
            "n/a (quick)".to_string()
        } else if acc < acc_band.0 {
            format!("{:+.1}", acc - acc_band.0)
        } else if acc > acc_band.1 {
            format!("{:+.1}", acc - acc_band.1)
        } else {
            "in band".to_string()
        };
        writeln!(
            md,
            "| {display} | {:.2}-{:.2} | {loss:.3} | {:.1}-{:.1} | {acc:.1} | {diff} | {secs:.0} |",
            loss_band.0, loss_band.1, acc_band.0, acc_band.1
        )?;
        if !mode.quick && acc < floor {
            failures.push(format!("{display}: val accuracy {acc:.1} % < {floor} %"));
        }
        let rel = |f: &str| {
            dir.join(f)
                .strip_prefix(&out)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        writeln!(
            pictures,
            "### {display}\n\n![curves]({})\n\n![samples]({})\n",
            rel("curves.png"),
            rel(&format!("samples_epoch_{:02}.png", mode.epochs))
        )?;
        results.push(json!({"model": display, "val_loss": loss, "val_acc": acc, "reference_loss": loss_band, "reference_acc": acc_band, "floor_acc": floor, "seconds": secs}));
    }
    writeln!(md, "\nReference bands: SPEC §A.5. Seed 0 with `--rng torch` (the default): the splits are shuffled by \
        NumPy's `npr.seed(0); npr.shuffle` and the initial weights are PyTorch's after `torch.manual_seed(0)`, as in \
        the reference program, so these runs start exactly where a PyTorch run with seed 0 starts \
        (`cargo xtask crosscheck` compares them epoch by epoch: docs/CROSSCHECK.md). \
        Rows: grey input / true colours / true palette colours / predicted colours by argmax (the study), annealed mean (T = 0.38) and balanced decoding (see below).\n\n{pictures}")?;

    // Part B: batch-size study. Its batch-100 run has exactly the settings
    // of Part A's ConvTransposeNet (deterministic), so that run is reused.
    let sweep_dir = out.join("sweep");
    let same_run = sweep_dir.join("batch_100");
    let mut a = s(&[
        "--quiet",
        "colourize",
        "sweep",
        "--model",
        "conv-transpose",
        "--epochs",
        &mode.epochs.to_string(),
        "--device",
        &device,
        "--out",
    ]);
    a.push(sweep_dir.to_string_lossy().into_owned());
    a.push("--batch-sizes".into());
    a.push(
        mode.batch_sizes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    a.extend(mode.data_args.clone());
    if !reuse::same_options(&sweep_dir, &a) {
        reuse::prepare(&sweep_dir, &a)?;
    }
    if mode.batch_sizes.contains(&100) && !same_run.exists() {
        copy_dir(&out.join("colourize").join("conv-transpose"), &same_run)?;
    }
    // The sweep resumes (or reuses) each batch size's run itself.
    pixclass(&bin, &a)?;
    writeln!(
        md,
        "## Part B: batch-size study (ConvTransposeNet, {} epochs)\n",
        mode.epochs
    )?;
    writeln!(md, "| batch | reference val acc (%) | ours | reference val loss | ours | wall time (s) |\n|---:|---:|---:|---:|---:|---:|")?;
    let mut sweep = Vec::new();
    for &bs in &mode.batch_sizes {
        let r = RunRecord::read(&sweep_dir.join(format!("batch_{bs:03}")))?;
        let (loss, acc, secs) = (
            r.final_value("val_loss")?,
            r.final_value("val_acc")?,
            r.train_seconds(),
        );
        let reference = PART_B.iter().find(|r| r.0 == bs);
        let (ra, rl) = reference
            .map(|r| (format!("{:.1}", r.1), format!("{:.3}", r.2)))
            .unwrap_or(("-".into(), "-".into()));
        writeln!(
            md,
            "| {bs} | {ra} | {acc:.1} | {rl} | {loss:.3} | {secs:.0} |"
        )?;
        sweep.push(json!({"batch_size": bs, "val_loss": loss, "val_acc": acc, "seconds": secs}));
    }
    if !mode.quick {
        let acc = |bs: usize| {
            sweep
                .iter()
                .find(|r| r["batch_size"] == bs)
                .and_then(|r| r["val_acc"].as_f64())
        };
        if let (Some(small), Some(large)) = (
            acc(10).into_iter().chain(acc(20)).reduce(f64::max),
            acc(500),
        ) {
            if small <= large {
                failures.push(format!("batch-size trend: accuracy at batch 10-20 ({small:.1}) is not above batch 500 ({large:.1})"));
            }
        }
    }
    writeln!(md, "\n![sweep](sweep/sweep.png)\n")?;
    // Colourization beyond the study (issue 22).
    let colour_plan = crate::colour_recipe::Plan {
        data_args: &mode.data_args,
        epochs: mode.quick.then_some(mode.epochs),
        device: &device,
        reference: PARTS_A
            .iter()
            .map(|(name, display, ..)| (*display, out.join("colourize").join(name)))
            .collect(),
    };
    let (colour_md, colour_json) = crate::colour_recipe::run(&bin, &out, &colour_plan)?;
    md.push_str(&colour_md);
    // Part D: segmentation.
    let plan = crate::part_d::plan(&data_dir, quick, &device);
    let (seg_md, seg_json, seg_failures) = crate::part_d::run(&bin, &out, &plan, full)?;
    md.push_str(&seg_md);
    failures.extend(seg_failures);
    let total = t0.elapsed().as_secs_f64();
    writeln!(
        md,
        "Wall time of this command: {total:.0} s (runs finished by an earlier invocation into the \
         same folder are reused; their own times are in the tables above)."
    )?;
    if !failures.is_empty() {
        writeln!(md, "\n**Outside the reference bands:**\n")?;
        for f in &failures {
            writeln!(md, "- {f}")?;
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    verify_report(&out, &md, &results, &sweep)?;
    let results_json = json!({"data": mode.data_note, "quick": mode.quick, "device": device, "machine": machine(), "colourization": results, "batch_size_study": sweep, "colour_recipe": colour_json, "segmentation": seg_json, "seconds": total, "failures": failures});
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results_json)?,
    )?;
    println!("report: {}", out.join("report.md").display());
    if args.publish {
        publish(&out, &md)?;
    }
    if full && !failures.is_empty() {
        bail!(
            "{} result(s) outside the reference bands: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
