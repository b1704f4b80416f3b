//! The colourization data set (SPEC §A.1): one class of CIFAR-10, pixels
//! scaled by 1/256, grey input = plain mean of R, G and B, targets = colour
//! classes of a [`Palette`], each split shuffled once with a seeded RNG.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cifar::{CifarSet, Split, IMAGE_BYTES, SIDE};
use crate::colours::Palette;
use crate::error::{DataError, Result};

/// One split, preprocessed and shuffled, ready to batch.
#[derive(Debug, Clone)]
pub struct ColourSplit {
    n: usize,
    /// CHW bytes of each image (kept for the colour strips).
    bytes: Vec<u8>,
    /// Grey input, `n * 32 * 32`, on the 1/256 scale.
    grey: Vec<f32>,
    /// Colour class per pixel, `n * 32 * 32`.
    classes: Vec<u32>,
}

/// The fixed permutation of a split: Fisher-Yates with ChaCha8 seeded by
/// `seed`, one stream per split, so each split's order depends only on its
/// size, the seed and the split.
pub fn shuffle_order(n: usize, seed: u64, split: Split) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(match split {
        Split::Train => 0,
        Split::Test => 1,
    });
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    idx
}

/// How a colourization run draws its random numbers: the split shuffles here,
/// the initial weights in pixclass-train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RngScheme {
    /// The reference program's streams: NumPy's legacy MT19937 seeded once
    /// (`npr.seed(seed)`) shuffles the training split, then the test split
    /// (`npr.shuffle`); PyTorch's generator (`torch.manual_seed(seed)`) draws
    /// the initial weights in module order. Same seed, same data order and
    /// initial weights as the PyTorch program. Seeds must fit in 32 bits.
    #[default]
    Torch,
    /// ChaCha8 streams: one per split ([`shuffle_order`]) and one per
    /// parameter name, independent of split sizes and creation order.
    Chacha,
}

impl RngScheme {
    /// Both names, for messages and command-line help.
    pub const NAMES: [&'static str; 2] = ["torch", "chacha"];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torch => "torch",
            Self::Chacha => "chacha",
        }
    }
}

impl std::str::FromStr for RngScheme {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "torch" => Ok(Self::Torch),
            "chacha" => Ok(Self::Chacha),
            other => Err(DataError::Invalid(format!(
                "unknown RNG scheme {other:?} (expected one of {:?})",
                Self::NAMES
            ))),
        }
    }
}

/// NumPy's legacy `RandomState.shuffle` of `0..n` (Fisher-Yates from the
/// end, `random_interval` by masked rejection sampling) drawing from `rng`.
pub fn numpy_shuffle(n: usize, rng: &mut rand_mt::Mt) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Smallest all-ones mask covering i; draws above i are rejected.
        let mask = u64::MAX >> (i as u64).leading_zeros();
        let j = loop {
            let v = if i as u64 <= u64::from(u32::MAX) {
                u64::from(rng.next_u32()) & mask
            } else {
                rng.next_u64() & mask
            };
            if v <= i as u64 {
                break v as usize;
            }
        };
        idx.swap(i, j);
    }
    idx
}

/// The fixed permutations of the training and test splits (sizes `n_train`,
/// `n_test`) under `scheme`. [`RngScheme::Torch`] needs a seed below 2^32
/// (NumPy refuses larger ones).
pub fn split_orders(
    n_train: usize,
    n_test: usize,
    seed: u64,
    scheme: RngScheme,
) -> Result<(Vec<usize>, Vec<usize>)> {
    match scheme {
        RngScheme::Chacha => Ok((
            shuffle_order(n_train, seed, Split::Train),
            shuffle_order(n_test, seed, Split::Test),
        )),
        RngScheme::Torch => {
            let seed = u32::try_from(seed).map_err(|_| {
                DataError::Invalid(format!(
                    "seed {seed} does not fit NumPy's 32-bit seeds (RNG scheme torch)"
                ))
            })?;
            let mut rng = rand_mt::Mt::new(seed);
            let train = numpy_shuffle(n_train, &mut rng);
            Ok((train, numpy_shuffle(n_test, &mut rng)))
        }
    }
}

/// Grey value of one pixel exactly like the reference: mean of R/256, G/256
/// and B/256 in f64, then f32.
#[inline]
pub fn grey_of(r: u8, g: u8, b: u8) -> f32 {
    ((r as f64 / 256.0 + g as f64 / 256.0 + b as f64 / 256.0) / 3.0) as f32
}

impl ColourSplit {
    /// Preprocesses `set` (already filtered to one class): shuffles it with
    /// [`shuffle_order`] and computes grey inputs and colour classes.
    pub fn new(set: &CifarSet, palette: &Palette, seed: u64, split: Split) -> Result<Self> {
        Self::with_order(set, palette, &shuffle_order(set.len(), seed, split), split)
    }

    /// Preprocesses `set` (already filtered to one class) in the given order
    /// (a permutation of its indices, e.g. from [`split_orders`]).
    pub fn with_order(
        set: &CifarSet,
        palette: &Palette,
        order: &[usize],
        split: Split,
    ) -> Result<Self> {
        if set.is_empty() {
            return Err(DataError::EmptySelection {
                what: format!("no images in the {} split", split.name()),
            });
        }
        let n = set.len();
        let hw = SIDE * SIDE;
        let mut seen = vec![false; n];
        let permutation = order.len() == n
            && order
                .iter()
                .all(|&i| i < n && !std::mem::replace(&mut seen[i], true));
        if !permutation {
            return Err(DataError::Invalid(format!(
                "an order of {} indices is not a permutation of the {n} images of the {} split",
                order.len(),
                split.name()
            )));
        }
        let mut bytes = Vec::with_capacity(n * IMAGE_BYTES);
        for &i in order {
            bytes.extend_from_slice(set.image(i));
        }
        let mut grey = Vec::with_capacity(n * hw);
        for img in bytes.chunks_exact(IMAGE_BYTES) {
            for p in 0..hw {
                grey.push(grey_of(img[p], img[hw + p], img[2 * hw + p]));
            }
        }
        let classes = palette.quantize_bytes(&bytes, hw);
        Ok(Self {
            n,
            bytes,
            grey,
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when empty (never, for a constructed split).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Colour classes of all pixels, image after image.
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }

    /// Grey values of all pixels, image after image.
    pub fn grey(&self) -> &[f32] {
        &self.grey
    }

    /// CHW bytes of image `i` (after shuffling).
    pub fn image_bytes(&self, i: usize) -> &[u8] {
        &self.bytes[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Number of batches of `batch_size` (the last one may be partial).
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.n.div_ceil(batch_size.max(1))
    }

    /// Images `start..start+len` as tensors.
    ///
    /// # Shapes
    /// grey `[B, 1, 32, 32]` f32, classes `[B, 32, 32]` u32, `B = len`
    /// clipped to the end of the split.
    pub fn batch(&self, start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let end = (start + len).min(self.n);
        if start >= end {
            return Err(DataError::Invalid(format!(
                "batch start {start} is past the end of a split of {} images",
                self.n
            )));
        }
        let hw = SIDE * SIDE;
        let b = end - start;
        let grey =
            Tensor::from_slice(&self.grey[start * hw..end * hw], (b, 1, SIDE, SIDE), device)?;
        let classes =
            Tensor::from_slice(&self.classes[start * hw..end * hw], (b, SIDE, SIDE), device)?;
        Ok((grey, classes))
    }

    /// Images `idx` (in that order) as tensors, image `k` mirrored
    /// left-right where `flip[k]` (a missing entry: not mirrored).
    ///
    /// # Shapes
    /// grey `[B, 1, 32, 32]` f32, classes `[B, 32, 32]` u32, `B = idx.len()`.
    pub fn gather(
        &self,
        idx: &[usize],
        flip: &[bool],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.n) {
            return Err(DataError::Invalid(format!(
                "image {i} is past the end of a split of {} images",
                self.n
            )));
        }
        if idx.is_empty() {
            return Err(DataError::Invalid("an empty batch".into()));
        }
        let hw = SIDE * SIDE;
        let mut grey = Vec::with_capacity(idx.len() * hw);
        let mut classes = Vec::with_capacity(idx.len() * hw);
        for (k, &i) in idx.iter().enumerate() {
            let (g, c) = (
                &self.grey[i * hw..(i + 1) * hw],
                &self.classes[i * hw..(i + 1) * hw],
            );
            if flip.get(k).copied().unwrap_or(false) {
                for row in 0..SIDE {
                    let r = row * SIDE..(row + 1) * SIDE;
                    grey.extend(g[r.clone()].iter().rev());
                    classes.extend(c[r].iter().rev());
                }
            } else {
                grey.extend_from_slice(g);
                classes.extend_from_slice(c);
            }
        }
        let b = idx.len();
        Ok((
            Tensor::from_vec(grey, (b, 1, SIDE, SIDE), device)?,
            Tensor::from_vec(classes, (b, SIDE, SIDE), device)?,
        ))
    }

    /// Histogram of colour classes over the whole split.
    pub fn class_histogram(&self, num_classes: usize) -> Vec<usize> {
        let mut h = vec![0usize; num_classes];
        for &c in &self.classes {
            if let Some(slot) = h.get_mut(c as usize) {
                *slot += 1;
            }
        }
        h
    }
}
