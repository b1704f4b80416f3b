//! `cargo xtask bench [--out DIR] [--python PY] [--rounds R] [--device cpu|cuda]
//! [--prebuilt DIR] [--publish]`: pixclass and PyTorch timed side by side in
//! one command on the same machine and thread count: the colourization nets'
//! training step and inference (batch 100), the DeepLab head fine-tuning step
//! on cached features, and both DeepLab forwards at 224x224. Writes
//! `DIR/bench.json` and `DIR/PERFORMANCE.md`; `--publish` copies the latter to
//! `docs/PERFORMANCE.md` (CPU) or `docs/PERFORMANCE-CUDA.md` (GPU).
//!
//! `--device cuda` builds the examples with `--features cuda` and times both
//! sides on the GPU. `--prebuilt DIR` takes the example binaries from `DIR`
//! instead of building them, for a GPU machine without a Rust toolchain.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::root;

/// `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Output folder (bench.json, PERFORMANCE.md).
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// A Python with torch for the PyTorch side (default: $PIXCLASS_TORCH_PYTHON).
    #[arg(long)]
    python: Option<String>,
    /// Rounds, alternating the two sides.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Device.
    #[arg(long, value_parser = ["cpu", "cuda"], default_value = "cpu")]
    device: String,
    /// Take the example binaries from this folder instead of building them.
    #[arg(long)]
    prebuilt: Option<PathBuf>,
    /// Data directory (default: $PIXCLASS_DATA, else ../shared/data).
    #[arg(long)]
    data_dir: Option<String>,
    /// Copy the report to docs/PERFORMANCE.md (CPU) or docs/PERFORMANCE-CUDA.md (GPU).
    #[arg(long)]
    publish: bool,
}

/// Lines `PREFIX name<TAB>value` of a benchmark's output.
fn tagged(stdout: &str, prefix: &str) -> BTreeMap<String, f64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// What one benchmark process reported.
struct Report {
    /// `BENCH` rows: workload -> ms.
    rows: BTreeMap<String, f64>,
    /// `FLOPS` rows: workload -> floating-point operations per run.
    flops: BTreeMap<String, f64>,
    /// Peak resident memory in MB.
    peak: Option<f64>,
}

/// Runs `cmd` under `/usr/bin/time` when present.
fn bench_rows(mut cmd: Command, what: &str) -> Result<Report> {
    let timed = Path::new("/usr/bin/time").is_file();
    let out = if timed {
        let prog = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut t = Command::new("/usr/bin/time");
        t.arg("-f").arg("PEAK_KB %M").arg(prog).args(args);
        if let Some(d) = cmd.get_current_dir() {
            t.current_dir(d);
        }
        t.output()
    } else {
        cmd.output()
    }
    .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed:\n{stderr}");
    }
    let (rows, flops) = (tagged(&stdout, "BENCH "), tagged(&stdout, "FLOPS "));
    let peak = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("PEAK_KB "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next_back()
        .map(|kb| kb / 1024.0);
    Ok(Report { rows, flops, peak })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let out = args.out.clone();
    std::fs::create_dir_all(&out)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = args.device.clone();
    let gpu = device == "cuda";
    let examples = match &args.prebuilt {
        Some(dir) => dir.clone(),
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // Build first, so compile time never lands in a measurement.
            for (pkg, ex) in [
                ("pixclass-train", "step_timing"),
                ("pixclass-models", "seg_forward_timing"),
            ] {
                let mut c = Command::new(&cargo);
                c.current_dir(root()).args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    pkg,
                    "--example",
                    ex,
                ]);
                if gpu {
                    c.args(["--features", "cuda"]);
                }
                if !c.status()?.success() {
                    bail!("building example {ex} failed");
                }
            }
            crate::target_dir().join("release/examples")
        }
    };
    let ex = |name: &str| examples.join(name);
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var("PIXCLASS_TORCH_PYTHON").ok());
    let data = args
        .data_dir
        .clone()
        .or_else(|| std::env::var("PIXCLASS_DATA").ok())
        .unwrap_or_else(|| "../shared/data".into());
    let scripts = [
        ("crates/pixclass-train/benches/torch_colour_step.py", vec![]),
        (
            "crates/pixclass-models/benches/torch_seg_forward.py",
            vec!["--data".to_string(), data],
        ),
    ];
    // Rounds alternate pixclass and PyTorch, so a slow spell of a shared
    // machine hits both sides; each row keeps every round's median.
    let rounds = args.rounds.max(1);
    let mut ours: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut torch: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut peaks = BTreeMap::new();
    let mut flops = BTreeMap::new();
    for round in 1..=rounds {
        println!("round {round}/{rounds}");
        for name in ["step_timing", "seg_forward_timing"] {
            let Report {
                rows,
                flops: f,
                peak,
            } = bench_rows(
                {
                    let mut c = Command::new(ex(name));
                    c.args(["--device", &device]);
                    c
                },
                name,
            )?;
            if let Some(p) = peak {
                peaks.insert(format!("pixclass {name}"), p);
            }
            flops.extend(f);
            for (k, v) in rows {
                ours.entry(k).or_default().push(v);
            }
        }
        let Some(py) = &python else { continue };
        for (script, extra) in &scripts {
            let mut c = Command::new(py);
            c.current_dir(root())
                .arg(script)
                .args(["--threads", &threads.to_string()])
                .args(["--device", &device])
                .args(extra);
            let Report { rows, peak, .. } = bench_rows(c, script)?;
            if let Some(p) = peak {
                peaks.insert(format!("PyTorch {script}"), p);
            }
            for (k, v) in rows {
                torch.entry(k).or_default().push(v);
            }
        }
    }
    if python.is_none() {
        println!("no PyTorch (pass --python PY or set PIXCLASS_TORCH_PYTHON): pixclass times only");
    }
    let mut machine = crate::report::machine();
    if gpu {
        machine = format!("{}; host {machine}", gpu_name());
    }
    let mut md = String::new();
    writeln!(
        md,
        "| workload | pixclass (ms) | PyTorch (ms) | pixclass / PyTorch | per round | pixclass GFLOP/s |\n|---|---:|---:|---:|---|---:|"
    )?;
    let mut rows = Vec::new();
    for (k, v) in &ours {
        let t = torch.get(k);
        // The ratio of each round's pair, then their median: paired runs
        // cancel most of the machine's drift.
        let per_round: Vec<f64> = t
            .map(|t| v.iter().zip(t).map(|(a, b)| a / b).collect())
            .unwrap_or_default();
        let ratio = (!per_round.is_empty()).then(|| median(&per_round));
        let gflops = flops.get(k).map(|f| f / (median(v) / 1e3) / 1e9);
        writeln!(
            md,
            "| {k} | {:.1} | {} | {} | {} | {} |",
            median(v),
            t.map_or("-".into(), |t| format!("{:.1}", median(t))),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            gflops.map_or("-".into(), |g| format!("{g:.1}"))
        )?;
        rows.push(json!({"workload": k, "pixclass_ms": median(v), "pytorch_ms": t.map(|t| median(t)),
            "ratio": ratio, "pixclass_rounds_ms": v, "pytorch_rounds_ms": t, "ratio_rounds": per_round,
            "flops": flops.get(k), "pixclass_gflops": gflops}));
    }
    if let Some(peak) = peak_gflops(threads).filter(|_| !gpu) {
        writeln!(
            md,
            "\nPeak f32 arithmetic of this machine: {peak:.0} GFLOP/s ({threads} cores x {:.2} GHz x 32 FLOP per \
             cycle: two 8-wide FMA units, AVX2). GFLOP/s counts the convolutions' multiply-adds from the layer \
             summary (training: 3x the forward).",
            peak / threads as f64 / 32.0
        )?;
    }
    writeln!(
        md,
        "\nPeak resident memory per process (MB): {}",
        peaks
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    let report = json!({"machine": machine, "device": device, "threads": threads, "rounds": rounds,
        "rows": rows, "peak_mb": peaks});
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{md}");
    let (title, command, page) = if gpu {
        (
            "Performance on a GPU",
            "cargo xtask bench --device cuda --python PY --publish",
            "PERFORMANCE-CUDA.md",
        )
    } else {
        (
            "Performance",
            "cargo xtask bench --python PY --publish",
            "PERFORMANCE.md",
        )
    };
    let timing = if gpu {
        "both sides on the GPU, every timed run ended by a device synchronisation; memory is host memory"
    } else {
        "this shared machine's speed drifts by ±20 % between minutes"
    };
    {
        let text = format!(
            "<!-- Generated by `cargo xtask bench --publish`; do not edit by hand. -->\n\n# {title}\n\n\
             Command: `{command}` (pixclass and PyTorch in the same command, \
             {threads} threads each; each side's time is the median of 10 runs after warm-ups; {rounds} rounds \
             alternate the two sides, the ratio is the median of the rounds' ratios, all of which are listed; \
             {timing}).\n\nMachine: {machine}.\n\n{md}\n\
             Workloads: the three colourization nets at batch 100 (1x32x32 input, NF 32, 24 classes): training \
             step = forward + cross-entropy + backward + Adam, inference = eval forward + argmax \
             (`crates/pixclass-train/examples/step_timing.rs` / `benches/torch_colour_step.py`); DeepLab head \
             fine-tuning step on cached 256x28x28 features, batch 128, resized to 224x224; eval forward of both \
             DeepLab models at 1x3x224x224 (`crates/pixclass-models/examples/seg_forward_timing.rs` / \
             `benches/torch_seg_forward.py`).\n"
        );
        std::fs::write(out.join(page), &text)?;
        if args.publish {
            std::fs::write(root().join("docs").join(page), text)?;
            println!("published to docs/{page}");
        }
    }
    Ok(())
}

/// The GPU's name, driver and memory as `nvidia-smi` reports them.
fn gpu_name() -> String {
    Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            let f: Vec<&str> = s.lines().next().unwrap_or("").split(", ").collect();
            match f.as_slice() {
                [name, driver, mem] => format!("{name} (driver {driver}, {mem})"),
                _ => s.trim().to_string(),
            }
        })
        .unwrap_or_else(|| "an NVIDIA GPU (nvidia-smi not found)".into())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Cores x clock (from /proc/cpuinfo) x 32 f32 FLOP per cycle (two AVX2 FMA
/// units of 8 lanes), when the clock is known.
fn peak_gflops(threads: usize) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(threads as f64 * mhz / 1e3 * 32.0)
}
