//! `cargo xtask bench [--out DIR] [--python PY] [--rounds R] [--epochs E]
//! [--only SECTION] [--device cpu|cuda] [--prebuilt DIR] [--publish]`:
//! pixclass and PyTorch timed side by side in one command on the same machine
//! and thread count, the user's real jobs first:
//! - **colourization runs**: `pixclass colourize train` against the study's
//!   program in PyTorch (`benches/torch_colour_reference.py`: its own model
//!   definitions and loop), E epochs of each net on the same files; epoch
//!   (train + validation), data preparation and the whole process in their
//!   own rows;
//! - **DeepLab forwards**: MobileNetV2 at 257 and 224, ResNet-101 at 224 and
//!   520, batch 1 and 8;
//! - **Part D feature extraction**: 64 Oxford-17 images, decode + resize +
//!   forward, per model;
//! - **micro benchmarks**: the colourization nets' training step and
//!   inference (batch 100) and the DeepLab head step on cached features.
//!
//! Rounds alternate the two sides (and which goes first); a row's ratio is
//! the median of its rounds' ratios. Every process reports its thread count
//! (`THREADS n`, or `threads` in a run record) and the bench fails unless it
//! is the count asked for. Peak resident memory of both sides comes from
//! `/usr/bin/time`. Writes `DIR/bench.json` and `DIR/PERFORMANCE.md`;
//! `--publish` copies the latter to `docs/PERFORMANCE.md` (CPU) or
//! `docs/PERFORMANCE-CUDA.md` (GPU).
//!
//! `--device cuda` builds with `--features cuda` and times both sides on the
//! GPU. `--prebuilt DIR` takes the example binaries from `DIR` (and
//! `PIXCLASS_BIN` the `pixclass` binary) instead of building them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::root;

/// `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Output folder (bench.json, PERFORMANCE.md, the colourization runs).
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// A Python with torch for the PyTorch side (default: $PIXCLASS_TORCH_PYTHON).
    #[arg(long)]
    python: Option<String>,
    /// Rounds, alternating the two sides.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Epochs of each colourization run.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Threads of both sides (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Only these sections (repeatable; default: all).
    #[arg(long, value_enum)]
    only: Vec<Section>,
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

/// A part of the benchmark, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    /// Colourization runs of E epochs, each net.
    Colour,
    /// DeepLab eval forwards.
    Forward,
    /// Part D feature extraction over 64 images.
    Features,
    /// Training steps, inference and the head step.
    Micro,
    /// The per-op time of one UNet training step on both sides (run once).
    Profile,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Section::Colour => "colour",
            Section::Forward => "forward",
            Section::Features => "features",
            Section::Micro => "micro",
            Section::Profile => "profile",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Colour => "Colourization runs (the user's job: `pixclass colourize train` vs the study's program)",
            Section::Forward => "DeepLab eval forwards",
            Section::Features => "Part D feature extraction (decode + resize + forward, 64 Oxford-17 images)",
            Section::Micro => "Micro benchmarks (one step, synthetic batch)",
            Section::Profile => "Where a UNet training step's time goes (ms per step)",
        }
    }
}

/// Which side a process belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Pixclass,
    Torch,
}

/// What one benchmark process reported.
struct Report {
    /// Rows: workload -> ms.
    rows: BTreeMap<String, f64>,
    /// `FLOPS` rows: workload -> floating-point operations per run.
    flops: BTreeMap<String, f64>,
    /// Peak resident memory in MB.
    peak: Option<f64>,
    /// `PEAK_GFLOPS`: the machine's measured f32 multiply-add throughput.
    flop_ceiling: Option<f64>,
    /// `OP` rows of a profile: op -> ms per step.
    ops: BTreeMap<String, f64>,
}

/// One process of one side: how to start it and how to read what it did.
struct Job {
    section: Section,
    /// Names the pair in the memory table.
    name: String,
    side: Side,
    cmd: Command,
    /// A `pixclass colourize train` run: rows come from its run record.
    run_dir: Option<PathBuf>,
    /// Row names of this process (a torch script's) renamed to the shared ones.
    rename: Vec<(String, String)>,
}

/// The two processes of one workload: pixclass's and PyTorch's, named
/// `name`; `run_dir` is pixclass's run record (a colourization run), `rename`
/// maps the PyTorch rows to the shared names.
fn pair(
    section: Section,
    name: &str,
    (ours, run_dir): (Command, Option<PathBuf>),
    (theirs, rename): (Command, Vec<(String, String)>),
) -> (Job, Option<Job>) {
    let job = |side, cmd, run_dir, rename| Job {
        section,
        name: name.to_string(),
        side,
        cmd,
        run_dir,
        rename,
    };
    (
        job(Side::Pixclass, ours, run_dir, vec![]),
        Some(job(Side::Torch, theirs, None, rename)),
    )
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

/// The `THREADS n` line of a benchmark's output.
fn threads_line(stdout: &str) -> Option<usize> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("THREADS "))
        .find_map(|v| v.trim().parse().ok())
}

/// Runs `job` under `/usr/bin/time` (when present), checks its thread count
/// and reads its rows.
fn run_job(job: Job, threads: usize) -> Result<Report> {
    let section = job.section;
    let Job {
        name,
        side,
        mut cmd,
        run_dir,
        rename,
        ..
    } = job;
    let what = format!(
        "{} {name}",
        if side == Side::Pixclass {
            "pixclass"
        } else {
            "PyTorch"
        }
    );
    let timed = Path::new("/usr/bin/time").is_file();
    let t0 = Instant::now();
    let out = if timed {
        let mut t = Command::new("/usr/bin/time");
        t.arg("-f")
            .arg("PEAK_KB %M")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        if let Some(d) = cmd.get_current_dir() {
            t.current_dir(d);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => t.env(k, v),
                None => t.env_remove(k),
            };
        }
        t.output()
    } else {
        cmd.output()
    }
    .with_context(|| format!("running {what}"))?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed:\n{stderr}");
    }
    let peak = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("PEAK_KB "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next_back()
        .map(|kb| kb / 1024.0);
    let flop_ceiling = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PEAK_GFLOPS "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next_back();
    let (mut rows, flops) = (tagged(&stdout, "BENCH "), tagged(&stdout, "FLOPS "));
    let ops = tagged(&stdout, "OP ");
    if section == Section::Profile {
        // A profiled step is slower than a timed one: only its breakdown counts.
        rows.clear();
    }
    let seen = match &run_dir {
        Some(dir) => {
            let path = dir.join("run.json");
            let rec: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )?;
            let secs: Vec<f64> = rec["epochs"]
                .as_array()
                .context("epochs in run.json")?
                .iter()
                .filter_map(|e| e["seconds"].as_f64())
                .collect();
            rows.insert(format!("{name} epoch (train + val)"), median(&secs) * 1e3);
            rows.insert(
                format!("{name} data preparation"),
                rec["data_seconds"].as_f64().context("data_seconds")? * 1e3,
            );
            rec["threads"].as_u64().map(|t| t as usize)
        }
        None => threads_line(&stdout),
    };
    match seen {
        Some(t) if t == threads => {}
        Some(t) => bail!("{what} ran on {t} threads, not the {threads} asked for"),
        None => bail!("{what} did not report its thread count"),
    }
    for (from, to) in rename {
        if let Some(v) = rows.remove(&from) {
            rows.insert(to, v);
        }
    }
    if name.ends_with(" run") {
        rows.insert(format!("{name} whole process"), wall_ms);
    }
    Ok(Report {
        rows,
        flops,
        peak,
        flop_ceiling,
        ops,
    })
}

/// A row's times on both sides, every round.
#[derive(Default)]
struct Row {
    section: Option<Section>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let out = args.out.clone();
    std::fs::create_dir_all(&out)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let device = args.device.clone();
    let gpu = device == "cuda";
    let sections: Vec<Section> = if args.only.is_empty() {
        vec![
            Section::Colour,
            Section::Forward,
            Section::Features,
            Section::Micro,
            Section::Profile,
        ]
    } else {
        let mut s = args.only.clone();
        s.sort();
        s.dedup();
        s
    };
    let examples = match &args.prebuilt {
        Some(dir) => dir.clone(),
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // Build first, so compile time never lands in a measurement.
            for (pkg, ex) in [
                ("pixclass-train", "step_timing"),
                ("pixclass-train", "feature_timing"),
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
    let pixclass = crate::build_pixclass(gpu.then_some("cuda"))?;
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var("PIXCLASS_TORCH_PYTHON").ok());
    let data = args
        .data_dir
        .clone()
        .or_else(|| std::env::var("PIXCLASS_DATA").ok())
        .unwrap_or_else(|| "../shared/data".into());
    let data_abs =
        std::fs::canonicalize(&data).with_context(|| format!("the data directory {data}"))?;
    let t = threads.to_string();
    let ours_cmd = |prog: &Path| {
        let mut c = Command::new(prog);
        c.current_dir(root()).env("RAYON_NUM_THREADS", &t);
        c
    };
    let torch_cmd = |script: &str| {
        let mut c = Command::new(python.as_deref().unwrap_or("python3"));
        c.current_dir(root())
            .env("OMP_NUM_THREADS", &t)
            .env("MKL_NUM_THREADS", &t)
            .arg(script)
            .args(["--threads", &t]);
        c
    };
    let epochs = args.epochs.max(1).to_string();
    // The (pixclass, PyTorch) pairs of one round.
    let pairs = |round: usize| -> Vec<(Job, Option<Job>)> {
        let mut v = Vec::new();
        for &section in &sections {
            match section {
                Section::Colour => {
                    for net in ["pool-upsample", "conv-transpose", "unet"] {
                        let name = format!("{net} run");
                        let dir = out.join("runs").join(format!("{net}-round{round}"));
                        let mut c = ours_cmd(&pixclass);
                        c.args([
                            "colourize",
                            "train",
                            "--quiet",
                            "--overwrite",
                            "--model",
                            net,
                        ])
                        .args(["--epochs", &epochs, "--device", &device])
                        .arg("--data-dir")
                        .arg(&data_abs)
                        .arg("--out")
                        .arg(&dir);
                        let mut tc =
                            torch_cmd("crates/pixclass-train/benches/torch_colour_reference.py");
                        tc.args(["--model", net, "--epochs", &epochs])
                            .arg("--data-dir")
                            .arg(&data_abs);
                        let rename = vec![
                            (
                                format!("{net} epoch (train + val)"),
                                format!("{name} epoch (train + val)"),
                            ),
                            (
                                format!("{net} data preparation"),
                                format!("{name} data preparation"),
                            ),
                        ];
                        v.push(pair(section, &name, (c, Some(dir)), (tc, rename)));
                    }
                }
                Section::Forward => {
                    let mut c = ours_cmd(&examples.join("seg_forward_timing"));
                    c.args(["--device", &device, "--only", "forward"]);
                    let mut tc = torch_cmd("crates/pixclass-models/benches/torch_seg_forward.py");
                    tc.args(["--device", &device, "--only", "forward", "--data"])
                        .arg(&data_abs);
                    let name = "DeepLab forwards".to_string();
                    v.push(pair(section, &name, (c, None), (tc, vec![])));
                }
                Section::Features if !gpu => {
                    let mut c = ours_cmd(&examples.join("feature_timing"));
                    c.arg("--data").arg(&data_abs);
                    let mut tc = torch_cmd("crates/pixclass-train/benches/torch_seg_features.py");
                    tc.arg("--data").arg(&data_abs);
                    let name = "feature extraction".to_string();
                    v.push(pair(section, &name, (c, None), (tc, vec![])));
                }
                Section::Features => {}
                Section::Micro => {
                    let mut c = ours_cmd(&examples.join("step_timing"));
                    c.args(["--device", &device]);
                    let mut tc = torch_cmd("crates/pixclass-train/benches/torch_colour_step.py");
                    tc.args(["--device", &device]);
                    let name = "colourization steps".to_string();
                    v.push(pair(section, &name, (c, None), (tc, vec![])));
                    let mut c = ours_cmd(&examples.join("seg_forward_timing"));
                    c.args([
                        "--device",
                        &device,
                        "--only",
                        "deeplab head fine-tuning step",
                    ]);
                    let mut tc = torch_cmd("crates/pixclass-models/benches/torch_seg_forward.py");
                    tc.args([
                        "--device",
                        &device,
                        "--only",
                        "deeplab head fine-tuning step",
                        "--data",
                    ])
                    .arg(&data_abs);
                    let name = "head step".to_string();
                    v.push(pair(section, &name, (c, None), (tc, vec![])));
                }
                // A breakdown, not a ratio: once.
                Section::Profile if round == 1 && !gpu => {
                    let mut c = ours_cmd(&examples.join("step_timing"));
                    c.args(["--model", "unet", "--profile"]);
                    let tc = torch_cmd("crates/pixclass-train/benches/torch_unet_profile.py");
                    let name = "UNet step profile".to_string();
                    v.push(pair(section, &name, (c, None), (tc, vec![])));
                }
                Section::Profile => {}
            }
        }
        if python.is_none() {
            for p in &mut v {
                p.1 = None;
            }
        }
        v
    };
    // Rounds alternate pixclass and PyTorch (odd rounds pixclass first), so
    // a slow spell of a shared machine hits both sides.
    let rounds = args.rounds.max(1);
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut peaks: BTreeMap<(Section, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    let mut flops = BTreeMap::new();
    // The highest `PEAK_GFLOPS` any run measured.
    let mut flop_ceiling: Option<f64> = None;
    let mut profile: [BTreeMap<String, f64>; 2] = Default::default();
    for round in 1..=rounds {
        for (ours, theirs) in pairs(round) {
            println!("round {round}/{rounds}: {}", ours.name);
            let (section, name) = (ours.section, ours.name.clone());
            let mut jobs = vec![Some(ours), theirs];
            if round % 2 == 0 {
                jobs.reverse();
            }
            for job in jobs.into_iter().flatten() {
                let side = job.side;
                let rep = run_job(job, threads)?;
                let peak = peaks.entry((section, name.clone())).or_default();
                let slot = if side == Side::Pixclass {
                    &mut peak.0
                } else {
                    &mut peak.1
                };
                *slot = larger(*slot, rep.peak);
                flops.extend(rep.flops);
                flop_ceiling = larger(flop_ceiling, rep.flop_ceiling);
                profile[usize::from(side == Side::Torch)].extend(rep.ops);
                for (k, v) in rep.rows {
                    let row = rows.entry(k).or_default();
                    row.section = Some(section);
                    if side == Side::Pixclass {
                        row.ours.push(v);
                    } else {
                        row.theirs.push(v);
                    }
                }
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
    let peak_flops = flop_ceiling.filter(|_| !gpu);
    let mut md = String::new();
    let mut json_rows = Vec::new();
    let mut ratios: BTreeMap<String, f64> = BTreeMap::new();
    for &section in &sections {
        let in_section: Vec<_> = rows
            .iter()
            .filter(|(_, r)| r.section == Some(section))
            .collect();
        if in_section.is_empty() {
            continue;
        }
        writeln!(
            md,
            "\n## {}\n\n| workload | pixclass (ms) | PyTorch (ms) | pixclass / PyTorch | per round | pixclass GFLOP/s |\n|---|---:|---:|---:|---|---:|",
            section.title()
        )?;
        for (k, r) in in_section {
            // The ratio of each round's pair, then their median: paired runs
            // cancel most of the machine's drift.
            let per_round: Vec<f64> = r.ours.iter().zip(&r.theirs).map(|(a, b)| a / b).collect();
            let ratio = (!per_round.is_empty()).then(|| median(&per_round));
            if let Some(x) = ratio {
                ratios.insert(k.clone(), x);
            }
            let gflops = flops.get(k).map(|&f| gflops_of(f, median(&r.ours)));
            writeln!(
                md,
                "| {k} | {:.1} | {} | {} | {} | {} |",
                median(&r.ours),
                if r.theirs.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", median(&r.theirs))
                },
                ratio.map_or("-".into(), |x| format!("**{x:.2}**")),
                per_round
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                gflops.map_or("-".into(), |g| match peak_flops {
                    Some(p) => format!("{g:.1} ({:.0} % of peak)", 100.0 * g / p),
                    None => format!("{g:.1}"),
                })
            )?;
            json_rows.push(json!({"section": section.key(), "workload": k, "pixclass_ms": median(&r.ours),
                "pytorch_ms": (!r.theirs.is_empty()).then(|| median(&r.theirs)), "ratio": ratio,
                "pixclass_rounds_ms": r.ours, "pytorch_rounds_ms": r.theirs, "ratio_rounds": per_round,
                "flops": flops.get(k), "pixclass_gflops": gflops}));
        }
    }
    writeln!(
        md,
        "\n## Peak resident memory (MB, the largest over the rounds)\n\n| process | pixclass | PyTorch | pixclass / PyTorch |\n|---|---:|---:|---:|"
    )?;
    let mut json_peaks = Vec::new();
    for ((section, name), (a, b)) in peaks.iter().filter(|((s, _), _)| *s != Section::Profile) {
        let fmt = |v: &Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let ratio = a.zip(*b).map(|(a, b)| a / b);
        if *section == Section::Colour {
            if let Some(r) = ratio {
                ratios.insert(format!("{name} peak memory"), r);
            }
        }
        writeln!(
            md,
            "| {name} | {} | {} | {} |",
            fmt(a),
            fmt(b),
            ratio.map_or("-".into(), |r| format!("{r:.2}"))
        )?;
        json_peaks.push(
            json!({"section": section.key(), "process": name, "pixclass_mb": a, "pytorch_mb": b}),
        );
    }
    if !profile[0].is_empty() {
        md.push_str(&profile_tables(&profile[0], &profile[1]));
    }
    if let Some(peak) = peak_flops {
        let nominal = nominal_gflops(threads)
            .map(|g| {
                format!(
                    " Its nominal clock would give {g:.0} GFLOP/s ({threads} cores x {:.2} GHz x 32 FLOP per cycle, \
                     two 8-lane FMA units; a core with two 16-lane AVX-512 FMA units does twice that, and boost \
                     clocks run faster): the measured figure is the ceiling, and shares of the nominal one, \
                     published before 6 December 2026 evening, overstated the kernels' efficiency.",
                    g / threads as f64 / 32.0
                )
            })
            .unwrap_or_default();
        writeln!(
            md,
            "\nPeak f32 arithmetic of this machine, measured: {peak:.0} GFLOP/s on {threads} threads (independent \
             FMA chains in registers on every thread, in the widest instruction set the kernels use; \
             `pixclass_ops::measured_peak_gflops`, printed by `step_timing`, the highest of the runs).{nominal} \
             GFLOP/s counts the convolutions' multiply-adds from the layer summary (training: 3x the forward) over \
             the whole step's time."
        )?;
    }
    let conv_share = peak_flops
        .zip(flops.get("unet train step").copied())
        .map(|(peak, f)| {
            let pct = |ms: f64| 100.0 * gflops_of(f, ms) / peak;
            let conv_ms: f64 = profile[0]
                .iter()
                .filter(|(k, _)| op_category(k).starts_with("convolution"))
                .map(|(_, v)| v)
                .sum();
            ConvShare {
                whole_step: rows
                    .get("unet train step")
                    .filter(|r| !r.ours.is_empty())
                    .map(|r| pct(median(&r.ours))),
                kernels: (conv_ms > 0.0).then(|| pct(conv_ms)),
            }
        });
    let targets = targets_table(&ratios, python.is_some(), conv_share);
    let report = json!({"machine": machine, "device": device, "threads": threads, "rounds": rounds,
        "epochs": args.epochs, "rows": json_rows, "peak_mb": json_peaks, "ratios": ratios});
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{targets}{md}");
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
        "nothing else ran on the machine while it timed; its speed still drifts between minutes, which the paired rounds cancel"
    };
    let text = format!(
        "<!-- Generated by `cargo xtask bench --publish`; do not edit by hand. -->\n\n# {title}\n\n\
         Command: `{command}` — pixclass and PyTorch back to back in the same command, **{threads} threads each**, \
         checked: every process reports its thread count (PyTorch's `torch.get_num_threads()` after its imports, \
         pixclass's rayon pool, also written to the run record) and the bench fails unless both are {threads}. \
         {rounds} rounds alternate the two sides and which goes first; a row's ratio is the median of the rounds' \
         ratios, all of which are listed; below 1 pixclass is faster ({timing}). Colourization runs: {} epochs.\n\n\
         Machine: {machine}.\n\n\
         Figures published before December 2026 compared pixclass on 2 threads with **PyTorch on 1 thread** (an \
         exec'd fixture script reset the count); they are withdrawn. Every figure here is 2 against 2.\n\n\
         The ratios depend on the machine: on the Intel Xeon machine of the morning of 7 December (AVX-512, \
         measured peak 472 GFLOP/s on 2 threads), the bench of commit 41ecb7f (before the shared columns of \
         transposed convolutions, below) gave colourization epochs 0.66-0.74, micro steps 0.78-0.79, DeepLab \
         forwards 0.59-0.98 and feature extraction 0.60-0.84; PyTorch's oneDNN kernels gain more from AVX-512 \
         than the `gemm` crate's micro-kernels do.\n\n\
         {targets}{md}\n\
         Workloads. *Colourization runs*: `pixclass colourize train --model NET --epochs E` against \
         `crates/pixclass-train/benches/torch_colour_reference.py`, the study's program as written (its own model \
         definitions, numpy batches turned into tensors each step, the notebook's train/eval switching), on the same \
         5000 / 1000 CIFAR-10 horse files; an epoch is training + validation (pixclass also computes its colour \
         measures then); data preparation is reading, grey conversion and colour quantisation; the whole process \
         adds start-up, imports, records, pictures and checkpoints. *Forwards*: eval mode, random input, seeded \
         random ResNet-101 weights without the auxiliary head on both sides (`seg_forward_timing.rs` / \
         `torch_seg_forward.py`, MobileNetV2 in PyTorch ops from the same graph: `tflite_graph.py`); ResNet-101's \
         dilated 3x3 convolutions run as Winograd F(2x2,3x3) on their undilated phase images where those are large \
         enough (dilation 2, stage 3 and stage 4's first block, at every size and batch; dilation 4, the rest of \
         stage 4, at 520, not at 224, where its phases are 7x7: \
         `kernels/dilated.rs`), and the ASPP branches (dilations 12, 24, \
         36) leave out the products with padding, one GEMM per live tap over where it reads pixels \
         (`kernels/bands.rs`). *Feature \
         extraction*: the first 64 Oxford-17 images with a trimap, photo and mask decoded and resized bilinearly, \
         normalised, 256-channel features in chunks of 16 (`feature_timing.rs` / `torch_seg_features.py`). \
         *Micro*: one training step (forward + cross-entropy + backward + Adam) and inference of each net at batch \
         100 on a synthetic batch (`step_timing.rs` / `torch_colour_step.py`), one head step on cached 256x28x28 \
         features, batch 128, resized to 224x224.\n\n\
         Kernels. Stride-1 3x3 convolutions (batch of 2 or more, 8 or more channels) run as Winograd \
         F(2x2,3x3) (`kernels/winograd.rs`), on blocks of whole images of up to 256 tiles (one 32x32 image), \
         128 where a side has 128 or more channels (ResNet-101: two 14x14 phase images, whose GEMMs and \
         transforms ran faster than those of four or one); where their weight gradient has few outputs per transformed \
         position (24x24, 32x24), its GEMMs are our own kernel (`gemm_abt` in `kernels/gemm.rs`: 4x4 sums in \
         vector lanes over ~800 tiles), not the `gemm` crate's 64-row kernels, which such outputs leave partly empty; \
         stride-2 convolutions read every tap from the image's four parity \
         planes, whole rows at a time (`kernels/im2col.rs`). Winograd F(4x4,3x3) (4x fewer multiplications than \
         the direct sum instead of 2.25x) was implemented and measured slower on this machine, so it is not used: \
         the colourization layers ran 10-100 % slower per pass (its 36 transformed positions make the GEMMs of \
         a block that fits L2 thin, and its transforms cost about 1.3x F(2x2,3x3)'s per image and channel), \
         ResNet-101 at 224, batch 8, took 3.7-4.0 s against 3.1-3.4 s (on the AMD EPYC machine of the earlier runs). \
         Autograd: candle's backward gives every node's output a zero-filled gradient tensor and adds each \
         incoming gradient to it, a memory-bound pass over every intermediate tensor of the step. In training, \
         each colourization block (convolution or transposed convolution with its bias, the pooling or \
         upsampling, BatchNorm + ReLU) is one node (`batch_norm_train_after_conv`, `kernels/conv_bn.rs`: the \
         intermediate tensors are computed without nodes, and the backward chains the existing kernels), and \
         the UNet's last convolution over its features and the grey input is one op that leaves the constant \
         input alone (`conv2d_bias_clamp_const_tail`), where the sum of two convolutions added two more \
         output-sized gradients; on the Intel Xeon machine of 7 December this took \"other\" in the profiled \
         step below from 20.6 to 8.7-10.3 ms and the training steps from 84-97 to 72-76 ms (UNet), 65-71 to \
         59-66 (ConvTranspose) and 92-98 to 81-84 (PoolUpsample), same binary alternating. Outputs: a kernel \
         that zero-fills its output and then writes it passes over that memory twice, and the fill (~160 MB in a \
         UNet step) has nothing to overlap it; the convolution forwards' GEMMs, the Winograd output transforms, \
         BatchNorm forward and backward and the cross-entropy gradient write their outputs once \
         (`kernels/output.rs`: chunks of unwritten values that only writers which initialise all of them turn \
         into `&mut [T]`, counted before the buffer is handed out; `gemm_overwrite`), which took the UNet step \
         from 62-68 to 60-65 ms (medians 65.8 and 62.0 over 5 alternating rounds; ConvTranspose and \
         PoolUpsample within their noise). Transposed convolutions: their backward's input gradient (a stride-2 \
         convolution of the output gradient) and filter gradient read the same column matrix, which one op \
         builds once per image for both (`ConvTransposeGrads` in `kernels/conv.rs`, the two kernels' results \
         bit for bit), which took the UNet step from 68.5 to 60.8 ms and the ConvTranspose step from 54.5 to \
         51.0 (medians of 6 alternating rounds on the AMD EPYC machine of the evening of 7 December, whose \
         speed drifted by up to 30 % between minutes). Rows split into their even and odd values and joined \
         back (the Winograd transforms' parity planes, the stride-2 im2col's parity planes) go through \
         fixed chunks of 16 and 8 pairs that compile to vector shuffles (`kernels/simd.rs`; a loop over pairs \
         ran one value at a time on 32-wide rows, too short for a variable-length loop's vector body), which \
         took the UNet step from 63.2 to 59.6 ms and the PoolUpsample step from 70.7 to 67.0 (medians of 10 \
         and 5 alternating rounds, AMD EPYC machine, night of 7 to 8 December; results bit for bit as \
         before); the 2x2 max-pool gradient computes 16 windows at a time, branch-free, from their corners \
         split into four arrays (4.8 to 3.45 ms per PoolUpsample step). Bilinear resizing (DeepLab's logits \
         to the input size, also in the head fine-tuning step) is a direct kernel on the CPU, two source rows \
         and columns per output, its adjoint as the backward (`kernels/resize.rs`), where it was two \
         products with dense interpolation matrices (28 or 33 multiply-adds per output and side instead of \
         2): MobileNetV2 at 224, batch 8, resize 1.6 ms and \"other\" 13.3 ms of the profiled forward \
         against 16.6 ms of \"other\" before (the resize was not timed on its own then); head step 136.5 to \
         115.9 ms. Instruction sets: the kernels are compiled for the CPU they run on through `pulp`'s \
         run-time dispatch, but only code inlined into the dispatched function gets its instruction set; a \
         loop in a generic helper that is not inlined, or in a closure passed to one, is compiled for the \
         baseline (SSE2, 4 lanes), and `perf annotate` found such loops on hot paths (night of 7 to 8 \
         December, AMD EPYC machine, alternating rounds): the cross-entropy's exponentials (its per-class \
         writer inlined: 4.4-4.9 to 1.2-1.9 ms per UNet step), argmax over classes, the residual add+ReLU, \
         clamp masks and channel bias (now written once, without a zero-filled buffer), the parallel \
         zero-fill, the Winograd filter transform (one filter at a time in scalar code, ~3 % of a ResNet-101 \
         forward at batch 1; now 64 input channels at a time, bit for bit), the depthwise stride-2 forward (a \
         scalar gather; now a contiguous run of the plane's even or odd columns per tap and row), and the \
         margin losses of Part D, which called libm's `log1pf` and `expf` per pixel (now `exp_fast` and a \
         2·atanh series, relative error below 3e-7, over 16 fixed f64 lanes: head step 125 to 82 ms, \
         medians of 4 rounds; its backward, written as an iterator, still ran its per-pixel function out of \
         line in scalar code, and as a loop over slices under the dispatch took the head step from 94-98 to \
         49-52 ms, 3 rounds). The interleaving helpers' fixed chunks compiled to one scalar load and store \
         per value inside the large kernels that call them (col2im, the Winograd transforms); built in a local \
         array and stored whole they compile to vector code (shuffles; AVX-512 gathers in the Winograd output \
         transform, where the joined values get the bias). With per-thread scratch vectors for the Winograd \
         kernels (rayon ran their initialiser ~15 times per convolution, each allocating and zero-filling \
         0.5-1 MB): UNet step medians 60.9 to 58.4 ms, inference 19.2 to 17.3 ms, ResNet-101 at 224, batch \
         1, 398 to 380 ms. Tried and not kept \
         (alternating rounds of the old and new kernels): the UNet's grey-input taps added to the output \
         per image from their 9-row column matrix in 16-lane sums, with no GEMM and no separate add (the \
         tail op unchanged: 7.3-8.1 ms both ways, 4 rounds); the 2x2 max-pool forward and the upsampling \
         gradient's block sums over deinterleaved corners like the max-pool gradient (slower: 0.87 against \
         0.69 ms and 0.55 against 0.45 ms per PoolUpsample step); nearest upsampling through the \
         interleaving helper (unchanged, 0.8-1.1 ms both ways); 5 images per partial filter gradient instead of 8 \
         (20 chunks, which 2 threads share evenly, instead of 13: within the noise, UNet 63.7 against 63.4 ms, \
         ConvTranspose 51.8 against 53.4, medians of 5 rounds); zero-filling each output chunk by the task that \
         writes it, just before, in its cache (the steps unchanged: the fill still pays for bringing the \
         lines in); splitting an even-width image's columns by parity in one long loop in the Winograd input \
         transform (unchanged); max-pooling and upsampling forwards written through iterators instead of \
         zero-filled outputs (slower: 1.8 against 1.4 ms and 2.2 against 1.8 ms per PoolUpsample step); an f32 GEMM of 6x64 register blocks reading `b` in \
         place (106-114 GFLOP/s against the `gemm` crate's 76-86 on small isolated shapes) changed \
         the UNet step's convolutions by under 1 % and made DeepLab forwards 4-33 % slower; a depthwise kernel \
         summing 16-column chunks of a zero-padded plane in registers left MobileNetV2's depthwise time as it was \
         (batch 1 at 257: 4.8-6.0 ms against 4.1-5.8; batch 8: 38-50 ms against 34-52); adding the UNet's \
         grey-input taps to the output directly instead of through a 9-deep GEMM and an add made that op \
         slower (8.9-9.5 ms against 7.3); a branch-free 2x2 max-pool backward (selects instead of the \
         window's local array) did not vectorise and took 11-12 ms against 5.5-5.9; the interleaving helper \
         storing `[T; 2]` pairs, or applying its function to each run before interleaving, compiled to AVX-512 \
         gathers or shuffles with no measurable change in the UNet or PoolUpsample step (4 rounds).\n",
        args.epochs
    );
    std::fs::write(out.join(page), &text)?;
    if args.publish {
        std::fs::write(root().join("docs").join(page), text)?;
        println!("published to docs/{page}");
    }
    Ok(())
}

/// The category of a kernel (pixclass) or aten op (PyTorch) in the step
/// breakdown. pixclass's forward convolutions carry the layer's bias
/// (`-bias`); the unbiased ones run in the backward (a transposed
/// convolution's input gradient is a convolution).
fn op_category(op: &str) -> &'static str {
    let has = |s: &str| op.contains(s);
    if op == "total" {
        "total"
    } else if has("convolution_backward")
        || has("channel-sum")
        || (has("pixclass-conv") && !op.ends_with("-bias"))
    {
        "convolution backward (input, weight and bias gradients)"
    } else if has("conv") {
        "convolution forward (+ bias)"
    } else if has("batch")
        || has("channel-stats")
        || has("channel-affine")
        || has("clamp_min")
        || has("threshold")
        || has("relu")
    {
        "BatchNorm + ReLU (forward and backward)"
    } else if has("pool") || has("upsample") || has("block-sum") {
        "pooling / upsampling"
    } else if has("cross-entropy") || has("softmax") || has("nll_loss") {
        "cross-entropy (forward and backward)"
    } else {
        "other (concatenation, Adam, copies, allocation, framework)"
    }
}

/// The per-op breakdown of one UNet step: by category side by side, then
/// each side's own ops.
fn profile_tables(ours: &BTreeMap<String, f64>, theirs: &BTreeMap<String, f64>) -> String {
    let by_cat = |ops: &BTreeMap<String, f64>| {
        let mut m: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (k, v) in ops {
            *m.entry(op_category(k)).or_default() += v;
        }
        m
    };
    let (a, b) = (by_cat(ours), by_cat(theirs));
    let mut cats: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .copied()
        .filter(|c| *c != "total")
        .collect();
    cats.sort();
    cats.dedup();
    cats.sort_by(|x, y| b.get(y).unwrap_or(&0.0).total_cmp(b.get(x).unwrap_or(&0.0)));
    cats.push("total");
    let mut md = format!(
        "\n## {}\n\nOne UNet training step, batch 100 (forward + cross-entropy + backward + Adam), each op's own time \
         per step: pixclass's kernels timed by `pixclass_ops::profile` (`step_timing --model unet --profile`; \
         \"other\" is the rest of the step: candle's own ops, allocation), PyTorch's by `torch.profiler` (self CPU \
         time, `torch_unet_profile.py`; its total is the ops' sum, with the profiler's overhead). Both profiled \
         steps are slower than the timed ones above.\n\n| category | pixclass | PyTorch |\n|---|---:|---:|\n",
        Section::Profile.title()
    );
    let fmt = |v: Option<&f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for c in cats {
        let _ = writeln!(md, "| {c} | {} | {} |", fmt(a.get(c)), fmt(b.get(c)));
    }
    for (side, ops) in [("pixclass kernels", ours), ("PyTorch ops", theirs)] {
        let mut v: Vec<_> = ops.iter().filter(|(k, _)| *k != "total").collect();
        v.sort_by(|x, y| y.1.total_cmp(x.1));
        let _ = write!(md, "\n{side}: ");
        let list: Vec<String> = v.iter().map(|(k, t)| format!("`{k}` {t:.1}")).collect();
        md.push_str(&list.join(", "));
        md.push('\n');
    }
    md
}

/// The targets of the speed work against the measured ratios (the whole
/// process is left out: the study's slow numpy preprocessing would flatter
/// pixclass there; its rows are in the colourization table).
fn targets_table(ratios: &BTreeMap<String, f64>, torch: bool, conv: Option<ConvShare>) -> String {
    if !torch {
        return String::new();
    }
    let pick = |f: &dyn Fn(&str) -> bool| -> Vec<f64> {
        ratios
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, v)| *v)
            .collect()
    };
    let rows: [(&str, Vec<f64>, f64); 5] = [
        (
            "colourization epoch (train + val), each net",
            pick(&|k| k.ends_with("run epoch (train + val)")),
            0.6,
        ),
        (
            "training step micro, each net",
            pick(&|k| k.ends_with("train step")),
            0.6,
        ),
        (
            "DeepLab forwards (every size and batch)",
            pick(&|k| k.contains(" forward ")),
            0.8,
        ),
        (
            "Part D feature extraction (64 images)",
            pick(&|k| k.contains("feature extraction")),
            0.8,
        ),
        (
            "peak memory of a colourization run",
            pick(&|k| k.ends_with("run peak memory")),
            1.0,
        ),
    ];
    let mut s = String::from(
        "## Targets\n\n| workload | measured: pixclass / PyTorch (range over rows) | target | met |\n|---|---:|---:|---|\n",
    );
    for (what, v, target) in rows {
        if v.is_empty() {
            continue;
        }
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let _ = writeln!(
            s,
            "| {what} | {lo:.2}–{hi:.2} | <= {target} | {} |",
            if hi <= target { "yes" } else { "no" }
        );
    }
    let Some(conv) = conv else { return s };
    if let Some(pct) = conv.whole_step {
        let _ = writeln!(
            s,
            "| convolution GFLOP/s in a UNet training step (whole step), % of peak | {pct:.0} % | >= 50 % | {} |",
            if pct >= 50.0 { "yes" } else { "no" }
        );
    }
    if let Some(pct) = conv.kernels {
        let _ = writeln!(
            s,
            "\nThe same multiply-adds over the convolution kernels' own time in the profiled step below: {pct:.0} % \
             of peak; BatchNorm, cross-entropy and candle's own ops make up the rest of the step."
        );
    }
    s
}

/// The UNet training step's convolution arithmetic as a share (%) of the
/// machine's peak: over the whole timed step, and over the convolution
/// kernels' own time in the profiled step.
#[derive(Debug, Clone, Copy)]
struct ConvShare {
    whole_step: Option<f64>,
    kernels: Option<f64>,
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

/// GFLOP/s of `flops` floating-point operations done in `ms` milliseconds.
fn gflops_of(flops: f64, ms: f64) -> f64 {
    flops / (ms / 1e3) / 1e9
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

/// The larger of two optional values (either one when the other is none).
fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Cores x nominal clock (from /proc/cpuinfo) x 32 f32 FLOP per cycle (two
/// 8-lane FMA units), when the clock is known: for comparison only, the
/// measured `PEAK_GFLOPS` is the ceiling.
fn nominal_gflops(threads: usize) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_of_both_sides_fall_into_the_same_categories() {
        let conv_bwd = "convolution backward (input, weight and bias gradients)";
        for (op, want) in [
            ("pixclass-conv2d-bwd-filter", conv_bwd),
            ("pixclass-conv2d-bwd-data", conv_bwd),
            ("pixclass-conv-transpose2d-bwd", conv_bwd),
            // A transposed convolution's input gradient: an unbiased conv.
            ("pixclass-conv2d", conv_bwd),
            ("pixclass-channel-sum", conv_bwd),
            ("aten::convolution_backward", conv_bwd),
            ("pixclass-conv2d-bias", "convolution forward (+ bias)"),
            (
                "pixclass-conv-transpose2d-bias",
                "convolution forward (+ bias)",
            ),
            ("aten::mkldnn_convolution", "convolution forward (+ bias)"),
            (
                "pixclass-batchnorm-train-bwd",
                "BatchNorm + ReLU (forward and backward)",
            ),
            (
                "aten::threshold_backward",
                "BatchNorm + ReLU (forward and backward)",
            ),
            (
                "pixclass-cross-entropy",
                "cross-entropy (forward and backward)",
            ),
            (
                "aten::_log_softmax_backward_data",
                "cross-entropy (forward and backward)",
            ),
            ("pixclass-maxpool-bwd", "pooling / upsampling"),
            (
                "aten::cat",
                "other (concatenation, Adam, copies, allocation, framework)",
            ),
            ("total", "total"),
        ] {
            assert_eq!(op_category(op), want, "{op}");
        }
        let ours = BTreeMap::from([
            ("pixclass-conv2d-bias".to_string(), 2.0),
            ("total".to_string(), 5.0),
        ]);
        let theirs = BTreeMap::from([
            ("aten::mkldnn_convolution".to_string(), 3.0),
            ("total".to_string(), 4.0),
        ]);
        let md = profile_tables(&ours, &theirs);
        assert!(
            md.contains("| convolution forward (+ bias) | 2.0 | 3.0 |"),
            "{md}"
        );
        assert!(md.contains("| total | 5.0 | 4.0 |"), "{md}");
    }

    #[test]
    fn targets_judge_the_worst_row_and_the_convolution_share() {
        let ratios = BTreeMap::from([
            ("unet run epoch (train + val)".to_string(), 0.55),
            ("pool-upsample run epoch (train + val)".to_string(), 0.7),
            ("unet train step".to_string(), 0.5),
        ]);
        let conv = ConvShare {
            whole_step: Some(48.4),
            kernels: Some(67.0),
        };
        let md = targets_table(&ratios, true, Some(conv));
        assert!(
            md.contains(
                "| colourization epoch (train + val), each net | 0.55–0.70 | <= 0.6 | no |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| training step micro, each net | 0.50–0.50 | <= 0.6 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("(whole step), % of peak | 48 % | >= 50 % | no |"),
            "{md}"
        );
        assert!(md.contains("profiled step below: 67 % of peak"), "{md}");
        assert!(
            !md.contains("feature extraction"),
            "rows without figures are left out: {md}"
        );
        assert_eq!(
            targets_table(&ratios, false, Some(conv)),
            "",
            "no PyTorch, no targets"
        );
    }
}
