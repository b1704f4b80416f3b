//! `cargo xtask <task>`: project automation, an ordinary crate with few
//! dependencies. It drives the `pixclass` binary (built in release mode) and
//! writes reports; it never re-implements what the library crates do.
//!
//! Tasks:
//! - `reproduce [--quick|--full] [--device cpu|cuda|metal] [--out DIR] [--publish]`:
//!   the whole study (Parts A–D) with a report next to the reference numbers.
//! - `fetch [--all|cifar10|flowers17|weights] [--data-dir D]`: official downloads, verified.
//! - `bench [--python PY] [--out DIR] [--rounds R] [--device cpu|cuda] [--prebuilt DIR] [--publish]`:
//!   pixclass vs PyTorch timings.
//! - `golden [--python PY]`: regenerate the PyTorch golden fixtures.
//! - `crosscheck --python PY --run DIR [--model M] [--publish]`: a colourization
//!   run epoch by epoch next to the reference program in PyTorch (same seed).
//!
//! `PIXCLASS_BIN=path` makes the tasks use that `pixclass` binary instead of
//! building one (a GPU machine without a Rust toolchain, say).

mod bench;
mod crosscheck;
mod part_d;
mod reproduce;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print_help();
        return Ok(());
    };
    match task.as_str() {
        "reproduce" => reproduce::run(rest),
        "bench" => bench::run(rest),
        "crosscheck" => crosscheck::run(rest),
        "fetch" => fetch(rest),
        "golden" => golden(rest),
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => bail!("unknown task {other:?}; run `cargo xtask help`"),
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         reproduce [--quick|--full] [--device cpu|cuda|metal] [--out DIR] [--data-dir D] [--publish]\n\
         \x20   run the whole study (Parts A-D) and write DIR/report.md + DIR/results.json\n\
         fetch [--all|cifar10|flowers17|weights] [--data-dir D]\n\
         \x20   download and verify the official data and pretrained weights\n\
         bench [--python PY] [--out DIR] [--rounds R] [--device cpu|cuda] [--prebuilt DIR] [--publish]\n\
         \x20   time pixclass and PyTorch side by side; --publish writes docs/PERFORMANCE.md\n\
         golden [--python PY]           regenerate the PyTorch golden fixtures (needs torch)\n\
         crosscheck --python PY --run DIR [--model M] [--data-dir D] [--publish]\n\
         \x20   a colourization run next to the reference program in PyTorch, same seed"
    );
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Value of `--name VALUE` in `args`.
pub fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// True when `--name` is in `args`.
pub fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
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
fn fetch(args: &[String]) -> Result<()> {
    let what: Vec<&str> = match args.first().map(String::as_str) {
        None | Some("--all") => vec!["cifar10", "flowers17", "weights"],
        Some(w) => vec![w],
    };
    let bin = build_pixclass(None)?;
    let mut missing = Vec::new();
    for w in what {
        let mut cmd = Command::new(&bin);
        match w {
            "cifar10" | "flowers17" => {
                cmd.args(["data", "fetch", w]);
                if let Some(d) = opt(args, "--data-dir") {
                    cmd.args(["--data-dir", &d]);
                }
            }
            "weights" => {
                cmd.args(["weights", "fetch", "deeplabv3-resnet101-coco"]);
            }
            other => bail!("unknown fetch target {other:?}: --all, cifar10, flowers17 or weights"),
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

fn golden(args: &[String]) -> Result<()> {
    let py = opt(args, "--python")
        .or_else(|| std::env::var("PIXCLASS_TORCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    for script in [
        "crates/pixclass-models/tests/golden/make_colour_golden.py",
        "crates/pixclass-train/tests/golden/make_adam_golden.py",
        "crates/pixclass-models/tests/golden/make_torch_init.py",
        "crates/pixclass-data/tests/fixtures/make_numpy_shuffle.py",
    ] {
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
