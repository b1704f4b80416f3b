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

pub mod infer;
pub mod sweep;
pub mod task;

pub use infer::{colourize_image, load_colouriser, LoadedColouriser};
pub use sweep::{sweep, write_sweep, SweepRow};
pub use task::{
    evaluate_split, train_colouriser, write_samples, ColourRun, ColourTask, VAL_ACC, VAL_LOSS,
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
