//! # pixclass-data
//!
//! Data for pixclass's per-pixel classification studies:
//! - [`cifar`]: the CIFAR-10 binary format, validated and checksummed;
//! - [`colours`]: colour palettes, nearest-colour classes, k-means;
//! - [`colourize`]: the colourization data set of the study (SPEC §A.1);
//! - [`segment`]: Oxford-17 and image/mask folders for segmentation (SPEC §B.1);
//! - [`matfile`]: a small MATLAB 5 reader (Oxford-17's `datasplits.mat`);
//! - [`fetch`]: resumable, verified downloads;
//! - [`embedded`]: a real sample compiled in, for a fresh machine;
//! - [`weights`]: registered pretrained weights: sources, checksums, cache, fetch;
//! - [`paths`]: the data directory and the cache folder;
//! - [`image_io`]: users' pictures in (truncation refused) and out (PNG only, never over an input).
//!
//! This crate never trains or defines models; it hands out tensors and bytes.

pub mod checksum;
pub mod cifar;
pub mod colourize;
pub mod colours;
pub mod embedded;
pub mod error;
pub mod fetch;
pub mod image_io;
pub mod matfile;
pub mod paths;
pub mod segment;
pub mod weights;

pub use cifar::{CifarLayout, CifarSet, CifarSource, Split, HORSE};
pub use colourize::{split_orders, ColourSplit, RngScheme};
pub use colours::Palette;
pub use error::{DataError, Result};
pub use paths::resolve_data_dir;
pub use segment::{Preprocess, SegSet, SegSource, SegSplits};
