//! The study's training task (grey in, one of NC colours per pixel out,
//! cross-entropy), its validation metrics and sample strips, and
//! [`train_colouriser`], which runs it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};

use pixclass_data::cifar::CifarSource;
use pixclass_data::{ColourSplit, Palette, RngScheme};
use pixclass_metrics::colour::{mean_colourfulness, ColourError};
use pixclass_metrics::loss::weighted_cross_entropy;
use pixclass_metrics::{cross_entropy, ConfusionMatrix};
use pixclass_models::init::{seeded_var_builder, torch_var_builder};
use pixclass_models::layers::trainable_vars;
use pixclass_models::ColourNet;
use pixclass_runs::{DataProvenance, MetricSpec, Metrics, RunRecord};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::decode::{ClassPrior, Decoding};
use super::{palette_for, prepare_data, ColourExtras, ColourTrainConfig};
use pixclass_runs::{RunDir, Start};

use crate::device::select_device;
use crate::engine::{fit, new_record, FitConfig, TrainTask};
use crate::error::Result;
use crate::plot::{save_png, tile_grid};
use crate::run_dir::{check_resume, write_config, write_json};

/// Validation loss: the mean of per-batch mean cross-entropies.
pub const VAL_LOSS: &str = "val_loss";
/// Validation accuracy: percent of pixels whose colour class is right.
pub const VAL_ACC: &str = "val_acc";
/// Class-balanced accuracy: the mean over the colours of their recall, %.
pub const VAL_BALANCED_ACC: &str = "val_balanced_acc";
/// Mean Euclidean RGB distance of the decoded image to the true full-colour
/// one per pixel (1/256 scale).
pub const VAL_RGB_ERROR: &str = "val_rgb_error";
/// PSNR of the decoded image against the true one (peak 1 on the 1/256
/// scale), dB.
pub const VAL_PSNR: &str = "val_psnr";
/// Mean Hasler-Süsstrunk colourfulness of the decoded images.
pub const VAL_COLOURFULNESS: &str = "val_colourfulness";
/// The same of the true full-colour images (a constant of the split).
pub const VAL_COLOURFULNESS_TRUTH: &str = "val_colourfulness_truth";

/// File of a run directory holding the run's [`ClassPrior`] (what the
/// balanced decoding divides out).
pub const CLASS_PRIOR_JSON: &str = "class_prior.json";

/// The colour prior the training loss fits on `train`: its colour
/// histogram, weighted by the rebalancing weights of `rebalance` when set.
pub fn training_prior(
    train: &ColourSplit,
    num_colours: usize,
    rebalance: Option<f64>,
) -> Result<ClassPrior> {
    let histogram = train.class_histogram(num_colours);
    let weights = rebalance.map(|lambda| rebalance_weights(&histogram, lambda));
    ClassPrior::new(&histogram, weights.as_deref())
}

/// The metrics of a colourization run, in column order.
pub fn metric_specs() -> Vec<MetricSpec> {
    vec![
        MetricSpec::minimise(VAL_LOSS, "validation loss", 4),
        MetricSpec::maximise(VAL_ACC, "validation accuracy", 2).with_unit("%"),
        MetricSpec::maximise(VAL_BALANCED_ACC, "class-balanced accuracy", 2).with_unit("%"),
        MetricSpec::minimise(VAL_RGB_ERROR, "RGB error", 4),
        MetricSpec::maximise(VAL_PSNR, "PSNR", 2).with_unit("dB"),
        MetricSpec::maximise(VAL_COLOURFULNESS, "colourfulness", 2).with_unit("cf"),
        MetricSpec::maximise(VAL_COLOURFULNESS_TRUTH, "colourfulness of the truth", 2)
            .with_unit("cf"),
    ]
}

/// The training task of the study (and of the recipes beyond it:
/// [`ColourExtras`]).
pub struct ColourTask {
    net: ColourNet,
    train: ColourSplit,
    val: ColourSplit,
    palette: Palette,
    batch_size: usize,
    device: Device,
    extras: ColourExtras,
    seed: u64,
    /// Per-colour weights of the training loss (rebalancing), `[K]`.
    weights: Option<Tensor>,
    /// The colour prior the training loss fits.
    prior: ClassPrior,
}

impl ColourTask {
    /// A task over prepared splits.
    pub fn new(
        net: ColourNet,
        train: ColourSplit,
        val: ColourSplit,
        palette: Palette,
        batch_size: usize,
        device: Device,
    ) -> Result<Self> {
        let prior = training_prior(&train, palette.len(), None)?;
        Ok(Self {
            net,
            train,
            val,
            palette,
            batch_size: batch_size.max(1),
            device,
            extras: ColourExtras::default(),
            seed: 0,
            weights: None,
            prior,
        })
    }

    /// With the options beyond the study: flips and reshuffles drawn from
    /// `seed`, the rebalancing weights computed from the training split.
    pub fn with_extras(mut self, extras: ColourExtras, seed: u64) -> Result<Self> {
        self.extras = extras;
        self.seed = seed;
        self.prior = training_prior(&self.train, self.palette.len(), extras.rebalance)?;
        self.weights = match extras.rebalance {
            Some(lambda) => {
                let k = self.palette.len();
                let w = rebalance_weights(&self.train.class_histogram(k), lambda);
                Some(Tensor::from_vec(
                    w.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                    k,
                    &self.device,
                )?)
            }
            None => None,
        };
        Ok(self)
    }

    /// The training images of batch `batch` of `epoch` and their flips.
    fn batch_plan(&self, epoch: usize, batch: usize) -> (Vec<usize>, Vec<bool>) {
        let n = self.train.len();
        let bs = self.batch_size;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut order: Vec<usize> = (0..n).collect();
        if self.extras.reshuffle {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rng);
        }
        let flips: Vec<bool> = (0..n)
            .map(|_| self.extras.hflip && rng.random::<bool>())
            .collect();
        let range = batch * bs..((batch + 1) * bs).min(n);
        (
            order[range.clone()].to_vec(),
            range.map(|k| flips[k]).collect(),
        )
    }

    /// The network.
    pub fn net(&self) -> &ColourNet {
        &self.net
    }

    /// The colour prior the training loss fits ([`training_prior`]).
    pub fn prior(&self) -> &ClassPrior {
        &self.prior
    }
}

/// Per-colour weights of Zhang et al.'s class rebalancing from a class
/// histogram of the training pixels: `w_c ∝ 1 / ((1 - lambda) p_c +
/// lambda / K)`, scaled so that their mean over the training pixels,
/// `Σ p_c w_c`, is 1.
pub fn rebalance_weights(histogram: &[usize], lambda: f64) -> Vec<f64> {
    let k = histogram.len().max(1) as f64;
    let total = histogram.iter().sum::<usize>().max(1) as f64;
    let p: Vec<f64> = histogram.iter().map(|&c| c as f64 / total).collect();
    let raw: Vec<f64> = p
        .iter()
        .map(|&pc| 1.0 / ((1.0 - lambda) * pc + lambda / k))
        .collect();
    let mean: f64 = p.iter().zip(&raw).map(|(a, b)| a * b).sum();
    raw.iter().map(|w| w / mean.max(1e-300)).collect()
}

/// The validation metrics of `net` on `split` in eval mode: [`VAL_LOSS`]
/// (mean of per-batch mean losses, unweighted), [`VAL_ACC`] (percent of
/// pixels), [`VAL_BALANCED_ACC`] (mean per-colour recall, %) of the colour
/// classes `decoding` chooses ([`Decoding::classes`]: the argmax's but for
/// the balanced decoding), and the colour measures of the images decoded
/// with `decoding` against the true full-colour images: [`VAL_RGB_ERROR`],
/// [`VAL_PSNR`], [`VAL_COLOURFULNESS`] (and [`VAL_COLOURFULNESS_TRUTH`] of
/// the truth). `prior` is needed by the balanced decoding only.
pub fn evaluate_split(
    net: &ColourNet,
    split: &ColourSplit,
    palette: &Palette,
    batch_size: usize,
    decoding: &Decoding,
    prior: Option<&ClassPrior>,
    device: &Device,
) -> Result<Metrics> {
    let nb = split.num_batches(batch_size);
    let k = palette.len();
    let hw = IMAGE_HW;
    let mut loss_sum = 0.0;
    let mut cm = ConfusionMatrix::new(k);
    let mut err = ColourError::default();
    let (mut cf_pred, mut cf_truth, mut images) = (0.0, 0.0, 0usize);
    for b in 0..nb {
        let start = b * batch_size;
        let (x, y) = split.batch(start, batch_size, device)?;
        // Detached: the weights are variables, so the eval forward records a
        // graph; without it the cross-entropy would also write the gradient
        // it keeps for a backward pass that never comes.
        let logits = net.forward_t(&x, false)?.detach();
        loss_sum += cross_entropy(&logits, &y)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let classes = decoding.classes(&logits, prior)?;
        cm.add(&to_u32(&y)?, &to_u32(&classes)?);
        let rgb: Vec<f32> = decoding
            .decode(&logits, palette, prior)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let n = y.dim(0)?;
        let truth: Vec<f32> = (start..start + n)
            .flat_map(|i| split.image_bytes(i).iter().map(|&v| f32::from(v) / 256.0))
            .collect();
        err.add(&rgb, &truth, hw);
        cf_pred += mean_colourfulness(&rgb, hw) * n as f64;
        cf_truth += mean_colourfulness(&truth, hw) * n as f64;
        images += n;
    }
    let pct = |v: Option<f64>, what: &str| {
        v.map(|v| 100.0 * v)
            .ok_or_else(|| crate::TrainError::Config(format!("the validation split has no {what}")))
    };
    let images = images.max(1) as f64;
    Ok(Metrics::new()
        .with(VAL_LOSS, loss_sum / nb as f64)
        .with(VAL_ACC, pct(cm.pixel_accuracy(), "pixels")?)
        .with(VAL_BALANCED_ACC, pct(cm.balanced_accuracy(), "pixels")?)
        .with(VAL_RGB_ERROR, err.mean_distance().unwrap_or(f64::NAN))
        .with(VAL_PSNR, err.psnr().unwrap_or(f64::NAN))
        .with(VAL_COLOURFULNESS, cf_pred / images)
        .with(VAL_COLOURFULNESS_TRUTH, cf_truth / images))
}

/// The values of an integer tensor, flattened.
fn to_u32(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?)
}

/// Pixels per image.
const IMAGE_HW: usize = pixclass_data::cifar::SIDE * pixclass_data::cifar::SIDE;

pub(super) fn to_rgb_tiles(rgb: &Tensor) -> Result<Vec<RgbImage>> {
    // [N, 3, H, W] f32 on the 1/256 scale.
    let (n, _, h, w) = rgb.dims4()?;
    let v: Vec<f32> = rgb.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let hw = h * w;
    Ok((0..n)
        .map(|i| {
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let c = |ch: usize| {
                    (v[i * 3 * hw + ch * hw + p] * 256.0)
                        .round()
                        .clamp(0.0, 255.0) as u8
                };
                Rgb([c(0), c(1), c(2)])
            })
        })
        .collect())
}

pub(super) fn grey_tiles(grey: &Tensor) -> Result<Vec<RgbImage>> {
    let g = grey.to_device(&Device::Cpu)?;
    let rgb = Tensor::cat(&[&g, &g, &g], 1)?;
    to_rgb_tiles(&rgb)
}

/// The rows of [`write_samples`], top to bottom.
pub const SAMPLE_ROWS: [&str; 6] = [
    "grey input",
    "true colours",
    "true palette colours",
    "argmax",
    "annealed mean",
    "balanced",
];

/// What the decoded rows of a sample strip need beyond the logits.
#[derive(Debug, Clone, Copy)]
pub struct StripDecoding<'a> {
    /// Temperature of the annealed-mean row.
    pub temperature: f64,
    /// The run's colour prior, for the balanced row.
    pub prior: &'a ClassPrior,
}

/// Writes a strip of the first `n` images of `split`, one row each: grey
/// input, the true full colours, the true palette colours, the prediction
/// decoded by argmax (the study), by the annealed mean and by the balanced
/// decision ([`SAMPLE_ROWS`]; `decoding` says at what temperature and
/// against which prior).
pub fn write_samples(
    path: &Path,
    net: &ColourNet,
    split: &ColourSplit,
    palette: &Palette,
    n: usize,
    decoding: StripDecoding,
    device: &Device,
) -> Result<()> {
    let StripDecoding { temperature, prior } = decoding;
    let (x, y) = split.batch(0, n, device)?;
    let logits = net.forward_t(&x, false)?.detach();
    let argmax = Decoding::default().decode(&logits, palette, None)?;
    let annealed = Decoding {
        temperature,
        ..Decoding::annealed()
    }
    .decode(&logits, palette, None)?;
    let balanced = Decoding::balanced().decode(&logits, palette, Some(prior))?;
    let truth = palette.classes_to_rgb(&y.to_device(&Device::Cpu)?)?;
    let k = y.dim(0)?;
    let full: Vec<f32> = (0..k)
        .flat_map(|i| split.image_bytes(i).iter().map(|&v| f32::from(v) / 256.0))
        .collect();
    let side = pixclass_data::cifar::SIDE;
    let full = Tensor::from_vec(full, (k, 3, side, side), &Device::Cpu)?;
    let rows = vec![
        grey_tiles(&x)?,
        to_rgb_tiles(&full)?,
        to_rgb_tiles(&truth)?,
        to_rgb_tiles(&argmax)?,
        to_rgb_tiles(&annealed)?,
        to_rgb_tiles(&balanced)?,
    ];
    save_png(&tile_grid(&rows, 3, 2), path)
}

impl TrainTask for ColourTask {
    fn metrics(&self) -> Vec<MetricSpec> {
        metric_specs()
    }

    fn num_train_batches(&self) -> usize {
        self.train.num_batches(self.batch_size)
    }

    fn train_loss(&mut self, epoch: usize, batch: usize) -> Result<Tensor> {
        let (x, y) = if self.extras.hflip || self.extras.reshuffle {
            let (idx, flips) = self.batch_plan(epoch, batch);
            self.train.gather(&idx, &flips, &self.device)?
        } else {
            // The study: one fixed order, no augmentation.
            self.train
                .batch(batch * self.batch_size, self.batch_size, &self.device)?
        };
        let logits = self.net.forward_t(&x, true)?;
        Ok(match &self.weights {
            Some(w) => weighted_cross_entropy(&logits, &y, w)?,
            None => cross_entropy(&logits, &y)?,
        })
    }

    fn evaluate(&mut self) -> Result<Metrics> {
        evaluate_split(
            &self.net,
            &self.val,
            &self.palette,
            self.batch_size,
            &self.extras.decode,
            Some(&self.prior),
            &self.device,
        )
    }

    fn after_epoch(&mut self, epoch: usize, out_dir: &Path) -> Result<()> {
        let n = self.val.len().min(10);
        write_samples(
            &out_dir.join(format!("samples_epoch_{epoch:02}.png")),
            &self.net,
            &self.val,
            &self.palette,
            n,
            StripDecoding {
                temperature: self.extras.decode.temperature,
                prior: &self.prior,
            },
            &self.device,
        )
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct ColourRun {
    /// The run directory.
    pub out_dir: PathBuf,
    /// The run record (every epoch's metrics by name).
    pub record: RunRecord,
    /// Total wall time of the training call.
    pub seconds: f64,
}

/// Trains a colourization net as configured, writing everything into
/// `out_dir`, which this process owns for the run (see
/// [`pixclass_runs::RunDir`]): `Start::Fresh` refuses a directory that holds
/// a run, `Start::Resume` continues the one saved there (its `config.json`
/// must match `cfg` but for the epoch count), `Start::Overwrite` replaces it.
/// The settings are checked first ([`ColourTrainConfig::validate`]) and
/// nothing is written to `out_dir` (but its lock file) until the data has
/// loaded and the net is built.
pub fn train_colouriser(
    cfg: &ColourTrainConfig,
    source: &CifarSource,
    out_dir: &Path,
    start: Start,
    progress: bool,
) -> Result<ColourRun> {
    let t0 = std::time::Instant::now();
    cfg.validate()?;
    let device = select_device(cfg.device, 0)?;
    let palette = palette_for(&cfg.model)?;
    let mut cfg = cfg.clone();
    cfg.data = source.describe();
    let dir = RunDir::open(out_dir, start)?;
    let resume = start == Start::Resume;
    if resume {
        let epochs = cfg.epochs;
        check_resume(out_dir, &cfg, |saved: ColourTrainConfig| {
            ColourTrainConfig { epochs, ..saved }
        })?;
    }
    let data_t0 = std::time::Instant::now();
    let (train, val) = prepare_data(source, cfg.class, cfg.limit, &palette, cfg.seed, cfg.rng)?;
    let varmap = VarMap::new();
    let vb = match cfg.rng {
        RngScheme::Torch => torch_var_builder(&varmap, cfg.seed, DType::F32, &device),
        RngScheme::Chacha => seeded_var_builder(&varmap, cfg.seed, DType::F32, &device),
    };
    let net = ColourNet::new(cfg.model, vb)?;
    let trainable = trainable_vars(&varmap);
    // The inputs are good: now the directory is this run's.
    dir.clear_previous()?;
    write_config(out_dir, &cfg)?;
    let data = DataProvenance {
        description: cfg.data.clone(),
        train: train.len(),
        val: val.len(),
        embedded: matches!(source, CifarSource::Embedded),
    };
    let data_seconds = data_t0.elapsed().as_secs_f64();
    let mut task = ColourTask::new(net, train, val, palette, cfg.batch_size, device)?
        .with_extras(cfg.extras, cfg.seed)?;
    write_json(&out_dir.join(CLASS_PRIOR_JSON), task.prior())?;
    let label = format!(
        "{} (batch {})",
        cfg.model.kind.display_name(),
        cfg.batch_size
    );
    let record = new_record("colourize", &label, &cfg, data, data_seconds)?;
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        adam: cfg.adam,
        out_dir: out_dir.to_path_buf(),
        resume,
        best: cfg.extras.keep_best.then(|| VAL_ACC.to_string()),
        progress,
        // Epoch by epoch like the study (its curves start after epoch 1).
        eval_first: false,
        warmup_steps: 0,
        schedule: cfg.extras.lr_schedule,
        record,
    };
    let record = fit(&mut task, &varmap, trainable, &fit_cfg)?;
    drop(dir);
    Ok(ColourRun {
        out_dir: out_dir.to_path_buf(),
        record,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
