//! # pixclass-models
//!
//! The networks of pixclass's per-pixel classification studies, in candle:
//! - [`colourize`]: PoolUpsampleNet, ConvTransposeNet and UNet (SPEC §A.3);
//! - [`deeplab`]: DeepLabV3-ResNet50/101 in torchvision's layout;
//! - [`mobilenet`]: DeepLabV3-MobileNetV2 (TensorFlow's VOC model), offline;
//! - [`segment`]: both DeepLabV3s behind one interface, frozen part + head;
//! - [`weights`]: safetensors/.pth reading, checked tensor by tensor;
//! - [`layers`]: Conv2d, ConvTranspose2d and BatchNorm2d with PyTorch names
//!   and initialisation, and explicit train/eval;
//! - [`init`]: seeded initialisation (ChaCha8, or PyTorch's own stream);
//! - [`summary`]: per-layer parameters, output shapes and connections.
//!
//! Every computation goes through `pixclass-ops` (the differentiable ops and
//! their CPU kernels). This crate never reads data sets, runs training loops
//! or downloads anything (registered weights live in `pixclass-data`).

pub mod colourize;
pub mod deeplab;
pub mod error;
pub mod init;
pub mod layers;
pub mod mobilenet;
pub mod segment;
pub mod summary;
pub mod weights;

pub use colourize::{ColourModelKind, ColourNet, ColourNetConfig};
pub use error::{ModelError, Result};
