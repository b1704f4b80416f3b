//! Device selection: explicit, and never a silent CPU fallback.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A device kind as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (default).
    #[default]
    Cpu,
    /// An NVIDIA GPU (needs the `cuda` feature).
    Cuda,
    /// An Apple GPU (needs the `metal` feature, macOS only).
    Metal,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            _ => Err(format!("unknown device {s:?}: cpu, cuda or metal")),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        })
    }
}

/// Opens the requested device. Asking for CUDA or Metal in a build without
/// that feature, or on a machine without such a device, is an error.
pub fn select_device(kind: DeviceKind, ordinal: usize) -> Result<Device> {
    let err = |reason: String| TrainError::Device {
        requested: kind.to_string(),
        reason,
    };
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                Device::new_cuda(ordinal)
                    .map_err(|e| err(format!("no usable CUDA device {ordinal}: {e}")))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = ordinal;
                Err(err("this pixclass was built without the `cuda` feature; rebuild with `--features cuda`".into()))
            }
        }
        DeviceKind::Metal => {
            #[cfg(all(feature = "metal", target_os = "macos"))]
            {
                Device::new_metal(ordinal)
                    .map_err(|e| err(format!("no usable Metal device {ordinal}: {e}")))
            }
            #[cfg(not(all(feature = "metal", target_os = "macos")))]
            {
                let _ = ordinal;
                Err(err("this pixclass was built without Metal (the `metal` feature, on macOS); rebuild with `--features metal`".into()))
            }
        }
    }
}
