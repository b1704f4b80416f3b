//! `cargo xtask crosscheck --python PY --run DIR [--model M] [--data-dir D] [--publish]`:
//! a pixclass colourization run next to the reference program in PyTorch
//! (`crates/pixclass-train/benches/torch_colour_reference.py`) with the same
//! seed, which under `--rng torch` means the same data order and the same
//! initial weights: the two runs' per-epoch losses and accuracies side by
//! side. Runs pixclass first when `DIR` holds no finished run. Writes
//! `DIR/crosscheck.md` and, with `--publish`, `docs/CROSSCHECK.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use pixclass_runs::RunRecord;

use crate::{build_pixclass, root};

/// `cargo xtask crosscheck`.
#[derive(clap::Args)]
pub struct CrosscheckArgs {
    /// A Python with torch (default: $PIXCLASS_TORCH_PYTHON).
    #[arg(long)]
    python: Option<String>,
    /// The pixclass run to compare (trained first when it holds no finished run).
    #[arg(long)]
    run: PathBuf,
    /// The net.
    #[arg(long, default_value = "pool-upsample")]
    model: String,
    /// Data directory (default: $PIXCLASS_DATA, else ../shared/data).
    #[arg(long)]
    data_dir: Option<String>,
    /// Write docs/CROSSCHECK.md.
    #[arg(long)]
    publish: bool,
}

/// One epoch: train loss, val loss, val accuracy (%), seconds.
type Row = [f64; 4];

/// Rows of a pixclass run, from its record.
fn pixclass_rows(dir: &std::path::Path) -> Result<Vec<Row>> {
    let r = RunRecord::read(dir)?;
    r.epochs
        .iter()
        .map(|e| {
            let v = |name: &str| {
                e.get(name).with_context(|| {
                    format!("epoch {} of {} has no {name}", e.epoch, dir.display())
                })
            };
            Ok([
                e.train_loss.context("no train loss")?,
                v("val_loss")?,
                v("val_acc")?,
                e.seconds,
            ])
        })
        .collect()
}

/// Rows printed by the PyTorch script: `seed S epoch E: train X val Y acc Z% (T s)`
/// (T cumulative, turned into per-epoch seconds).
fn torch_rows(stdout: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut last = 0.0;
    for line in stdout.lines().filter(|l| l.starts_with("seed ")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| {
            w.get(i)
                .and_then(|s| s.trim_matches(|c| c == '%' || c == '(').parse::<f64>().ok())
        };
        if let (Some(t), Some(v), Some(a), Some(s)) = (num(5), num(7), num(9), num(10)) {
            rows.push([t, v, a, s - last]);
            last = s;
        }
    }
    rows
}

pub fn run(args: &CrosscheckArgs) -> Result<()> {
    let Some(python) = args
        .python
        .clone()
        .or_else(|| std::env::var("PIXCLASS_TORCH_PYTHON").ok())
    else {
        bail!("crosscheck needs a Python with torch: --python PY or PIXCLASS_TORCH_PYTHON");
    };
    let run_dir = args.run.clone();
    let model = args.model.clone();
    let data = args
        .data_dir
        .clone()
        .or_else(|| std::env::var("PIXCLASS_DATA").ok())
        .unwrap_or_else(|| "../shared/data".into());
    let finished = pixclass_rows(&run_dir).is_ok_and(|r| r.len() == 25);
    if !finished {
        let bin = build_pixclass(None)?;
        let st = Command::new(&bin)
            .args([
                "--quiet",
                "colourize",
                "train",
                "--model",
                &model,
                "--data-dir",
                &data,
                "--out",
            ])
            .arg(&run_dir)
            .status()
            .context("running pixclass")?;
        if !st.success() {
            bail!("pixclass colourize train failed");
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json"))?)?;
    if config["rng"] != "torch" || config["model"]["kind"] != model.as_str() {
        bail!(
            "{} is not a `--rng torch` run of {model} (config: rng {}, model {})",
            run_dir.display(),
            config["rng"],
            config["model"]["kind"]
        );
    }
    let seed = config["seed"].as_u64().context("seed in config.json")?;
    let epochs = config["epochs"].as_u64().context("epochs in config.json")?;
    let ours = pixclass_rows(&run_dir)?;
    println!("running the PyTorch reference ({model}, seed {seed}, {epochs} epochs)...");
    let out = Command::new(&python)
        .current_dir(root())
        .arg("crates/pixclass-train/benches/torch_colour_reference.py")
        .args([
            "--data-dir",
            &data,
            "--model",
            &model,
            "--seeds",
            &seed.to_string(),
        ])
        .args(["--epochs", &epochs.to_string(), "--threads"])
        .arg(
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
        )
        .output()
        .context("running the PyTorch reference")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let theirs = torch_rows(&stdout);
    if theirs.len() != ours.len() {
        bail!(
            "{} pixclass epochs but {} PyTorch epochs",
            ours.len(),
            theirs.len()
        );
    }
    let mut md = String::new();
    writeln!(
        md,
        "<!-- Generated by `cargo xtask crosscheck --python PY --run DIR --model {model} --publish`; do not edit by hand. -->\n\n\
         # pixclass against the reference program in PyTorch\n\n\
         {model}, seed {seed}, `--rng torch`: both runs shuffle the CIFAR-10 horses with NumPy's \
         `npr.seed({seed}); npr.shuffle` and start from PyTorch's initial weights after \
         `torch.manual_seed({seed})` (bit-identical, tested), then train 25 epochs of Adam at batch 100 \
         on the same files. PyTorch: `crates/pixclass-train/benches/torch_colour_reference.py`. \
         They differ only in floating-point rounding, which grows over the run.\n\n\
         Machine: {}.\n\n\
         | epoch | train loss pixclass | PyTorch | val loss pixclass | PyTorch | val acc (%) pixclass | PyTorch |\n\
         |---:|---:|---:|---:|---:|---:|---:|",
        crate::report::machine()
    )?;
    for (e, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        writeln!(
            md,
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2} | {:.2} |",
            e + 1,
            a[0],
            b[0],
            a[1],
            b[1],
            a[2],
            b[2]
        )?;
    }
    let max_dt = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a[0] - b[0]).abs())
        .fold(0.0, f64::max);
    let secs = |r: &[Row]| r.iter().map(|r| r[3]).sum::<f64>();
    writeln!(
        md,
        "\nLargest train-loss difference over the epochs: {max_dt:.4}. Wall time of the 25 epochs (training and \
         validation): pixclass {:.0} s, PyTorch {:.0} s ({} threads each).",
        secs(&ours),
        secs(&theirs),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    std::fs::write(run_dir.join("crosscheck.md"), &md)?;
    println!("{md}");
    if args.publish {
        std::fs::write(root().join("docs/CROSSCHECK.md"), &md)?;
        println!("published to docs/CROSSCHECK.md");
    }
    Ok(())
}
