//! The colourization study (SPEC §A): data preparation and the run's
//! configuration here; the training task and [`train_colouriser`] in
//! [`task`]; the batch-size [`sweep`]; loading, evaluating and applying a
//! trained run in [`infer`].

use serde::{Deserialize, Serialize};

use pixclass_data::cifar::{CifarSet, CifarSource, Split, SIDE};
use pixclass_data::{split_orders, ColourSplit, Palette, RngScheme};
use pixclass_models::ColourNetConfig;

use crate::adam::AdamConfig;
use crate::device::DeviceKind;
use crate::error::Result;

pub mod decode;
pub mod infer;
pub mod sweep;
pub mod task;

pub use decode::{ClassPrior, DecodeKind, Decoding};
pub use infer::{colourize_image, load_colouriser, LoadedColouriser};
pub use sweep::{sweep, write_sweep, SweepRow};
pub use task::{
    evaluate_split, train_colouriser, training_prior, write_samples, ColourRun, ColourTask,
    StripDecoding, CLASS_PRIOR_JSON, VAL_ACC, VAL_BALANCED_ACC, VAL_COLOURFULNESS,
    VAL_COLOURFULNESS_TRUTH, VAL_LOSS, VAL_PSNR, VAL_RGB_ERROR,
};

/// Everything that defines a colourization run (saved as `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColourTrainConfig {
    /// The network.
    pub model: ColourNetConfig,
    /// Adam settings (the study: lr 1e-3, betas 0.9/0.999, eps 1e-8).
    pub adam: AdamConfig,
    /// Batch size for training and validation.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Seed of the data shuffle and the initial weights.
    pub seed: u64,
    /// How the seed becomes shuffles and initial weights (default `torch`:
    /// the reference program's NumPy/PyTorch streams; configs written before
    /// this field existed used `chacha`).
    #[serde(default = "legacy_rng")]
    pub rng: RngScheme,
    /// Device.
    pub device: DeviceKind,
    /// Use only the first N images of each split.
    pub limit: Option<usize>,
    /// CIFAR-10 class to colourize (7 = horse).
    pub class: u8,
    /// Where the data came from (filled in by the runner).
    pub data: String,
    /// The data directory the command named or found (`None`: the
    /// embedded sample), so `--resume DIR` alone finds the same data.
    #[serde(default)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Training options beyond the study (all off in the study's recipe).
    #[serde(default)]
    pub extras: ColourExtras,
}

/// The parts of a colourization recipe beyond the study's, each its own
/// option (`--recipe pixclass` turns on the chosen set; docs/RESULTS.md
/// ablates each).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColourExtras {
    /// Mirror each training image left-right with probability 1/2 (a fresh
    /// draw per epoch).
    pub hflip: bool,
    /// A new training order every epoch (the study keeps one fixed order).
    pub reshuffle: bool,
    /// The learning-rate schedule (the study: constant).
    pub lr_schedule: crate::engine::LrSchedule,
    /// Class rebalancing of the training cross-entropy with Zhang et al.'s
    /// prior mixing `lambda` in (0, 1]: colour `c` weighs
    /// `1 / ((1 - lambda) p_c + lambda / K)`, normalised to mean 1 over the
    /// training pixels (`None`: off, the study).
    pub rebalance: Option<f64>,
    /// Keep the best epoch by validation accuracy (`best.safetensors`,
    /// what `eval` and `image` then load); the study keeps the last.
    pub keep_best: bool,
    /// How logits become colours in the colour measures and sample strips.
    pub decode: decode::Decoding,
}

impl Default for ColourExtras {
    /// The study: none of them, argmax decoding.
    fn default() -> Self {
        Self {
            hflip: false,
            reshuffle: false,
            lr_schedule: crate::engine::LrSchedule::Constant,
            rebalance: None,
            keep_best: false,
            decode: decode::Decoding::default(),
        }
    }
}

/// Which colourization recipe a command starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ColourRecipe {
    /// The study's settings exactly (the default).
    #[default]
    Study,
    /// pixclass's improved recipe ([`ColourTrainConfig::pixclass`]).
    Pixclass,
}

impl Default for ColourTrainConfig {
    fn default() -> Self {
        Self {
            model: ColourNetConfig::default(),
            adam: AdamConfig::default(),
            batch_size: 100,
            epochs: 25,
            seed: 0,
            rng: RngScheme::Torch,
            device: DeviceKind::Cpu,
            limit: None,
            class: pixclass_data::HORSE,
            data: String::new(),
            data_dir: None,
            extras: ColourExtras::default(),
        }
    }
}

impl ColourTrainConfig {
    /// The study's settings for `recipe`'s `Study`, or pixclass's improved
    /// recipe (issue 22), chosen by a small documented search on the
    /// validation split (docs/RESULTS.md): a UNet with 64 filters, random
    /// horizontal flips, a per-epoch reshuffle, a one-cycle schedule with
    /// peak lr 3e-3, 40 epochs, the best epoch kept.
    pub fn for_recipe(recipe: ColourRecipe) -> Self {
        match recipe {
            ColourRecipe::Study => Self::default(),
            ColourRecipe::Pixclass => Self::pixclass(),
        }
    }

    /// pixclass's improved recipe ([`ColourTrainConfig::for_recipe`]).
    pub fn pixclass() -> Self {
        let study = Self::default();
        Self {
            model: ColourNetConfig {
                kind: pixclass_models::ColourModelKind::UNet,
                num_filters: 64,
                ..study.model
            },
            adam: AdamConfig {
                lr: 3e-3,
                ..study.adam
            },
            epochs: 40,
            extras: ColourExtras {
                hflip: true,
                reshuffle: true,
                lr_schedule: crate::engine::LrSchedule::OneCycle,
                rebalance: None,
                keep_best: true,
                decode: decode::Decoding::default(),
            },
            ..study
        }
    }
}

/// Loads, filters, limits and preprocesses both splits.
pub fn prepare_data(
    source: &CifarSource,
    class: u8,
    limit: Option<usize>,
    palette: &Palette,
    seed: u64,
    rng: RngScheme,
) -> Result<(ColourSplit, ColourSplit)> {
    let load = |split: Split| -> Result<CifarSet> {
        let mut set = source.load(split)?.filter_class(class)?;
        if let Some(n) = limit {
            set = set.take(n)?;
        }
        Ok(set)
    };
    let (train, test) = (load(Split::Train)?, load(Split::Test)?);
    let (train_order, test_order) = split_orders(train.len(), test.len(), seed, rng)?;
    Ok((
        ColourSplit::with_order(&train, palette, &train_order, Split::Train)?,
        ColourSplit::with_order(&test, palette, &test_order, Split::Test)?,
    ))
}

/// The scheme of configs written before [`ColourTrainConfig::rng`] existed.
fn legacy_rng() -> RngScheme {
    RngScheme::Chacha
}

impl ColourTrainConfig {
    /// Checks every setting's range before any work: batch size 1..=10000,
    /// epochs 1..=100000, Adam's settings ([`crate::run_dir::check_adam`]),
    /// kernel 2..=15, filters 1..=512, 16, 24 or 32 colours (the reference
    /// palettes), 1..=16 input channels, `limit` >= 1, a seed that fits 32
    /// bits with `rng: torch`.
    pub fn validate(&self) -> Result<()> {
        use crate::run_dir::{check_adam, in_range};
        in_range("--batch-size", self.batch_size, 1, 10_000)?;
        in_range("--epochs", self.epochs, 1, 100_000)?;
        check_adam(&self.adam)?;
        in_range("--kernel", self.model.kernel, 2, 15)?;
        in_range("--filters", self.model.num_filters, 1, 512)?;
        in_range("--in-channels", self.model.in_channels, 1, 16)?;
        if ![16, 24, 32].contains(&self.model.num_colours) {
            return Err(crate::TrainError::Config(format!(
                "--colours {}: the reference palettes have 16, 24 and 32 colours",
                self.model.num_colours
            )));
        }
        if let Some(n) = self.limit {
            in_range("--limit", n, 1, usize::MAX)?;
        }
        if let Some(l) = self.extras.rebalance {
            if !(l.is_finite() && l > 0.0 && l <= 1.0) {
                return Err(crate::TrainError::Config(format!(
                    "--rebalance {l} is out of range: lambda must be in (0, 1]"
                )));
            }
        }
        self.extras.decode.validate()?;
        if self.rng == RngScheme::Torch {
            in_range(
                "--seed (with --rng torch)",
                self.seed,
                0,
                u64::from(u32::MAX),
            )?;
        }
        Ok(())
    }
}

/// The reference palette with `num_colours` colours.
pub fn palette_for(cfg: &ColourNetConfig) -> Result<Palette> {
    Ok(Palette::reference(cfg.num_colours)?)
}

/// The sample side length of CIFAR images (for callers building inputs).
pub const IMAGE_SIDE: usize = SIDE;
