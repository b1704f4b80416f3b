//! # pixclass-train
//!
//! Training for pixclass: one loop for every model and task.
//! - [`engine`]: the loop ([`engine::fit`]) and the task seam ([`engine::TrainTask`]);
//! - [`adam`]: Adam exactly like PyTorch's, with checkpointable state;
//! - [`checkpoint`]: atomic checkpoints with model, optimiser and run state;
//! - [`device`]: explicit device selection, never a silent CPU fallback;
//! - [`plot`]: curves, comparison plots and image strips as PNG;
//! - [`run_dir`]: a run directory's `config.json`;
//! - [`colourize`]: the colourization study (Parts A–C);
//! - [`segment`]: DeepLabV3 head fine-tuning with cached features (Part D).
//!
//! This crate wires data, models and metrics together; it defines no layers
//! and parses no file formats of its own beyond its checkpoints.

pub mod adam;
pub mod checkpoint;
pub mod colourize;
pub mod device;
pub mod engine;
pub mod error;
pub mod plot;
pub mod run_dir;
pub mod segment;

pub use device::{select_device, DeviceKind};
pub use error::{Result, TrainError};
pub use pixclass_runs::{EpochRecord, MetricSpec, Metrics, RunRecord};
