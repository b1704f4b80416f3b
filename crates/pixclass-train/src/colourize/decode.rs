//! From per-pixel colour-class logits to an RGB image: the study's argmax
//! (the most likely palette colour), or Zhang, Isola & Efros's (2016)
//! annealed mean (the expected colour under the softmax at temperature
//! `T`: `T = 1` the plain mean, `T -> 0` the argmax; their `T = 0.38` keeps
//! the vividness of the mode and the smoothness of the mean).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use pixclass_data::Palette;

use crate::error::{Result, TrainError};

/// How logits become colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DecodeKind {
    /// The most likely palette colour (the study).
    #[default]
    Argmax,
    /// The expected colour under `softmax(logits / T)`.
    AnnealedMean,
}

/// A decoding: its kind and the annealed mean's temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    /// Argmax or annealed mean.
    pub kind: DecodeKind,
    /// Temperature of the annealed mean, in [0.01, 10] (ignored by argmax).
    pub temperature: f64,
}

impl Default for Decoding {
    /// The study's argmax (with Zhang et al.'s T = 0.38 ready for the mean).
    fn default() -> Self {
        Self {
            kind: DecodeKind::Argmax,
            temperature: ANNEALED_T,
        }
    }
}

/// Zhang et al.'s temperature.
pub const ANNEALED_T: f64 = 0.38;

impl Decoding {
    /// The annealed mean at Zhang et al.'s T = 0.38.
    pub fn annealed() -> Self {
        Self {
            kind: DecodeKind::AnnealedMean,
            temperature: ANNEALED_T,
        }
    }

    /// A short name (`argmax`, `annealed mean (T=0.38)`).
    pub fn describe(&self) -> String {
        match self.kind {
            DecodeKind::Argmax => "argmax".into(),
            DecodeKind::AnnealedMean => format!("annealed mean (T={})", self.temperature),
        }
    }

    /// An error unless the temperature is in [0.01, 10].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && (0.01..=10.0).contains(&self.temperature)) {
            return Err(TrainError::Config(format!(
                "--temperature {} is out of range: it must be in [0.01, 10]",
                self.temperature
            )));
        }
        Ok(())
    }

    /// The RGB image of `logits` (1/256 scale).
    ///
    /// # Shapes
    /// `[N, K, H, W]` -> `[N, 3, H, W]` f32, `K` = the palette's colours.
    pub fn decode(&self, logits: &Tensor, palette: &Palette) -> Result<Tensor> {
        let (n, k, h, w) = logits.dims4()?;
        if k != palette.len() {
            return Err(TrainError::Config(format!(
                "logits have {k} classes but the palette has {} colours",
                palette.len()
            )));
        }
        match self.kind {
            DecodeKind::Argmax => {
                let classes = logits.argmax(1)?;
                Ok(palette.classes_to_rgb(&classes)?)
            }
            DecodeKind::AnnealedMean => {
                let z = (logits.to_dtype(candle_core::DType::F32)? / self.temperature)?;
                // [N, H, W, K] probabilities times the [K, 3] centres.
                let p = candle_nn::ops::softmax_last_dim(&z.permute((0, 2, 3, 1))?.contiguous()?)?;
                let centres = palette.centres_tensor(logits.device())?;
                let rgb = p.reshape((n * h * w, k))?.matmul(&centres)?;
                Ok(rgb
                    .reshape((n, h, w, 3))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?)
            }
        }
    }
}
