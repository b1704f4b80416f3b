//! `pixclass colourize ...`: summary, train, sweep, eval, image.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use pixclass_data::RngScheme;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_train::adam::AdamConfig;
use pixclass_train::colourize::{self, ColourTrainConfig, VAL_ACC, VAL_LOSS};
use pixclass_train::DeviceKind;

use pixclass_data::CifarSource;
use pixclass_runs::Start;

use crate::{resume, DataArgs};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// The network's hyperparameters.
#[derive(Args, Clone)]
pub struct NetArgs {
    /// Network.
    #[arg(long, value_enum, default_value = "pool-upsample")]
    model: ColourModelKind,
    /// Kernel size k (2..=15).
    #[arg(long, default_value_t = 3)]
    kernel: usize,
    /// NF: filters of the first block (1..=512).
    #[arg(long, default_value_t = 32)]
    filters: usize,
    /// NC: colour classes (a reference palette: 16, 24 or 32).
    #[arg(long, default_value_t = 24)]
    colours: usize,
    /// NIC: input channels.
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
}

impl NetArgs {
    fn config(&self) -> ColourNetConfig {
        ColourNetConfig {
            kind: self.model,
            kernel: self.kernel,
            num_filters: self.filters,
            num_colours: self.colours,
            in_channels: self.in_channels,
        }
    }
}

/// Training settings (defaults: the study's).
#[derive(Args, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Learning rate of Adam, in (0, 10].
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Batch size (1..=10000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Epochs (1..=100000).
    #[arg(long, default_value_t = 25)]
    epochs: usize,
    /// Seed of the shuffle and the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the seed becomes shuffles and initial weights: `torch` = the
    /// reference program's streams (NumPy's shuffles, PyTorch's initial
    /// weights: the same seed starts from the same point as the PyTorch
    /// code), `chacha` = per-split and per-parameter ChaCha8 streams.
    #[arg(long, value_enum, default_value = "torch")]
    rng: RngScheme,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Use only the first N images of each split.
    #[arg(long)]
    limit: Option<usize>,
    /// CIFAR-10 class to colourize.
    #[arg(long, default_value_t = 7)]
    class: u8,
    #[command(flatten)]
    data: DataArgs,
}

impl TrainArgs {
    fn config(&self) -> ColourTrainConfig {
        ColourTrainConfig {
            model: self.net.config(),
            adam: AdamConfig {
                lr: self.lr,
                ..Default::default()
            },
            batch_size: self.batch_size,
            epochs: self.epochs,
            seed: self.seed,
            rng: self.rng,
            device: self.device,
            limit: self.limit,
            class: self.class,
            data: String::new(),
            data_dir: None,
        }
    }
}

#[derive(Subcommand)]
pub enum ColourizeCmd {
    /// One row per layer: parameters, output shape, connections; then totals.
    Summary {
        #[command(flatten)]
        net: NetArgs,
        /// Input height and width.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Train a net (writes config.json, metrics.csv, curves.png, samples, checkpoint).
    Train {
        #[command(flatten)]
        train: TrainArgs,
        /// Run directory.
        #[arg(long, default_value = "runs/colourize")]
        out: PathBuf,
        /// Continue the run in this directory with its saved settings
        /// (options given as well must agree with them; --epochs may extend it).
        #[arg(long, conflicts_with = "overwrite")]
        resume: Option<PathBuf>,
        /// Start over in --out even if it holds a run (its files are removed
        /// once the new run's data has loaded).
        #[arg(long)]
        overwrite: bool,
    },
    /// Train one run per batch size and compare them.
    Sweep {
        #[command(flatten)]
        train: TrainArgs,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,20,50,100,200,500")]
        batch_sizes: Vec<usize>,
        /// Output directory.
        #[arg(long, default_value = "runs/sweep")]
        out: PathBuf,
    },
    /// Validation loss and accuracy of a saved run.
    Eval {
        /// Run directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Colourize any photo with a saved run.
    Image {
        /// Run directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Input image (PNG or JPEG).
        #[arg(long)]
        input: PathBuf,
        /// Output PNG: grey input and result side by side.
        #[arg(long)]
        output: PathBuf,
        /// Downscale so the longer side is at most this (4..=4096).
        #[arg(long, default_value_t = 512)]
        max_side: u32,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
}

/// What each training option sets in a saved `ColourTrainConfig` (for
/// `--resume DIR` with options).
const COLOUR_OPTIONS: resume::OptionMap = &[
    ("model", &["/model/kind"]),
    ("kernel", &["/model/kernel"]),
    ("filters", &["/model/num_filters"]),
    ("colours", &["/model/num_colours"]),
    ("in_channels", &["/model/in_channels"]),
    ("lr", &["/adam/lr"]),
    ("batch_size", &["/batch_size"]),
    ("seed", &["/seed"]),
    ("rng", &["/rng"]),
    ("device", &["/device"]),
    ("limit", &["/limit"]),
    ("class", &["/class"]),
];

pub fn run(cmd: ColourizeCmd, progress: bool, matches: Option<&clap::ArgMatches>) -> Result<()> {
    match cmd {
        ColourizeCmd::Summary { net, size, format } => {
            if size == 0 || size % 4 != 0 {
                bail!("--size must be a positive multiple of 4, got {size}");
            }
            let vm = candle_nn::VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(
                &vm,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            );
            let model = ColourNet::new(net.config(), vb)?;
            let s = model.summary(size, size)?;
            match format {
                Format::Text => print!("{}", s.to_table()),
                Format::Markdown => print!("{}", s.to_markdown()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        ColourizeCmd::Train {
            train,
            out,
            resume,
            overwrite,
        } => {
            let m = matches.context("the command line's matches")?;
            let (dir, start, cfg, data) = match resume {
                Some(dir) => {
                    let saved: ColourTrainConfig =
                        resume::resumed(&dir, &train.config(), m, COLOUR_OPTIONS, "/epochs")?;
                    let data = if resume::explicit(m, "data_dir") || resume::explicit(m, "embedded")
                    {
                        train.data.clone()
                    } else {
                        DataArgs::from_recorded(&saved.data_dir)
                    };
                    (dir, Start::Resume, saved, data)
                }
                None => {
                    let start = if overwrite {
                        Start::Overwrite
                    } else {
                        Start::Fresh
                    };
                    (out, start, train.config(), train.data.clone())
                }
            };
            let source = data.cifar()?;
            let cfg = ColourTrainConfig {
                data_dir: data.recorded_dir(matches!(source, CifarSource::Embedded)),
                ..cfg
            };
            let run = colourize::train_colouriser(&cfg, &source, &dir, start, progress)?;
            let last = run.record.last().context("no epochs ran")?;
            println!(
                "{}: final val loss {:.4}, val accuracy {:.2} % after {} epochs ({:.0} s); outputs in {}",
                cfg.model.kind.display_name(),
                run.record.final_value(VAL_LOSS)?,
                run.record.final_value(VAL_ACC)?,
                last.epoch,
                run.seconds,
                run.out_dir.display()
            );
            Ok(())
        }
        ColourizeCmd::Sweep {
            train,
            batch_sizes,
            out,
        } => {
            if batch_sizes.is_empty() {
                bail!("--batch-sizes is empty");
            }
            let source = train.data.cifar()?;
            let cfg = ColourTrainConfig {
                data_dir: train
                    .data
                    .recorded_dir(matches!(source, CifarSource::Embedded)),
                ..train.config()
            };
            let rows = colourize::sweep(&cfg, &batch_sizes, &source, &out, progress)?;
            print!("{}", std::fs::read_to_string(out.join("sweep.md"))?);
            println!(
                "{} runs; sweep.csv, sweep.md and sweep.png in {}",
                rows.len(),
                out.display()
            );
            Ok(())
        }
        ColourizeCmd::Eval {
            checkpoint,
            device,
            data,
        } => {
            let model = colourize::load_colouriser(&checkpoint, device)?;
            let source = data.cifar()?;
            let palette = colourize::palette_for(&model.config.model)?;
            let (_, val) = colourize::prepare_data(
                &source,
                model.config.class,
                model.config.limit,
                &palette,
                model.config.seed,
                model.config.rng,
            )?;
            let m = colourize::evaluate_split(
                &model.net,
                &val,
                model.config.batch_size,
                &model.device,
            )?;
            let (loss, acc) = (
                m.get(VAL_LOSS).context("no val_loss")?,
                m.get(VAL_ACC).context("no val_acc")?,
            );
            println!(
                "val loss {loss:.4}, val accuracy {acc:.2} % on {} images ({})",
                val.len(),
                source.describe()
            );
            Ok(())
        }
        ColourizeCmd::Image {
            checkpoint,
            input,
            output,
            max_side,
            device,
        } => {
            let model = colourize::load_colouriser(&checkpoint, device)?;
            let (w, h) = colourize::colourize_image(&model, &input, &output, max_side)?;
            println!(
                "colourized {} at {w}x{h} -> {}",
                input.display(),
                output.display()
            );
            Ok(())
        }
    }
}
