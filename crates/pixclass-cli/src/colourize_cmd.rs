//! `pixclass colourize ...`: summary, train, sweep, eval, image.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use pixclass_data::RngScheme;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_train::adam::AdamConfig;
use pixclass_train::colourize::{
    self, ColourExtras, ColourRecipe, ColourTrainConfig, DecodeKind, Decoding, VAL_ACC, VAL_LOSS,
};
use pixclass_train::engine::LrSchedule;
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
    /// Network (default: pool-upsample; --recipe pixclass: unet).
    #[arg(long, value_enum)]
    model: Option<ColourModelKind>,
    /// Kernel size k (2..=15).
    #[arg(long, default_value_t = 3)]
    kernel: usize,
    /// NF: filters of the first block, 1..=512 (default: 32; --recipe pixclass: 64).
    #[arg(long)]
    filters: Option<usize>,
    /// NC: colour classes (a reference palette: 16, 24 or 32).
    #[arg(long, default_value_t = 24)]
    colours: usize,
    /// NIC: input channels.
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
}

impl NetArgs {
    /// The net, `base` supplying what was not given.
    fn config(&self, base: &ColourNetConfig) -> ColourNetConfig {
        ColourNetConfig {
            kind: self.model.unwrap_or(base.kind),
            kernel: self.kernel,
            num_filters: self.filters.unwrap_or(base.num_filters),
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
    /// The recipe the other options start from: the study's (default) or
    /// pixclass's improved one (UNet with 64 filters, flips, reshuffles, a
    /// one-cycle schedule at lr 3e-3, 40 epochs, the best epoch kept);
    /// explicit options still win.
    #[arg(long, value_enum, default_value = "study")]
    recipe: ColourRecipe,
    /// Learning rate of Adam (peak of a one-cycle schedule), in (0, 10]
    /// (default: 1e-3; --recipe pixclass: 3e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule (default: constant; --recipe pixclass: one-cycle); its
    /// horizon is epochs x batches, so extending a run with --epochs stretches the rest of it.
    #[arg(long, value_enum)]
    lr_schedule: Option<LrSchedule>,
    /// Mirror training images left-right at random (default: off; --recipe pixclass: on).
    #[arg(long, value_name = "BOOL")]
    hflip: Option<bool>,
    /// A new training order every epoch (default: off; --recipe pixclass: on).
    #[arg(long, value_name = "BOOL")]
    reshuffle: Option<bool>,
    /// Keep the best epoch by validation accuracy, which eval and image then
    /// load (default: off, the last; --recipe pixclass: on).
    #[arg(long, value_name = "BOOL")]
    keep_best: Option<bool>,
    /// Class rebalancing of the training loss with prior mixing LAMBDA in
    /// (0, 1] (Zhang et al. use 0.5; default: off).
    #[arg(long, value_name = "LAMBDA")]
    rebalance: Option<f64>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Batch size (1..=10000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Epochs, 1..=100000 (default: 25; --recipe pixclass: 40).
    #[arg(long)]
    epochs: Option<usize>,
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
        let base = ColourTrainConfig::for_recipe(self.recipe);
        let b = base.extras;
        ColourTrainConfig {
            model: self.net.config(&base.model),
            adam: AdamConfig {
                lr: self.lr.unwrap_or(base.adam.lr),
                ..Default::default()
            },
            batch_size: self.batch_size,
            epochs: self.epochs.unwrap_or(base.epochs),
            extras: ColourExtras {
                hflip: self.hflip.unwrap_or(b.hflip),
                reshuffle: self.reshuffle.unwrap_or(b.reshuffle),
                lr_schedule: self.lr_schedule.unwrap_or(b.lr_schedule),
                rebalance: self.rebalance.or(b.rebalance),
                keep_best: self.keep_best.unwrap_or(b.keep_best),
                decode: self.decode.decoding(),
            },
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

/// How logits become colours.
#[derive(Args, Clone)]
pub struct DecodeArgs {
    /// Decoding of the predicted colours: argmax (the study), annealed-mean
    /// (the expected colour at --temperature; Zhang et al. 2016) or balanced
    /// (the argmax after dividing out the colour prior the training fitted;
    /// raises class-balanced accuracy, Menon et al. 2021).
    #[arg(long, value_enum, default_value = "argmax")]
    decode: DecodeKind,
    /// Temperature of the annealed mean, in [0.01, 10].
    #[arg(long, default_value_t = pixclass_train::colourize::decode::ANNEALED_T)]
    temperature: f64,
}

impl DecodeArgs {
    fn decoding(&self) -> Decoding {
        Decoding {
            kind: self.decode,
            temperature: self.temperature,
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
    /// Validation loss, accuracy and colour measures of a saved run.
    Eval {
        /// Run directory.
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Print the metrics as one JSON object (name: value) instead of text.
        #[arg(long)]
        json: bool,
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
        #[command(flatten)]
        decode: DecodeArgs,
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
    ("lr_schedule", &["/extras/lr_schedule"]),
    ("hflip", &["/extras/hflip"]),
    ("reshuffle", &["/extras/reshuffle"]),
    ("keep_best", &["/extras/keep_best"]),
    ("rebalance", &["/extras/rebalance"]),
    ("decode", &["/extras/decode/kind"]),
    ("temperature", &["/extras/decode/temperature"]),
    (
        "recipe",
        &[
            "/model/kind",
            "/model/num_filters",
            "/adam/lr",
            "/extras/lr_schedule",
            "/extras/hflip",
            "/extras/reshuffle",
            "/extras/keep_best",
        ],
    ),
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
            let model = ColourNet::new(net.config(&ColourNetConfig::default()), vb)?;
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
            decode,
            json,
            device,
            data,
        } => {
            let model = colourize::load_colouriser(&checkpoint, device)?;
            let source = data.cifar()?;
            let palette = colourize::palette_for(&model.config.model)?;
            let (train, val) = colourize::prepare_data(
                &source,
                model.config.class,
                model.config.limit,
                &palette,
                model.config.seed,
                model.config.rng,
            )?;
            let decoding = decode.decoding();
            decoding.validate()?;
            // Runs written before class_prior.json existed: the same prior
            // from the training split.
            let prior = match model.prior.clone() {
                Some(p) => p,
                None => {
                    colourize::training_prior(&train, palette.len(), model.config.extras.rebalance)?
                }
            };
            let m = colourize::evaluate_split(
                &model.net,
                &val,
                &palette,
                model.config.batch_size,
                &decoding,
                Some(&prior),
                &model.device,
            )?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = m
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                    .collect();
                println!("{}", serde_json::Value::Object(map));
                return Ok(());
            }
            let v = |name: &str| m.get(name).with_context(|| format!("no {name}"));
            println!(
                "val loss {:.4}, val accuracy {:.2} %, balanced accuracy {:.2} %; decoded by {}: RGB error {:.4}, PSNR {:.2} dB, colourfulness {:.2} (truth {:.2}) on {} images ({})",
                v(VAL_LOSS)?,
                v(VAL_ACC)?,
                v(colourize::VAL_BALANCED_ACC)?,
                decoding.describe(),
                v(colourize::VAL_RGB_ERROR)?,
                v(colourize::VAL_PSNR)?,
                v(colourize::VAL_COLOURFULNESS)?,
                v(colourize::VAL_COLOURFULNESS_TRUTH)?,
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
            decode,
            device,
        } => {
            let model = colourize::load_colouriser(&checkpoint, device)?;
            let (w, h) =
                colourize::colourize_image(&model, &input, &output, max_side, &decode.decoding())?;
            println!(
                "colourized {} at {w}x{h} -> {}",
                input.display(),
                output.display()
            );
            Ok(())
        }
    }
}
