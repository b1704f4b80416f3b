//! The batch-size study (SPEC §A.4): one run per batch size, then a table
//! and a comparison plot.

use std::path::Path;

use serde::Serialize;

use pixclass_data::cifar::CifarSource;
use pixclass_models::ColourModelKind;

use super::task::{train_colouriser, VAL_ACC, VAL_LOSS};
use pixclass_runs::Start;

use super::ColourTrainConfig;
use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::plot::{draw_panels, Panel, Series};

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
        // The sweep owns its batch folders: one with a checkpoint is resumed
        // (a finished run is reused as it is), anything else started over.
        let start = if dir.join(checkpoint::LATEST).is_file() {
            Start::Resume
        } else {
            Start::Overwrite
        };
        let run = train_colouriser(&cfg, source, &dir, start, progress)?;
        let r = &run.record;
        let last = r
            .last()
            .ok_or_else(|| TrainError::Config("no epochs".into()))?;
        rows.push(SweepRow {
            batch_size: bs,
            val_loss: r.final_value(VAL_LOSS)?,
            val_acc: r.final_value(VAL_ACC)?,
            train_loss: last.train_loss.unwrap_or(f64::NAN),
            // Training time summed over epochs, so reused runs keep theirs.
            seconds: r.train_seconds(),
            curve: r.epochs.iter().filter_map(|e| e.get(VAL_LOSS)).collect(),
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
            x_ticks: Some(rows.iter().map(|r| r.batch_size as f64).collect()),
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
            x_ticks: Some(rows.iter().map(|r| r.batch_size as f64).collect()),
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
            x_ticks: None,
        },
    ];
    draw_panels(&out_dir.join("sweep.png"), &panels, 480, 380)
}
