//! The study's training task (grey in, one of NC colours per pixel out,
//! cross-entropy), its validation metrics and sample strips, and
//! [`train_colouriser`], which runs it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};

use pixclass_data::cifar::CifarSource;
use pixclass_data::{ColourSplit, Palette, RngScheme};
use pixclass_metrics::{correct_pixels, cross_entropy};
use pixclass_models::init::{seeded_var_builder, torch_var_builder};
use pixclass_models::layers::trainable_vars;
use pixclass_models::ColourNet;
use pixclass_runs::{DataProvenance, MetricSpec, Metrics, RunRecord};

use super::{palette_for, prepare_data, ColourTrainConfig};
use pixclass_runs::{RunDir, Start};

use crate::device::select_device;
use crate::engine::{LrSchedule, fit, new_record, FitConfig, TrainTask};
use crate::error::Result;
use crate::plot::{save_png, tile_grid};
use crate::run_dir::{check_resume, write_config};

/// Validation loss: the mean of per-batch mean cross-entropies.
pub const VAL_LOSS: &str = "val_loss";
/// Validation accuracy: percent of pixels whose colour class is right.
pub const VAL_ACC: &str = "val_acc";

/// The metrics of a colourization run, in column order.
pub fn metric_specs() -> Vec<MetricSpec> {
    vec![
        MetricSpec::minimise(VAL_LOSS, "validation loss", 4),
        MetricSpec::maximise(VAL_ACC, "validation accuracy", 2).with_unit("%"),
    ]
}

/// The training task of the study.
pub struct ColourTask {
    net: ColourNet,
    train: ColourSplit,
    val: ColourSplit,
    palette: Palette,
    batch_size: usize,
    device: Device,
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
    ) -> Self {
        Self {
            net,
            train,
            val,
            palette,
            batch_size: batch_size.max(1),
            device,
        }
    }

    /// The network.
    pub fn net(&self) -> &ColourNet {
        &self.net
    }
}

/// The validation metrics of `net` on `split` in eval mode: [`VAL_LOSS`]
/// (mean of per-batch mean losses) and [`VAL_ACC`] (percent of pixels).
pub fn evaluate_split(
    net: &ColourNet,
    split: &ColourSplit,
    batch_size: usize,
    device: &Device,
) -> Result<Metrics> {
    let nb = split.num_batches(batch_size);
    let (mut loss_sum, mut correct, mut total) = (0.0, 0u64, 0u64);
    for b in 0..nb {
        let (x, y) = split.batch(b * batch_size, batch_size, device)?;
        let logits = net.forward_t(&x, false)?;
        loss_sum += cross_entropy(&logits, &y)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        correct += correct_pixels(&logits, &y)?;
        total += y.elem_count() as u64;
    }
    Ok(Metrics::new()
        .with(VAL_LOSS, loss_sum / nb as f64)
        .with(VAL_ACC, 100.0 * correct as f64 / total as f64))
}

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

/// Writes a strip of the first `n` images of `split`: grey input, true
/// quantised colours, predicted colours (one row each).
pub fn write_samples(
    path: &Path,
    net: &ColourNet,
    split: &ColourSplit,
    palette: &Palette,
    n: usize,
    device: &Device,
) -> Result<()> {
    let (x, y) = split.batch(0, n, device)?;
    let logits = net.forward_t(&x, false)?;
    let pred = logits
        .argmax(1)?
        .to_dtype(DType::U32)?
        .to_device(&Device::Cpu)?;
    let truth = palette.classes_to_rgb(&y.to_device(&Device::Cpu)?)?;
    let predicted = palette.classes_to_rgb(&pred)?;
    let rows = vec![
        grey_tiles(&x)?,
        to_rgb_tiles(&truth)?,
        to_rgb_tiles(&predicted)?,
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

    fn train_loss(&mut self, _epoch: usize, batch: usize) -> Result<Tensor> {
        let (x, y) = self
            .train
            .batch(batch * self.batch_size, self.batch_size, &self.device)?;
        let logits = self.net.forward_t(&x, true)?;
        Ok(cross_entropy(&logits, &y)?)
    }

    fn evaluate(&mut self) -> Result<Metrics> {
        evaluate_split(&self.net, &self.val, self.batch_size, &self.device)
    }

    fn after_epoch(&mut self, epoch: usize, out_dir: &Path) -> Result<()> {
        let n = self.val.len().min(10);
        write_samples(
            &out_dir.join(format!("samples_epoch_{epoch:02}.png")),
            &self.net,
            &self.val,
            &self.palette,
            n,
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
    let mut task = ColourTask::new(net, train, val, palette, cfg.batch_size, device);
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
        best: None,
        progress,
        // Epoch by epoch like the study (its curves start after epoch 1).
        eval_first: false,
        warmup_steps: 0,
        schedule: LrSchedule::Constant,
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
