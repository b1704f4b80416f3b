//! Registered pretrained weights: where each name comes from (a Hugging Face
//! hub repository and/or the official URL) and its published checksum. The
//! fetching itself lives in the `pixclass` binary (`pixclass weights fetch`).

use crate::segment::SegModelKind;

/// One registered weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsSource {
    /// The name users type (`deeplabv3-resnet101-coco`).
    pub name: &'static str,
    /// The model it belongs to.
    pub model: SegModelKind,
    /// File name in the local weights cache.
    pub file: &'static str,
    /// Hugging Face hub repository holding the file, when one is declared
    /// (overridable on the command line).
    pub hf_repo: Option<&'static str>,
    /// File inside the hub repository.
    pub hf_file: &'static str,
    /// Hub revision (branch, tag or commit).
    pub revision: &'static str,
    /// Official download address, the fallback.
    pub url: Option<&'static str>,
    /// Published checksum: full SHA-256, or (`sha256_is_prefix`) the leading
    /// digits torchvision puts in its file names and checks.
    pub sha256: &'static str,
    /// See `sha256`.
    pub sha256_is_prefix: bool,
    /// Size in bytes, for messages.
    pub bytes: u64,
    /// Licence and origin, for messages and reports.
    pub licence: &'static str,
}

/// Every registered name.
pub const REGISTRY: [WeightsSource; 2] = [
    WeightsSource {
        name: "deeplabv3-resnet101-coco",
        model: SegModelKind::Deeplabv3Resnet101,
        file: "deeplabv3_resnet101_coco-586e9e4e.pth",
        hf_repo: None,
        hf_file: "deeplabv3_resnet101_coco-586e9e4e.pth",
        revision: "main",
        url: Some("https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth"),
        sha256: "586e9e4e",
        sha256_is_prefix: true,
        bytes: 244_545_539,
        licence: "torchvision (BSD-3-Clause); trained on COCO with the 20 VOC categories",
    },
    WeightsSource {
        name: "deeplabv3-resnet50-coco",
        model: SegModelKind::Deeplabv3Resnet50,
        file: "deeplabv3_resnet50_coco-cd0a2569.pth",
        hf_repo: None,
        hf_file: "deeplabv3_resnet50_coco-cd0a2569.pth",
        revision: "main",
        url: Some("https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth"),
        sha256: "cd0a2569",
        sha256_is_prefix: true,
        bytes: 168_312_152,
        licence: "torchvision (BSD-3-Clause); trained on COCO with the 20 VOC categories",
    },
];

/// The registered weights called `name`.
pub fn lookup(name: &str) -> Option<&'static WeightsSource> {
    REGISTRY.iter().find(|w| w.name == name)
}
