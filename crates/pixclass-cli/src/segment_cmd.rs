//! `pixclass segment ...`: finetune, eval, predict (Part D).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use image::{Rgb, RgbImage};
use pixclass_data::resolve_data_dir;
use pixclass_data::segment::{MaskResize, MaskRule, Preprocess, SegSet, SegSource, SegSplits};
use pixclass_metrics::Loss;
use pixclass_models::mobilenet::VOC_LABELS;
use pixclass_models::segment::{SegBackbone, SegModelKind};
use pixclass_train::adam::AdamConfig;
use pixclass_train::segment::{self, FeatureCache, FrozenMode, HeadInit, SegTrainConfig};
use pixclass_train::select_device;

use crate::colourize_cmd::Dev;
use crate::DataArgs;

#[derive(Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Deeplabv3Resnet101,
    Deeplabv3Resnet50,
    Deeplabv3Mobilenetv2Voc,
}

impl From<ModelArg> for SegModelKind {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Deeplabv3Resnet101 => SegModelKind::Deeplabv3Resnet101,
            ModelArg::Deeplabv3Resnet50 => SegModelKind::Deeplabv3Resnet50,
            ModelArg::Deeplabv3Mobilenetv2Voc => SegModelKind::Deeplabv3Mobilenetv2Voc,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LossArg {
    Ce,
    Iou,
    Dice,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FrozenArg {
    Eval,
    Train,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CacheArg {
    Off,
    Memory,
    Disk,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum HeadInitArg {
    Torch,
    Prior,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MaskResizeArg {
    Bilinear,
    Nearest,
}

/// Segmentation data and preprocessing.
#[derive(Args, Clone)]
pub struct SegDataArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Side of the square the images and masks are resized to.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Mask resizing: bilinear then threshold (the reference) or nearest.
    #[arg(long, value_enum, default_value = "bilinear")]
    mask_resize: MaskResizeArg,
    /// Foreground colour of RGB/palette masks, "R,G,B".
    #[arg(long, default_value = "128,0,0")]
    fg_colour: String,
    /// Foreground value of single-channel masks (default: any non-zero).
    #[arg(long)]
    fg_value: Option<u8>,
    /// Skip unreadable or mismatched samples (and count them) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Use only the first N images of each split.
    #[arg(long)]
    limit: Option<usize>,
}

impl SegDataArgs {
    fn preprocess(&self) -> Result<Preprocess> {
        let c: Vec<u8> = self
            .fg_colour
            .split(',')
            .map(|v| v.trim().parse::<u8>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| {
                format!(
                    "--fg-colour {:?}: expected R,G,B in 0..=255",
                    self.fg_colour
                )
            })?;
        let [r, g, b] = c[..] else {
            bail!(
                "--fg-colour {:?}: expected three values R,G,B",
                self.fg_colour
            );
        };
        Ok(Preprocess {
            size: self.size,
            mask_resize: match self.mask_resize {
                MaskResizeArg::Bilinear => MaskResize::Bilinear,
                MaskResizeArg::Nearest => MaskResize::Nearest,
            },
            rule: MaskRule {
                colour: [r, g, b],
                value: self.fg_value,
            },
        })
    }
}

/// The segmentation data named by the options; with nothing explicit and no
/// data on disk, the embedded sample (loudly).
pub fn seg_source(args: &DataArgs) -> Result<SegSource> {
    if args.embedded {
        return Ok(SegSource::Embedded);
    }
    let explicit = args.data_dir.is_some()
        || std::env::var_os(pixclass_data::paths::DATA_ENV).is_some_and(|v| !v.is_empty());
    let dir = resolve_data_dir(args.data_dir.as_deref());
    match SegSource::discover(&dir) {
        Some(s) => Ok(s),
        None if explicit => bail!(
            "no segmentation data under {}: expected flowers17/ (jpg/ + trimaps/ + splits.json or datasplits.mat) \
             or images/ + masks/ (`pixclass data fetch flowers17`)",
            dir.display()
        ),
        None => {
            tracing::warn!(
                "no segmentation data under {}: using the EMBEDDED SAMPLE (36 train / 12 val Oxford-17 images). \
                 Full results need Oxford-17: `pixclass data fetch flowers17`",
                dir.display()
            );
            Ok(SegSource::Embedded)
        }
    }
}

/// Resolves `--weights`: a file path, or a registered name found in the
/// weights cache; `None` for the embedded MobileNet weights.
pub fn resolve_weights(kind: SegModelKind, weights: Option<&str>) -> Result<Option<PathBuf>> {
    let name = match weights {
        Some(w) if Path::new(w).is_file() => return Ok(Some(PathBuf::from(w))),
        Some(w) => w.to_string(),
        None => match kind.default_weights() {
            Some(n) => n.to_string(),
            None => return Ok(None),
        },
    };
    crate::weights_cmd::cached_weights(&name)
}

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Fine-tune the last 1x1 conv of a pretrained DeepLabV3 for foreground masks.
    Finetune(Box<FinetuneArgs>),
    /// Validation metrics of a fine-tuned run.
    Eval {
        /// Run directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: Dev,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Segment a photo: the fine-tuned mask (--checkpoint), or the pretrained
    /// model's 21 VOC classes (--model) as a coloured overlay with a legend.
    Predict {
        /// Run directory of a fine-tuned model.
        #[arg(long, conflicts_with = "model")]
        checkpoint: Option<PathBuf>,
        /// A pretrained model (21 VOC classes).
        #[arg(long, value_enum)]
        model: Option<ModelArg>,
        /// Weights of --model: a file or a registered name (default: embedded / registered).
        #[arg(long)]
        weights: Option<String>,
        /// Input photo (PNG or JPEG).
        #[arg(long)]
        input: PathBuf,
        /// Output PNG.
        #[arg(long)]
        output: PathBuf,
        /// Side of the square the photo is resized to for the network
        /// (default: as trained for --checkpoint; 257 for the MobileNet model, 520 for ResNets).
        #[arg(long)]
        size: Option<u32>,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: Dev,
    },
}

/// Options of `segment finetune` (defaults: SPEC §B.2 except
/// `--frozen-mode eval`; see `--reference`).
#[derive(Args, Clone)]
pub struct FinetuneArgs {
    /// Pretrained model.
    #[arg(long, value_enum, default_value = "deeplabv3-mobilenetv2-voc")]
    model: ModelArg,
    /// Weights: a file, or a registered name (default: embedded / the model's registered weights).
    #[arg(long)]
    weights: Option<String>,
    /// Loss.
    #[arg(long, value_enum, default_value = "ce")]
    loss: LossArg,
    /// Learning rate of Adam.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Training batch (the last partial batch is dropped).
    #[arg(long, default_value_t = 128)]
    train_batch_size: usize,
    /// Validation batch.
    #[arg(long, default_value_t = 256)]
    val_batch_size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Seed of the head's init and the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frozen layers in eval mode (cached features) or train mode (the reference's quirk).
    #[arg(long, value_enum, default_value = "eval")]
    frozen_mode: FrozenArg,
    /// Feature cache.
    #[arg(long, value_enum, default_value = "disk")]
    cache: CacheArg,
    /// Folder of the feature cache (default: $PIXCLASS_CACHE, else ~/.cache/pixclass).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Initialisation of the new head (default: prior; --reference: torch).
    #[arg(long, value_enum)]
    head_init: Option<HeadInitArg>,
    /// Standardise the frozen features per channel (training-set mean and
    /// std) before the new head (default: on; --reference: off).
    #[arg(long)]
    feature_norm: Option<bool>,
    /// With --loss iou|dice: cross-entropy alone for this many first epochs
    /// (default: 0; no effect with --loss ce).
    #[arg(long)]
    ce_warmup_epochs: Option<usize>,
    /// With --loss iou|dice: train on `soft loss + W · cross-entropy`
    /// (default: 1; --reference: 0, the pure soft loss; no effect with --loss ce).
    #[arg(long, value_name = "W")]
    ce_weight: Option<f64>,
    /// Linear learning-rate warm-up steps (default: 0).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Everything exactly as the reference (PyTorch head init on raw
    /// features, the pure soft loss: --ce-weight 0);
    /// explicit options still win.
    #[arg(long)]
    reference: bool,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Dev,
    #[command(flatten)]
    data: SegDataArgs,
    /// Run directory.
    #[arg(long, default_value = "runs/segment")]
    out: PathBuf,
    /// Continue the interrupted run in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
}

impl FinetuneArgs {
    fn config(&self) -> Result<SegTrainConfig> {
        let kind: SegModelKind = self.model.into();
        let base = if self.reference {
            SegTrainConfig::reference()
        } else {
            SegTrainConfig::default()
        };
        let head_init = match self.head_init {
            Some(HeadInitArg::Torch) => HeadInit::Torch,
            Some(HeadInitArg::Prior) => HeadInit::Prior,
            None => base.head_init,
        };
        Ok(SegTrainConfig {
            model: kind,
            weights: resolve_weights(kind, self.weights.as_deref())?,
            loss: match self.loss {
                LossArg::Ce => Loss::Ce,
                LossArg::Iou => Loss::Iou,
                LossArg::Dice => Loss::Dice,
            },
            adam: AdamConfig {
                lr: self.lr,
                ..AdamConfig::default()
            },
            warmup_steps: self.warmup_steps.unwrap_or(base.warmup_steps),
            ce_warmup_epochs: self.ce_warmup_epochs.unwrap_or(base.ce_warmup_epochs),
            ce_weight: self.ce_weight.unwrap_or(base.ce_weight),
            head_init,
            feature_norm: self.feature_norm.unwrap_or(base.feature_norm),
            train_batch_size: self.train_batch_size,
            val_batch_size: self.val_batch_size,
            epochs: self.epochs,
            seed: self.seed,
            frozen_mode: match self.frozen_mode {
                FrozenArg::Eval => FrozenMode::Eval,
                FrozenArg::Train => FrozenMode::Train,
            },
            cache: match self.cache {
                CacheArg::Off => FeatureCache::Off,
                CacheArg::Memory => FeatureCache::Memory,
                CacheArg::Disk => FeatureCache::Disk,
            },
            cache_dir: self.cache_dir.clone(),
            preprocess: self.data.preprocess()?,
            limit: self.data.limit,
            skip_bad: self.data.skip_bad,
            device: self.device.into(),
            data: String::new(),
        })
    }
}

fn splits_for(data: &DataArgs) -> Result<SegSplits> {
    Ok(seg_source(data)?.splits()?)
}

pub fn run(cmd: SegmentCmd, progress: bool) -> Result<()> {
    match cmd {
        SegmentCmd::Finetune(args) => {
            let cfg = args.config()?;
            let splits = splits_for(&args.data.data)?;
            let (dir, resuming) = match &args.resume {
                Some(d) => (d.clone(), true),
                None => (args.out.clone(), false),
            };
            let run = segment::finetune(&cfg, splits, &dir, resuming, progress)?;
            let best = run
                .rows
                .iter()
                .max_by(|a, b| a.values[1].total_cmp(&b.values[1]))
                .context("no epochs ran")?;
            println!(
                "{} ({} loss): best val thresholded mIOU {:.4} (epoch {}), foreground IoU {:.4}, mIoU {:.4}; {:.0} s; outputs in {}",
                cfg.model.name(),
                cfg.loss.name(),
                best.values[1],
                best.epoch,
                best.values[2],
                best.values[3],
                run.seconds,
                run.out_dir.display()
            );
            Ok(())
        }
        SegmentCmd::Eval {
            checkpoint,
            device,
            data,
        } => {
            let model = segment::load_segmenter(&checkpoint, device.into())?;
            let splits = splits_for(&data)?.limit(model.config.limit);
            let val = SegSet::load(&splits.val, &model.config.preprocess, model.config.skip_bad)?;
            let m = segment::evaluate_masks(&model, &val)?;
            println!(
                "val thresholded mIOU {:.4}, foreground IoU {:.4}, mIoU {:.4}, pixel accuracy {:.4} on {} images ({})",
                m.miou_thr,
                m.iou_fg,
                m.miou,
                m.pixel_acc,
                val.len(),
                splits.description
            );
            Ok(())
        }
        SegmentCmd::Predict {
            checkpoint,
            model,
            weights,
            input,
            output,
            size,
            device,
        } => match (checkpoint, model) {
            (Some(dir), _) => {
                let m = segment::load_segmenter(&dir, device.into())?;
                let size = size.unwrap_or(m.config.preprocess.size);
                let (w, h, fg) = segment::predict_photo(&m, &input, &output, size)?;
                println!(
                    "{}: {w}x{h}, {:.1} % foreground -> {}",
                    input.display(),
                    100.0 * fg,
                    output.display()
                );
                Ok(())
            }
            (None, Some(kind)) => {
                let kind: SegModelKind = kind.into();
                let dev = select_device(device.into(), 0)?;
                let path = resolve_weights(kind, weights.as_deref())?;
                let net = SegBackbone::load(kind, path.as_deref(), &dev)?;
                // The sizes the pretrained models were made for.
                let native = match kind {
                    SegModelKind::Deeplabv3Mobilenetv2Voc => 257,
                    _ => 520,
                };
                let found = predict_voc(&net, &input, &output, size.unwrap_or(native), &dev)?;
                println!("{}: {found} -> {}", input.display(), output.display());
                Ok(())
            }
            (None, None) => bail!("segment predict needs --checkpoint DIR or --model NAME"),
        },
    }
}

/// The VOC colour map (PASCAL's bit-interleaved palette).
fn voc_colour(class: usize) -> [u8; 3] {
    let mut c = [0u8; 3];
    let mut id = class;
    for shift in (0..8).rev() {
        for (ch, v) in c.iter_mut().enumerate() {
            *v |= (((id >> ch) & 1) as u8) << shift;
        }
        id >>= 3;
        if id == 0 {
            break;
        }
    }
    c
}

/// Runs a 21-class model on a photo and writes photo | overlay | legend.
fn predict_voc(
    net: &SegBackbone,
    input: &Path,
    output: &Path,
    size: u32,
    dev: &candle_core::Device,
) -> Result<String> {
    let photo = image::open(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .to_rgb8();
    let (w, h) = photo.dimensions();
    let (mean, std) = net.normalisation();
    let set = SegSet::from_photo(&photo, size);
    let x = set.images_tensor(&[0], mean, std, dev)?;
    let logits = net.forward(&x)?;
    let classes: Vec<u8> = logits
        .argmax(1)?
        .to_dtype(candle_core::DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    // Upsample the class map (nearest) to the photo and blend.
    let overlay = RgbImage::from_fn(w, h, |x, y| {
        let c = classes[set.nearest_index(x, y, w, h)] as usize;
        let p = photo.get_pixel(x, y).0;
        if c == 0 {
            Rgb(p.map(|v| v / 2))
        } else {
            let k = voc_colour(c);
            Rgb([0, 1, 2].map(|i| ((p[i] as u16 + 2 * k[i] as u16) / 3) as u8))
        }
    });
    let mut counts = [0usize; 21];
    for &c in &classes {
        if let Some(n) = counts.get_mut(c as usize) {
            *n += 1;
        }
    }
    // "<class> <share> %" for every class found (background left out).
    let found: Vec<(String, [u8; 3])> = (1..21)
        .filter(|&c| counts[c] > 0)
        .map(|c| {
            let share = 100.0 * counts[c] as f64 / classes.len() as f64;
            (format!("{} {share:.1} %", VOC_LABELS[c]), voc_colour(c))
        })
        .collect();
    let legend = pixclass_train::plot::legend(&found, h)?;
    let mut out = RgbImage::from_pixel(2 * w + legend.width() + 8, h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &photo, 0, 0);
    image::imageops::replace(&mut out, &overlay, (w + 4) as i64, 0);
    image::imageops::replace(&mut out, &legend, (2 * w + 8) as i64, 0);
    if let Some(d) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    out.save(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(if found.is_empty() {
        "background only".to_string()
    } else {
        found
            .into_iter()
            .map(|(label, _)| label)
            .collect::<Vec<_>>()
            .join(", ")
    })
}
