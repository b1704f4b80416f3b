//! `pixclass data ...` and `pixclass colours ...`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use pixclass_data::checksum::{verify_if_known, VerifyStatus};
use pixclass_data::cifar::{CifarLayout, CifarSet, CifarSource, Split, CLASS_NAMES};
use pixclass_data::colours::{kmeans, pixels_of, KMeansConfig};
use pixclass_data::{resolve_data_dir, Palette};

use crate::DataArgs;

#[derive(Subcommand)]
pub enum DataCmd {
    /// Show the data found: files, checksums, records per class, horse counts.
    Info {
        #[command(flatten)]
        data: DataArgs,
        /// Print one JSON document instead of text (for tools).
        #[arg(long)]
        json: bool,
    },
    /// Download and verify a data set into the data directory.
    Fetch {
        /// Which data set: cifar10 or flowers17.
        dataset: String,
        #[command(flatten)]
        data: DataArgs,
        /// Download from this address instead of the official one (for
        /// flowers17: the folder holding its three files).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ColoursCmd {
    /// Recompute a palette with k-means++ on the training images of a class.
    Kmeans {
        /// Number of colours.
        #[arg(long, default_value_t = 24)]
        k: usize,
        /// Seed of the k-means++ initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// CIFAR-10 class (7 = horse).
        #[arg(long, default_value_t = 7)]
        class: u8,
        /// Maximum Lloyd iterations.
        #[arg(long, default_value_t = 100)]
        max_iter: usize,
        /// Write the palette here (text format of assets/palettes).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
    },
}

pub fn run_data(cmd: DataCmd, progress: bool) -> Result<()> {
    match cmd {
        DataCmd::Info { data, json } => info(&data, json),
        DataCmd::Fetch { dataset, data, url } => {
            let dir = resolve_data_dir(data.data_dir.as_deref());
            match dataset.as_str() {
                "cifar10" => {
                    let out = pixclass_data::fetch::fetch_cifar10(&dir, url.as_deref(), progress)?;
                    println!("CIFAR-10 ready in {}", out.display());
                    Ok(())
                }
                "flowers17" => {
                    let out =
                        pixclass_data::fetch::fetch_flowers17(&dir, url.as_deref(), progress)?;
                    println!("Oxford-17 ready in {}", out.display());
                    Ok(())
                }
                other => bail!("unknown data set {other:?}; known: cifar10, flowers17"),
            }
        }
    }
}

/// Lines of text, or one JSON document (`--json`).
struct Report {
    json: bool,
    doc: serde_json::Value,
}

impl Report {
    fn line(&self, text: String) {
        if !self.json {
            println!("{text}");
        }
    }
}

fn info(args: &DataArgs, json: bool) -> Result<()> {
    let dir = resolve_data_dir(args.data_dir.as_deref());
    let mut r = Report {
        json,
        doc: serde_json::json!({
            "data_dir": dir,
            "flowers17": pixclass_data::SegSource::discover(&dir).map(|s| s.describe()),
        }),
    };
    let source = if args.embedded {
        CifarSource::Embedded
    } else {
        r.line(format!("data directory: {}", dir.display()));
        match CifarLayout::discover(&dir) {
            Ok(l) => CifarSource::Files(l),
            Err(e) => {
                r.doc["cifar10"] = serde_json::Value::Null;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r.doc)?);
                } else {
                    println!("CIFAR-10: not found ({e})");
                    println!("embedded sample: 500 train / 100 test horses (always available)");
                }
                if pixclass_data::paths::data_dir_is_explicit(args.data_dir.as_deref()) {
                    bail!(
                        "no CIFAR-10 data in the data directory you named ({})",
                        dir.display()
                    );
                }
                return Ok(());
            }
        }
    };
    r.line(format!("CIFAR-10 source: {}", source.describe()));
    let mut splits = serde_json::Map::new();
    for split in [Split::Train, Split::Test] {
        let mut files = Vec::new();
        let set = match &source {
            CifarSource::Files(layout) => {
                let mut all = CifarSet::default();
                for f in layout.files(split) {
                    let status = match verify_if_known(f) {
                        Ok(VerifyStatus::Verified(alg)) => format!("checksum ok ({alg})"),
                        Ok(VerifyStatus::Unknown) => "no published checksum".to_string(),
                        Err(e) => format!("FAILED: {e}"),
                    };
                    let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                    r.line(format!(
                        "  {} file {} ({} bytes): {status}",
                        split.name(),
                        f.display(),
                        size
                    ));
                    files.push(serde_json::json!({"path": f, "bytes": size, "checksum": status}));
                    all.extend(CifarSet::read_file(f)?);
                }
                all
            }
            CifarSource::Embedded => source.load(split)?,
        };
        let counts = set.class_counts();
        let per: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{}={c}", CLASS_NAMES[i]))
            .collect();
        let horses = counts[pixclass_data::HORSE as usize];
        r.line(format!(
            "  {} records: {} ({})",
            split.name(),
            set.len(),
            per.join(", ")
        ));
        r.line(format!("  {} horses: {horses}", split.name()));
        splits.insert(
            split.name().to_string(),
            serde_json::json!({"records": set.len(), "horses": horses, "files": files}),
        );
    }
    r.doc["cifar10"] = serde_json::json!({
        "source": source.describe(),
        "embedded": matches!(source, CifarSource::Embedded),
        "splits": splits,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r.doc)?);
    }
    Ok(())
}

pub fn run_colours(cmd: ColoursCmd) -> Result<()> {
    match cmd {
        ColoursCmd::Kmeans {
            k,
            seed,
            class,
            max_iter,
            out,
            data,
        } => {
            let source = data.cifar()?;
            let set = source.load(Split::Train)?.filter_class(class)?;
            let pixels = pixels_of(set.pixels(), 1024);
            println!(
                "k-means++ with k = {k} on {} pixels of {} {} images ({})",
                pixels.len(),
                set.len(),
                CLASS_NAMES[class as usize],
                source.describe()
            );
            let t = std::time::Instant::now();
            let (palette, iters) = kmeans(
                &pixels,
                KMeansConfig {
                    k,
                    seed,
                    max_iter,
                    ..Default::default()
                },
            )?;
            let d = palette.distortion.unwrap_or(f64::NAN);
            println!("{iters} iterations in {:.1} s; distortion (mean distance to nearest centre) {d:.4}", t.elapsed().as_secs_f64());
            if let Ok(reference) = Palette::reference(k) {
                if class == pixclass_data::HORSE {
                    println!(
                        "reference palette kmeans{k}_cat7: stored distortion {:.4}, on these pixels {:.4}",
                        reference.distortion.unwrap_or(f64::NAN),
                        reference.distortion_of(&pixels)
                    );
                }
            }
            let text = palette.to_text(&format!(
                "k-means++ palette: k={k}, seed={seed}, class {class} ({})",
                CLASS_NAMES[class as usize]
            ));
            match out {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                    println!("palette written to {}", p.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}
