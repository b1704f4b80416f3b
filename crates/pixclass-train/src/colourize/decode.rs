//! From per-pixel colour-class logits to an RGB image: the study's argmax
//! (the most likely palette colour), or Zhang, Isola & Efros's (2016)
//! annealed mean (the expected colour under the softmax at temperature
//! `T`: `T = 1` the plain mean, `T -> 0` the argmax; their `T = 0.38` keeps
//! the vividness of the mode and the smoothness of the mean), or the
//! balanced decision (the argmax after dividing out the colour prior the
//! training loss fitted, Menon et al.'s (2021) logit adjustment: the
//! decision that maximises mean per-colour recall for a calibrated net).

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
    /// The most likely palette colour relative to its prior: the argmax of
    /// `logits - log prior` ([`ClassPrior`]).
    Balanced,
}

/// The colour frequencies a run's training loss fitted: the training
/// split's pixel frequencies `n_c`, times the rebalancing weights `w_c`
/// when the run used them, `prior_c ∝ w_c (n_c + 1)` (one pseudo-count per
/// colour keeps absent colours finite). A net trained by that loss
/// estimates `prior_c · p(x | c)`; dividing the prior out is the balanced
/// decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassPrior {
    /// One probability per palette colour; they sum to 1.
    pub probabilities: Vec<f64>,
}

impl ClassPrior {
    /// The prior of a training histogram (pixels per colour) and optional
    /// per-colour loss weights (one per colour, each finite and > 0).
    pub fn new(histogram: &[usize], weights: Option<&[f64]>) -> Result<Self> {
        if let Some(w) = weights {
            if w.len() != histogram.len() {
                return Err(TrainError::Config(format!(
                    "{} loss weights for {} colours",
                    w.len(),
                    histogram.len()
                )));
            }
            if let Some(bad) = w.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(TrainError::Config(format!(
                    "a loss weight of {bad}: the class prior needs weights > 0"
                )));
            }
        }
        let raw: Vec<f64> = histogram
            .iter()
            .enumerate()
            .map(|(c, &n)| (n as f64 + 1.0) * weights.map_or(1.0, |w| w[c]))
            .collect();
        let total: f64 = raw.iter().sum();
        if histogram.is_empty() || !(total.is_finite() && total > 0.0) {
            return Err(TrainError::Config(format!(
                "no class prior from a histogram of {} colours",
                histogram.len()
            )));
        }
        Ok(Self {
            probabilities: raw.iter().map(|r| r / total).collect(),
        })
    }

    /// `log prior` as a `[1, K, 1, 1]` f32 tensor, to subtract from logits.
    fn log_tensor(&self, device: &candle_core::Device) -> Result<Tensor> {
        let k = self.probabilities.len();
        let v: Vec<f32> = self.probabilities.iter().map(|p| p.ln() as f32).collect();
        Ok(Tensor::from_vec(v, (1, k, 1, 1), device)?)
    }
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

    /// The balanced decision (logit adjustment by the training prior).
    pub fn balanced() -> Self {
        Self {
            kind: DecodeKind::Balanced,
            ..Self::default()
        }
    }

    /// A short name (`argmax`, `annealed mean (T=0.38)`, `balanced`).
    pub fn describe(&self) -> String {
        match self.kind {
            DecodeKind::Argmax => "argmax".into(),
            DecodeKind::AnnealedMean => format!("annealed mean (T={})", self.temperature),
            DecodeKind::Balanced => "balanced (argmax of logits - log prior)".into(),
        }
    }

    /// Whether this decoding needs the run's [`ClassPrior`].
    pub fn needs_prior(&self) -> bool {
        self.kind == DecodeKind::Balanced
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

    /// The colour class of every pixel: the argmax of `logits` (argmax and
    /// annealed mean, whose classes are the argmax's), or of
    /// `logits - log prior` (balanced).
    ///
    /// # Shapes
    /// `[N, K, H, W]` -> `[N, H, W]` u32.
    pub fn classes(&self, logits: &Tensor, prior: Option<&ClassPrior>) -> Result<Tensor> {
        match self.kind {
            DecodeKind::Argmax | DecodeKind::AnnealedMean => {
                Ok(pixclass_ops::argmax_classes(logits)?)
            }
            DecodeKind::Balanced => {
                let prior = prior.ok_or_else(|| {
                    TrainError::Config(
                        "--decode balanced needs the run's class prior (class_prior.json, \
                         written by training runs since it existed; `colourize eval` computes it \
                         from the training split)"
                            .into(),
                    )
                })?;
                let k = logits.dim(1)?;
                if prior.probabilities.len() != k {
                    return Err(TrainError::Config(format!(
                        "logits have {k} classes but the class prior has {}",
                        prior.probabilities.len()
                    )));
                }
                let log_prior = prior.log_tensor(logits.device())?;
                let adjusted = logits
                    .to_dtype(candle_core::DType::F32)?
                    .broadcast_sub(&log_prior)?;
                Ok(pixclass_ops::argmax_classes(&adjusted)?)
            }
        }
    }

    /// The RGB image of `logits` (1/256 scale); `prior` is needed by the
    /// balanced decoding only.
    ///
    /// # Shapes
    /// `[N, K, H, W]` -> `[N, 3, H, W]` f32, `K` = the palette's colours.
    pub fn decode(
        &self,
        logits: &Tensor,
        palette: &Palette,
        prior: Option<&ClassPrior>,
    ) -> Result<Tensor> {
        let (n, k, h, w) = logits.dims4()?;
        if k != palette.len() {
            return Err(TrainError::Config(format!(
                "logits have {k} classes but the palette has {} colours",
                palette.len()
            )));
        }
        match self.kind {
            DecodeKind::Argmax | DecodeKind::Balanced => {
                let classes = self.classes(logits, prior)?;
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
