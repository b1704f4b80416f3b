//! `pixclass`: the command-line tool. It only parses arguments and wires the
//! library crates together; every piece of work lives in a library.

mod allocator;
mod colourize_cmd;
mod data_cmd;
mod resume;
mod segment_cmd;
mod weights_cmd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Per-pixel classification in Rust: colourization and segmentation.
#[derive(Parser)]
#[command(name = "pixclass", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find, verify and download data sets.
    Data {
        #[command(subcommand)]
        cmd: data_cmd::DataCmd,
    },
    /// Colour palettes (k-means on pixels).
    Colours {
        #[command(subcommand)]
        cmd: data_cmd::ColoursCmd,
    },
    /// The colourization study (Parts A-C).
    Colourize {
        #[command(subcommand)]
        cmd: colourize_cmd::ColourizeCmd,
    },
    /// The segmentation study (Part D): fine-tune, evaluate, predict.
    Segment {
        #[command(subcommand)]
        cmd: segment_cmd::SegmentCmd,
    },
    /// Pretrained weights: list, fetch, convert.
    Weights {
        #[command(subcommand)]
        cmd: weights_cmd::WeightsCmd,
    },
}

/// Options naming the data directory (shared by commands that read data).
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory (default: $PIXCLASS_DATA, else ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use the small sample compiled into the binary, whatever is on disk.
    #[arg(long)]
    pub embedded: bool,
}

impl DataArgs {
    /// The data directory these options name, for a run's configuration
    /// (`None` for the embedded sample; a path made absolute, so a resume
    /// from elsewhere finds it).
    pub fn recorded_dir(&self, embedded: bool) -> Option<PathBuf> {
        if embedded {
            return None;
        }
        let d = pixclass_data::resolve_data_dir(self.data_dir.as_deref());
        Some(std::path::absolute(&d).unwrap_or(d))
    }

    /// The options that find `dir` again (a resumed run's data).
    pub fn from_recorded(dir: &Option<PathBuf>) -> Self {
        Self {
            data_dir: dir.clone(),
            embedded: dir.is_none(),
        }
    }

    /// The CIFAR-10 data these options name (the embedded sample when the
    /// default `./data` holds none).
    pub fn cifar(&self) -> Result<pixclass_data::CifarSource> {
        Ok(pixclass_data::CifarSource::resolve(
            self.data_dir.as_deref(),
            self.embedded,
        )?)
    }

    /// The segmentation data these options name.
    pub fn segmentation(&self) -> Result<pixclass_data::SegSource> {
        Ok(pixclass_data::SegSource::resolve(
            self.data_dir.as_deref(),
            self.embedded,
        )?)
    }
}

fn main() {
    allocator::keep_freed_memory();
    pixclass_ops::park_idle_candle_workers();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The matches of the leaf subcommand (which options were typed).
    let leaf = |a: &str| {
        matches
            .subcommand_matches(a)
            .and_then(|m| m.subcommand().map(|(_, m)| m))
    };
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIXCLASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let progress = !cli.quiet;
    let result: Result<()> = match cli.command {
        Command::Data { cmd } => data_cmd::run_data(cmd, progress),
        Command::Colours { cmd } => data_cmd::run_colours(cmd),
        Command::Colourize { cmd } => colourize_cmd::run(cmd, progress, leaf("colourize")),
        Command::Segment { cmd } => segment_cmd::run(cmd, progress, leaf("segment")),
        Command::Weights { cmd } => weights_cmd::run(cmd, progress),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
