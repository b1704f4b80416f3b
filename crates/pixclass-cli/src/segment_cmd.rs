//! `pixclass segment ...`: finetune, eval, predict (Part D).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use pixclass_data::segment::{MaskResize, MaskRule, Preprocess, SegSet, SegSplits};
use pixclass_metrics::Loss;
use pixclass_models::segment::{SegBackbone, SegModelKind};
use pixclass_train::adam::AdamConfig;
use pixclass_train::engine::LrSchedule;
use pixclass_train::segment::task::{VAL_IOU_FG, VAL_MIOU, VAL_MIOU_THR};
use pixclass_train::segment::{self, FeatureCache, FrozenMode, HeadInit, SegTrainConfig};
use pixclass_train::{select_device, DeviceKind};

use pixclass_data::SegSource;
use pixclass_runs::Start;

use crate::{resume, DataArgs};

/// Segmentation data and preprocessing.
#[derive(Args, Clone)]
pub struct SegDataArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Side of the square the images and masks are resized to, 32..=1024
    /// (default: the MobileNet model's native 257, upsampled to 385 by the
    /// default fine-tuning recipe; the study's 224 for the ResNets).
    #[arg(long)]
    size: Option<u32>,
    /// Mask resizing: bilinear then threshold (the reference) or nearest.
    #[arg(long, value_enum, default_value = "bilinear")]
    mask_resize: MaskResize,
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
    /// The preprocessing, at `default_size` unless `--size`.
    fn preprocess(&self, default_size: u32) -> Result<Preprocess> {
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
            size: self.size.unwrap_or(default_size),
            mask_resize: self.mask_resize,
            rule: MaskRule {
                colour: [r, g, b],
                value: self.fg_value,
            },
        })
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
    Ok(Some(pixclass_data::weights::cached_weights(&name)?))
}

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Fine-tune the last 1x1 conv of a pretrained DeepLabV3 for foreground masks.
    Finetune(Box<FinetuneArgs>),
    /// Validation metrics of a fine-tuned run.
    /// Validation metrics of a fine-tuned run (--checkpoint), or of a
    /// pretrained 21-class model zero-shot (--model M --class NAME|ID: that
    /// VOC class vs the rest; writes a run record and prediction panels to --out).
    Eval {
        /// Run directory of a fine-tuned model.
        #[arg(long, conflicts_with = "model", required_unless_present = "model")]
        checkpoint: Option<PathBuf>,
        /// A pretrained model, scored zero-shot.
        #[arg(long, value_enum, requires = "class")]
        model: Option<SegModelKind>,
        /// The VOC class that is foreground, by name (`pottedplant`, `horse`) or id 1..=20.
        #[arg(long)]
        class: Option<String>,
        /// Weights of --model: a file or a registered name (default: embedded / registered).
        #[arg(long)]
        weights: Option<String>,
        /// Run directory of a zero-shot evaluation.
        #[arg(long, default_value = "runs/zero-shot")]
        out: PathBuf,
        /// Replace a run already in --out.
        #[arg(long)]
        overwrite: bool,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        #[command(flatten)]
        data: SegDataArgs,
    },
    /// Segment a photo: the fine-tuned mask (--checkpoint), or the pretrained
    /// model's 21 VOC classes (--model) as a coloured overlay with a legend.
    Predict {
        /// Run directory of a fine-tuned model.
        #[arg(long, conflicts_with = "model")]
        checkpoint: Option<PathBuf>,
        /// A pretrained model (21 VOC classes).
        #[arg(long, value_enum)]
        model: Option<SegModelKind>,
        /// Weights of --model: a file or a registered name (default: embedded / registered).
        #[arg(long)]
        weights: Option<String>,
        /// Input photo (PNG or JPEG).
        #[arg(long)]
        input: PathBuf,
        /// Output PNG.
        #[arg(long)]
        output: PathBuf,
        /// Side of the square the photo is resized to for the network, 32..=2048
        /// (default: as trained for --checkpoint; 257 for the MobileNet model, 520 for ResNets).
        #[arg(long)]
        size: Option<u32>,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
}

/// Options of `segment finetune` (defaults: SPEC §B.2 except
/// `--frozen-mode eval`; see `--reference`).
#[derive(Args, Clone)]
pub struct FinetuneArgs {
    /// Pretrained model.
    #[arg(long, value_enum, default_value = "deeplabv3-mobilenetv2-voc")]
    model: SegModelKind,
    /// Weights: a file, or a registered name (default: embedded / the model's registered weights).
    #[arg(long)]
    weights: Option<String>,
    /// Loss.
    #[arg(long, value_enum, default_value = "ce")]
    loss: Loss,
    /// Learning rate of Adam, in (0, 10] (default: 0.01; --reference: 0.05).
    #[arg(long)]
    lr: Option<f64>,
    /// Training batch, 1..=4096; the last partial batch is dropped
    /// (default: 16; --reference: 128).
    #[arg(long)]
    train_batch_size: Option<usize>,
    /// Validation batch (1..=4096).
    #[arg(long, default_value_t = 256)]
    val_batch_size: usize,
    /// Epochs (1..=100000).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Seed of the head's init and the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frozen layers in eval mode (cached features) or train mode (the reference's quirk).
    #[arg(long, value_enum, default_value = "eval")]
    frozen_mode: FrozenMode,
    /// Feature cache.
    #[arg(long, value_enum, default_value = "disk")]
    cache: FeatureCache,
    /// Folder of the feature cache (default: $PIXCLASS_CACHE, else ~/.cache/pixclass).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Initialisation of the new head: torch, prior, or class:NAME|ID (the
    /// pretrained classifier's background and VOC class NAME: epoch 0 scores
    /// what `segment eval --model M --class NAME` does) (default: prior;
    /// --reference: torch).
    #[arg(long, value_name = "INIT")]
    head_init: Option<HeadInit>,
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
    /// Learning-rate schedule over the run's steps (default: the recipe's); its horizon is
    /// epochs x batches, so extending a run with --epochs stretches the rest of it.
    #[arg(long, value_enum)]
    lr_schedule: Option<LrSchedule>,
    /// Everything exactly as the reference (batch 128, lr 0.05 constant,
    /// PyTorch head init on raw features, the pure soft loss: --ce-weight 0;
    /// the model's native size); explicit options still win.
    #[arg(long)]
    reference: bool,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    #[command(flatten)]
    data: SegDataArgs,
    /// Run directory.
    #[arg(long, default_value = "runs/segment")]
    out: PathBuf,
    /// Continue the run in this directory with its saved settings
    /// (options given as well must agree with them; --epochs may extend it).
    #[arg(long, conflicts_with = "overwrite")]
    resume: Option<PathBuf>,
    /// Start over in --out even if it holds a run (its files are removed
    /// once the new run's model and data have loaded).
    #[arg(long)]
    overwrite: bool,
}

impl FinetuneArgs {
    fn config(&self) -> Result<SegTrainConfig> {
        let kind = self.model;
        let base = if self.reference {
            SegTrainConfig::reference()
        } else {
            SegTrainConfig::default()
        };
        let head_init = self.head_init.unwrap_or(base.head_init);
        Ok(SegTrainConfig {
            model: kind,
            weights: resolve_weights(kind, self.weights.as_deref())?,
            loss: self.loss,
            adam: AdamConfig {
                lr: self.lr.unwrap_or(base.adam.lr),
                ..AdamConfig::default()
            },
            warmup_steps: self.warmup_steps.unwrap_or(base.warmup_steps),
            lr_schedule: self.lr_schedule.unwrap_or(base.lr_schedule),
            ce_warmup_epochs: self.ce_warmup_epochs.unwrap_or(base.ce_warmup_epochs),
            ce_weight: self.ce_weight.unwrap_or(base.ce_weight),
            head_init,
            feature_norm: self.feature_norm.unwrap_or(base.feature_norm),
            train_batch_size: self.train_batch_size.unwrap_or(base.train_batch_size),
            val_batch_size: self.val_batch_size,
            epochs: self.epochs,
            seed: self.seed,
            frozen_mode: self.frozen_mode,
            cache: self.cache,
            cache_dir: self.cache_dir.clone(),
            preprocess: self
                .data
                .preprocess(SegTrainConfig::default_size(kind, self.reference))?,
            limit: self.data.limit,
            skip_bad: self.data.skip_bad,
            device: self.device,
            data: String::new(),
            data_dir: None,
        })
    }
}

fn splits_for(data: &DataArgs) -> Result<SegSplits> {
    Ok(data.segmentation()?.splits()?)
}

/// What each fine-tuning option sets in a saved `SegTrainConfig` (for
/// `--resume DIR` with options).
const SEG_OPTIONS: resume::OptionMap = &[
    ("model", &["/model"]),
    ("weights", &["/weights"]),
    ("loss", &["/loss"]),
    ("lr", &["/adam/lr"]),
    ("train_batch_size", &["/train_batch_size"]),
    ("val_batch_size", &["/val_batch_size"]),
    ("seed", &["/seed"]),
    ("frozen_mode", &["/frozen_mode"]),
    ("cache", &["/cache"]),
    ("cache_dir", &["/cache_dir"]),
    ("head_init", &["/head_init"]),
    ("feature_norm", &["/feature_norm"]),
    ("ce_warmup_epochs", &["/ce_warmup_epochs"]),
    ("ce_weight", &["/ce_weight"]),
    ("warmup_steps", &["/warmup_steps"]),
    ("lr_schedule", &["/lr_schedule"]),
    (
        "reference",
        &[
            "/head_init",
            "/feature_norm",
            "/ce_weight",
            "/adam/lr",
            "/train_batch_size",
            "/lr_schedule",
            "/preprocess/size",
        ],
    ),
    ("device", &["/device"]),
    ("size", &["/preprocess/size"]),
    ("mask_resize", &["/preprocess/mask_resize"]),
    ("fg_colour", &["/preprocess/rule/colour"]),
    ("fg_value", &["/preprocess/rule/value"]),
    ("skip_bad", &["/skip_bad"]),
    ("limit", &["/limit"]),
];

pub fn run(cmd: SegmentCmd, progress: bool, matches: Option<&clap::ArgMatches>) -> Result<()> {
    match cmd {
        SegmentCmd::Finetune(args) => {
            let m = matches.context("the command line's matches")?;
            let (dir, start, cfg, data) = match &args.resume {
                Some(dir) => {
                    let saved: SegTrainConfig =
                        resume::resumed(dir, &args.config()?, m, SEG_OPTIONS, "/epochs")?;
                    let data = if resume::explicit(m, "data_dir") || resume::explicit(m, "embedded")
                    {
                        args.data.data.clone()
                    } else {
                        DataArgs::from_recorded(&saved.data_dir)
                    };
                    (dir.clone(), Start::Resume, saved, data)
                }
                None => {
                    let start = if args.overwrite {
                        Start::Overwrite
                    } else {
                        Start::Fresh
                    };
                    (
                        args.out.clone(),
                        start,
                        args.config()?,
                        args.data.data.clone(),
                    )
                }
            };
            let source = data.segmentation()?;
            let cfg = SegTrainConfig {
                data_dir: data.recorded_dir(matches!(source, SegSource::Embedded)),
                ..cfg
            };
            let run = segment::finetune(&cfg, source.splits()?, &dir, start, progress)?;
            let r = &run.record;
            let best = r.best_by(VAL_MIOU_THR).context("no epochs ran")?;
            let v = |m: &str| best.get(m).context("missing metric");
            println!(
                "{} ({} loss): best val thresholded mIOU {:.4} (epoch {}), foreground IoU {:.4}, mIoU {:.4}; {:.0} s; outputs in {}",
                cfg.model.name(),
                cfg.loss.name(),
                v(VAL_MIOU_THR)?,
                best.epoch,
                v(VAL_IOU_FG)?,
                v(VAL_MIOU)?,
                run.seconds,
                run.out_dir.display()
            );
            Ok(())
        }
        SegmentCmd::Eval {
            checkpoint,
            model,
            class,
            weights,
            out,
            overwrite,
            device,
            data,
        } => {
            let Some(checkpoint) = checkpoint else {
                let kind = model.context("segment eval needs --checkpoint DIR or --model NAME")?;
                let class = segment::voc_class(class.as_deref().unwrap_or_default())?;
                let source = data.data.segmentation()?;
                let cfg = segment::ZeroShotConfig {
                    model: kind,
                    weights: resolve_weights(kind, weights.as_deref())?,
                    class,
                    preprocess: data.preprocess(kind.finetune_size())?,
                    limit: data.limit,
                    skip_bad: data.skip_bad,
                    device,
                    data: String::new(),
                    data_dir: data
                        .data
                        .recorded_dir(matches!(source, SegSource::Embedded)),
                };
                let start = if overwrite {
                    Start::Overwrite
                } else {
                    Start::Fresh
                };
                let run = segment::zero_shot(&cfg, source.splits()?, &out, start)?;
                let m = run.metrics;
                println!(
                    "{} zero-shot, class {} vs the rest: val thresholded mIOU {:.4}, foreground IoU {:.4}, mIoU {:.4}, pixel accuracy {:.4} on {} images; outputs in {}",
                    kind.name(),
                    pixclass_models::mobilenet::VOC_LABELS[class],
                    m.miou_thr,
                    m.iou_fg,
                    m.miou,
                    m.pixel_acc,
                    run.record.data.val,
                    out.display()
                );
                return Ok(());
            };
            let data = data.data;
            let model = segment::load_segmenter(&checkpoint, device)?;
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
                let m = segment::load_segmenter(&dir, device)?;
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
                let dev = select_device(device, 0)?;
                let path = resolve_weights(kind, weights.as_deref())?;
                let net = SegBackbone::load(kind, path.as_deref(), &dev)?;
                let size = size.unwrap_or(kind.native_size());
                let found = segment::predict_voc(&net, &input, &output, size, &dev)?;
                println!("{}: {found} -> {}", input.display(), output.display());
                Ok(())
            }
            (None, None) => bail!("segment predict needs --checkpoint DIR or --model NAME"),
        },
    }
}
