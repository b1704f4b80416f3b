//! The colourization study (SPEC §A): data preparation, the training task,
//! the batch-size sweep, evaluation of saved runs and colourizing photos.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use pixclass_data::cifar::{CifarSet, CifarSource, Split, SIDE};
use pixclass_data::{split_orders, ColourSplit, Palette, RngScheme};
use pixclass_metrics::{correct_pixels, cross_entropy};
use pixclass_models::init::{seeded_var_builder, torch_var_builder};
use pixclass_models::layers::trainable_vars;
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};

use crate::adam::AdamConfig;
use crate::checkpoint::{self, EpochRow};
use crate::device::{select_device, DeviceKind};
use crate::engine::{fit, FitConfig, TrainTask};
use crate::error::{Result, TrainError};
use crate::plot::{draw_panels, save_png, tile_grid, Panel, Series};

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

/// Validation loss (mean of per-batch mean losses) and accuracy (percent of
/// pixels) of `net` on `split`, in eval mode.
pub fn evaluate_split(
    net: &ColourNet,
    split: &ColourSplit,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64)> {
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
    Ok((loss_sum / nb as f64, 100.0 * correct as f64 / total as f64))
}

fn to_rgb_tiles(rgb: &Tensor) -> Result<Vec<RgbImage>> {
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

fn grey_tiles(grey: &Tensor) -> Result<Vec<RgbImage>> {
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
    fn metric_names(&self) -> Vec<String> {
        vec!["val_loss".into(), "val_acc".into()]
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

    fn evaluate(&mut self) -> Result<Vec<f64>> {
        let (loss, acc) = evaluate_split(&self.net, &self.val, self.batch_size, &self.device)?;
        Ok(vec![loss, acc])
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
#[derive(Debug, Clone, Serialize)]
pub struct ColourRun {
    /// The run directory.
    pub out_dir: PathBuf,
    /// Metrics per epoch.
    pub rows: Vec<EpochRow>,
    /// Total wall time of the training call.
    pub seconds: f64,
}

/// The reference palette with `num_colours` colours.
pub fn palette_for(cfg: &ColourNetConfig) -> Result<Palette> {
    Ok(Palette::reference(cfg.num_colours)?)
}

/// Trains a colourization net as configured, writing everything into
/// `out_dir`. With `resume`, continues the run saved there (its
/// `config.json` must match `cfg`).
pub fn train_colouriser(
    cfg: &ColourTrainConfig,
    source: &CifarSource,
    out_dir: &Path,
    resume: bool,
    progress: bool,
) -> Result<ColourRun> {
    let t0 = std::time::Instant::now();
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(TrainError::Config(
            "batch size and epochs must be at least 1".into(),
        ));
    }
    let device = select_device(cfg.device, 0)?;
    let palette = palette_for(&cfg.model)?;
    let mut cfg = cfg.clone();
    cfg.data = source.describe();
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let config_path = out_dir.join("config.json");
    if resume {
        let saved: ColourTrainConfig = read_json(&config_path)?;
        let same = ColourTrainConfig {
            epochs: cfg.epochs,
            ..saved.clone()
        };
        if same != cfg {
            return Err(TrainError::Config(format!(
                "--resume: {} was written by a run with other settings; resume it with the same options",
                config_path.display()
            )));
        }
    }
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    checkpoint::write_atomic(&config_path, json.as_bytes())?;
    let (train, val) = prepare_data(source, cfg.class, cfg.limit, &palette, cfg.seed, cfg.rng)?;
    let varmap = VarMap::new();
    let vb = match cfg.rng {
        RngScheme::Torch => torch_var_builder(&varmap, cfg.seed, DType::F32, &device),
        RngScheme::Chacha => seeded_var_builder(&varmap, cfg.seed, DType::F32, &device),
    };
    let net = ColourNet::new(cfg.model, vb)?;
    let trainable = trainable_vars(&varmap);
    let mut task = ColourTask::new(net, train, val, palette, cfg.batch_size, device);
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        adam: cfg.adam,
        out_dir: out_dir.to_path_buf(),
        resume,
        best: None,
        progress,
        label: format!(
            "{} (batch {})",
            cfg.model.kind.display_name(),
            cfg.batch_size
        ),
        warmup_steps: 0,
    };
    let rows = fit(&mut task, &varmap, trainable, &fit_cfg)?;
    Ok(ColourRun {
        out_dir: out_dir.to_path_buf(),
        rows,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Reads a JSON file into `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("bad JSON: {e}"),
    })
}

/// A trained net loaded from a run directory.
pub struct LoadedColouriser {
    /// The run's configuration.
    pub config: ColourTrainConfig,
    /// The net with its trained weights.
    pub net: ColourNet,
    /// The device it lives on.
    pub device: Device,
}

/// Loads the latest checkpoint of a run directory onto `device`.
pub fn load_colouriser(dir: &Path, device: DeviceKind) -> Result<LoadedColouriser> {
    let config: ColourTrainConfig = read_json(&dir.join("config.json"))?;
    let device = select_device(device, 0)?;
    let path = dir.join(checkpoint::LATEST);
    let loaded = checkpoint::load(&path)?;
    let varmap = VarMap::new();
    let net = ColourNet::new(
        config.model,
        seeded_var_builder(&varmap, 0, DType::F32, &device),
    )?;
    checkpoint::restore_vars(&varmap, &loaded.model, &path)?;
    Ok(LoadedColouriser {
        config,
        net,
        device,
    })
}

/// Colourizes a photo of any size: grey = mean of R, G, B (1/256 scale),
/// cropped to a multiple of 4 (and first downscaled so its longer side is at
/// most `max_side`); writes grey input and result side by side.
pub fn colourize_image(
    model: &LoadedColouriser,
    input: &Path,
    output: &Path,
    max_side: u32,
) -> Result<(u32, u32)> {
    let bad = |r: String| TrainError::Plot {
        path: input.to_path_buf(),
        reason: r,
    };
    let img = image::open(input)
        .map_err(|e| bad(e.to_string()))?
        .to_rgb8();
    let img = if img.width().max(img.height()) > max_side {
        let s = max_side as f64 / img.width().max(img.height()) as f64;
        let (w, h) = (
            ((img.width() as f64 * s).round() as u32).max(4),
            ((img.height() as f64 * s).round() as u32).max(4),
        );
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let (w, h) = (img.width() / 4 * 4, img.height() / 4 * 4);
    if w == 0 || h == 0 {
        return Err(bad(format!(
            "image is {}x{}; at least 4x4 pixels are needed",
            img.width(),
            img.height()
        )));
    }
    let mut grey = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel(x, y);
            grey.push(pixclass_data::colourize::grey_of(p[0], p[1], p[2]));
        }
    }
    let nic = model.config.model.in_channels;
    if nic != 1 {
        return Err(TrainError::Config(format!(
            "the model takes {nic} input channels; colourizing needs a grey (1-channel) model"
        )));
    }
    let x = Tensor::from_vec(grey, (1, 1, h as usize, w as usize), &model.device)?;
    let logits = model.net.forward_t(&x, false)?;
    let pred = logits
        .argmax(1)?
        .to_dtype(DType::U32)?
        .to_device(&Device::Cpu)?;
    let palette = palette_for(&model.config.model)?;
    let rgb = palette.classes_to_rgb(&pred)?;
    let tiles = vec![vec![
        grey_tiles(&x)?.remove(0),
        to_rgb_tiles(&rgb)?.remove(0),
    ]];
    save_png(&tile_grid(&tiles, 1, 4), output)?;
    Ok((w, h))
}

/// One run of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Batch size.
    pub batch_size: usize,
    /// Final validation loss.
    pub val_loss: f64,
    /// Final validation accuracy (percent).
    pub val_acc: f64,
    /// Final training loss.
    pub train_loss: f64,
    /// Wall time of the run's epochs.
    pub seconds: f64,
    /// Validation loss per epoch.
    pub curve: Vec<f64>,
}

/// Trains one run per batch size into `out_dir/batch_NNN`, then writes
/// `sweep.csv`, `sweep.md` and `sweep.png` into `out_dir`. A run directory
/// that already holds a checkpoint is resumed (a finished run is reused as
/// it is), so an interrupted sweep continues where it stopped; its settings
/// must match.
pub fn sweep(
    base: &ColourTrainConfig,
    batch_sizes: &[usize],
    source: &CifarSource,
    out_dir: &Path,
    progress: bool,
) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    for &bs in batch_sizes {
        let cfg = ColourTrainConfig {
            batch_size: bs,
            ..base.clone()
        };
        let dir = out_dir.join(format!("batch_{bs:03}"));
        let resume = dir.join(checkpoint::LATEST).is_file();
        let run = train_colouriser(&cfg, source, &dir, resume, progress)?;
        let last = run
            .rows
            .last()
            .ok_or_else(|| TrainError::Config("no epochs".into()))?;
        rows.push(SweepRow {
            batch_size: bs,
            val_loss: last.values[0],
            val_acc: last.values[1],
            train_loss: last.train_loss,
            // Training time summed over epochs, so reused runs keep theirs.
            seconds: run.rows.iter().map(|r| r.seconds).sum(),
            curve: run.rows.iter().map(|r| r.values[0]).collect(),
        });
    }
    write_sweep(out_dir, base.model.kind, &rows)?;
    Ok(rows)
}

/// Writes the sweep's CSV, markdown table and comparison plot.
pub fn write_sweep(out_dir: &Path, kind: ColourModelKind, rows: &[SweepRow]) -> Result<()> {
    let mut csv = String::from("batch_size,val_loss,val_acc,train_loss,seconds\n");
    let mut md = format!("| {} batch size | val loss | val accuracy (%) | train loss | wall time (s) |\n|---:|---:|---:|---:|---:|\n", kind.display_name());
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{:.1}\n",
            r.batch_size, r.val_loss, r.val_acc, r.train_loss, r.seconds
        ));
        md.push_str(&format!(
            "| {} | {:.3} | {:.1} | {:.3} | {:.0} |\n",
            r.batch_size, r.val_loss, r.val_acc, r.train_loss, r.seconds
        ));
    }
    checkpoint::write_atomic(&out_dir.join("sweep.csv"), csv.as_bytes())?;
    checkpoint::write_atomic(&out_dir.join("sweep.md"), md.as_bytes())?;
    let bs = |f: fn(&SweepRow) -> f64| {
        rows.iter()
            .map(|r| (r.batch_size as f64, f(r)))
            .collect::<Vec<_>>()
    };
    let panels = [
        Panel {
            title: "final val accuracy".into(),
            x_label: "batch size".into(),
            y_label: "accuracy (%)".into(),
            series: vec![Series {
                label: "val_acc".into(),
                points: bs(|r| r.val_acc),
            }],
            log_x: true,
        },
        Panel {
            title: "final val loss".into(),
            x_label: "batch size".into(),
            y_label: "loss".into(),
            series: vec![Series {
                label: "val_loss".into(),
                points: bs(|r| r.val_loss),
            }],
            log_x: true,
        },
        Panel {
            title: "val loss per epoch".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: rows
                .iter()
                .map(|r| Series {
                    label: format!("batch {}", r.batch_size),
                    points: r
                        .curve
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ((i + 1) as f64, *v))
                        .collect(),
                })
                .collect(),
            log_x: false,
        },
    ];
    draw_panels(&out_dir.join("sweep.png"), &panels, 480, 380)
}

/// The sample side length of CIFAR images (for callers building inputs).
pub const IMAGE_SIDE: usize = SIDE;
