//! # pixclass-models
//!
//! Models of pixclass's per-pixel classification studies, in candle:
//! - [`colourize`]: PoolUpsampleNet, ConvTransposeNet and UNet (SPEC §A.3);
//! - [`deeplab`]: DeepLabV3-ResNet50/101 in torchvision's layout;
//! - [`mobilenet`]: DeepLabV3-MobileNetV2 (TensorFlow's VOC model), offline;
//! - [`segment`]: both DeepLabV3s behind one interface, frozen part + head;
//! - [`registry`]: registered pretrained weights (hub repo, URL, checksum);
//! - [`weights`]: safetensors/.pth reading, checked tensor by tensor;
//! - [`layers`]: Conv2d, ConvTranspose2d and BatchNorm2d with PyTorch names
//!   and initialisation, and explicit train/eval;
//! - [`ops`]: pooling, upsampling, softmax and strided convolution with
//!   gradients checked against finite differences and PyTorch;
//! - [`summary`]: per-layer parameters, output shapes and connections.
//!
//! This crate never reads data sets or runs training loops.

pub mod colourize;
pub mod conv_gemm;
pub mod cpu_kernels;
pub mod deeplab;
pub mod error;
pub mod init;
pub mod layers;
pub mod mobilenet;
pub mod ops;
pub mod registry;
pub mod segment;
mod simd;
pub mod summary;
pub mod weights;

pub use colourize::{ColourModelKind, ColourNet, ColourNetConfig};
pub use error::{ModelError, Result};
