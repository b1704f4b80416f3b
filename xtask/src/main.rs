//! `cargo xtask <task>`: project automation, an ordinary crate with few
//! dependencies (clap, serde_json and pixclass-runs, no tensor library). It drives the `pixclass` binary (built in release mode) and
//! writes reports; it never re-implements what the library crates do.
//!
//! Tasks (`cargo xtask help` and `cargo xtask TASK --help`; unknown options
//! are errors):
//! - `reproduce`: the whole study (Parts A–D) with a report next to the
//!   reference numbers (Parts A–C in `reproduce.rs`, Part D in `part_d.rs`);
//! - `fetch`: official downloads, verified;
//! - `bench`: pixclass vs PyTorch timings;
//! - `golden`: regenerate the PyTorch golden fixtures;
//! - `crosscheck`: a colourization run epoch by epoch next to the reference
//!   program in PyTorch (same seed).
//!
//! Results are read from the runs' records (`run.json`, through
//! `pixclass-runs`), never from the binary's printed text; finished runs of an
//! interrupted reproduction are reused by one rule (`reuse.rs`).
//!
//! `PIXCLASS_BIN=path` makes the tasks use that `pixclass` binary instead of
//! building one (a GPU machine without a Rust toolchain, say).

mod bench;
mod colour_recipe;
mod crosscheck;
mod part_d;
mod report;
mod reproduce;
mod resnet_timing;
mod reuse;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

/// Project automation for pixclass.
#[derive(Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole study (Parts A-D) and write DIR/report.md + DIR/results.json.
    Reproduce(reproduce::ReproduceArgs),
    /// Download and verify the official data and pretrained weights.
    Fetch(FetchArgs),
    /// Time pixclass and PyTorch side by side; --publish writes docs/PERFORMANCE.md.
    Bench(bench::BenchArgs),
    /// Regenerate the PyTorch golden fixtures (needs torch).
    Golden(GoldenArgs),
    /// A colourization run next to the reference program in PyTorch, same seed.
    Crosscheck(crosscheck::CrosscheckArgs),
}

/// `cargo xtask fetch`.
#[derive(Args)]
struct FetchArgs {
    /// What to fetch (default: all of it).
    #[arg(value_parser = ["all", "cifar10", "flowers17", "weights"], default_value = "all")]
    what: String,
    /// Everything (the default).
    #[arg(long)]
    all: bool,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<String>,
}

/// `cargo xtask golden`.
#[derive(Args)]
struct GoldenArgs {
    /// A Python with torch and safetensors (default: $PIXCLASS_TORCH_PYTHON, else python3).
    #[arg(long)]
    python: Option<String>,
}

/// The golden-fixture scripts `cargo xtask golden` runs (each from the
/// repository root; the tidy test checks this list against the scripts on
/// disk and DEVELOPERS.md).
pub const GOLDEN_SCRIPTS: [&str; 5] = [
    "crates/pixclass-ops/tests/golden/make_ops_golden.py",
    "crates/pixclass-models/tests/golden/make_colour_golden.py",
    "crates/pixclass-train/tests/golden/make_adam_golden.py",
    "crates/pixclass-models/tests/golden/make_torch_init.py",
    "crates/pixclass-data/tests/fixtures/make_numpy_shuffle.py",
];

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Reproduce(a) => reproduce::run(&a),
        Task::Bench(a) => bench::run(&a),
        Task::Crosscheck(a) => crosscheck::run(&a),
        Task::Fetch(a) => fetch(&a),
        Task::Golden(a) => golden(&a),
    }
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the `pixclass` binary in release mode (with a GPU feature when
/// asked) and returns its path.
pub fn build_pixclass(features: Option<&str>) -> Result<PathBuf> {
    // A prebuilt binary (a GPU machine without a Rust toolchain, say).
    if let Ok(bin) = std::env::var("PIXCLASS_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("PIXCLASS_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root())
        .args(["build", "--release", "--quiet", "-p", "pixclass-cli"]);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of pixclass failed");
    }
    Ok(target_dir().join("release/pixclass"))
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` or `target/` of the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"))
}

/// `cargo xtask fetch [--all|cifar10|flowers17|weights]`: everything the
/// full reproduction needs, through the `pixclass` binary (verified,
/// resumable); offline, each failure says what is missing and where to put it.
fn fetch(args: &FetchArgs) -> Result<()> {
    let what: Vec<&str> = match args.what.as_str() {
        "all" => vec!["cifar10", "flowers17", "weights"],
        w => vec![w],
    };
    let bin = build_pixclass(None)?;
    let mut missing = Vec::new();
    for w in what {
        let mut cmd = Command::new(&bin);
        match w {
            "cifar10" | "flowers17" => {
                cmd.args(["data", "fetch", w]);
                if let Some(d) = &args.data_dir {
                    cmd.args(["--data-dir", d]);
                }
            }
            _ => {
                cmd.args(["weights", "fetch", "deeplabv3-resnet101-coco"]);
            }
        }
        if !cmd.status()?.success() {
            missing.push(w);
        }
    }
    if !missing.is_empty() {
        bail!(
            "could not fetch: {} (see above for what to download and where to place it)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn golden(args: &GoldenArgs) -> Result<()> {
    let py = args
        .python
        .clone()
        .or_else(|| std::env::var("PIXCLASS_TORCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    for script in GOLDEN_SCRIPTS {
        println!("{py} {script}");
        if !Command::new(&py)
            .current_dir(root())
            .arg(script)
            .status()?
            .success()
        {
            bail!("{script} failed: it needs torch and safetensors (see DEVELOPERS.md)");
        }
    }
    Ok(())
}
