//! CIFAR-10 in its official binary format: 3073-byte records of one label byte
//! followed by 1024 R, 1024 G and 1024 B bytes (row-major 32x32).
//!
//! [`CifarSet`] holds records in memory and validates everything on the way in
//! (record size, label range, checksums of known files). [`CifarLayout`] finds
//! the files of a data directory; [`CifarSource`] also covers the small sample
//! embedded in the binary.

use std::path::{Path, PathBuf};

use crate::checksum::{verify_if_known, VerifyStatus};
use crate::error::{DataError, Result};

/// Bytes of one record: 1 label + 3 x 32 x 32 pixels.
pub const RECORD_BYTES: usize = 3073;
/// Bytes of one image (3 planes of 32 x 32).
pub const IMAGE_BYTES: usize = 3072;
/// Image side in pixels.
pub const SIDE: usize = 32;
/// Class names in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The label of horses, the class the study colourizes.
pub const HORSE: u8 = 7;

/// Records in memory: labels and CHW pixel planes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CifarSet {
    labels: Vec<u8>,
    pixels: Vec<u8>,
}

impl CifarSet {
    /// Parses records from bytes; `origin` names the source in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Err(DataError::EmptyFile {
                path: origin.to_path_buf(),
            });
        }
        let rb = RECORD_BYTES as u64;
        if !len.is_multiple_of(rb) {
            return Err(DataError::BadRecordSize {
                path: origin.to_path_buf(),
                len,
                whole: len / rb,
                rest: len % rb,
            });
        }
        let n = bytes.len() / RECORD_BYTES;
        let mut labels = Vec::with_capacity(n);
        let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
        for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            let label = rec[0];
            if label > 9 {
                return Err(DataError::BadLabel {
                    path: origin.to_path_buf(),
                    record: i,
                    label,
                });
            }
            labels.push(label);
            pixels.extend_from_slice(&rec[1..]);
        }
        Ok(Self { labels, pixels })
    }

    /// Reads one file of records, verifying it first when its name is a
    /// known file (see [`crate::checksum::KNOWN_FILES`]).
    pub fn read_file(path: &Path) -> Result<Self> {
        Ok(Self::read_file_verified(path)?.0)
    }

    /// Like [`CifarSet::read_file`], also returning the verification status.
    pub fn read_file_verified(path: &Path) -> Result<(Self, VerifyStatus)> {
        if !path.is_file() {
            return Err(DataError::MissingFile {
                path: path.to_path_buf(),
                hint: "expected a CIFAR-10 binary file (3073-byte records)".into(),
            });
        }
        let status = verify_if_known(path)?;
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Ok((Self::from_bytes(&bytes, path)?, status))
    }

    /// Reads and concatenates several files in order.
    pub fn read_files(paths: &[PathBuf]) -> Result<Self> {
        let mut out = Self::default();
        for p in paths {
            out.extend(Self::read_file(p)?);
        }
        Ok(out)
    }

    /// Appends another set's records.
    pub fn extend(&mut self, other: Self) {
        self.labels.extend(other.labels);
        self.pixels.extend(other.pixels);
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The 3072 CHW bytes of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// All pixels, `len() * 3072` bytes, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Records per class.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut c = [0usize; 10];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The records of one class, in their original order.
    pub fn filter_class(&self, class: u8) -> Result<Self> {
        if class > 9 {
            return Err(DataError::Invalid(format!(
                "class {class} is not a CIFAR-10 class (0..=9)"
            )));
        }
        let mut out = Self::default();
        for (i, &l) in self.labels.iter().enumerate() {
            if l == class {
                out.labels.push(l);
                out.pixels.extend_from_slice(self.image(i));
            }
        }
        if out.is_empty() {
            return Err(DataError::EmptySelection {
                what: format!(
                    "class {class} ({}) does not occur in {} records",
                    CLASS_NAMES[class as usize],
                    self.len()
                ),
            });
        }
        Ok(out)
    }

    /// The first `n` records (all of them when fewer); `n == 0` is an error.
    pub fn take(&self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(DataError::EmptySelection {
                what: "a limit of 0 images".into(),
            });
        }
        let n = n.min(self.len());
        Ok(Self {
            labels: self.labels[..n].to_vec(),
            pixels: self.pixels[..n * IMAGE_BYTES].to_vec(),
        })
    }
}

/// Train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split (`data_batch_1..5.bin`).
    Train,
    /// The test split (`test_batch.bin`), the study's validation set.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The CIFAR files found in a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarLayout {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// Training files, in order.
    pub train: Vec<PathBuf>,
    /// Test files, in order.
    pub test: Vec<PathBuf>,
}

const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// Where `pixclass data fetch cifar10` puts the unpacked files.
pub fn official_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cifar10").join("cifar-10-batches-bin")
}

impl CifarLayout {
    /// Finds CIFAR files under `data_dir`, looking in order at
    /// `cifar10/cifar-10-batches-bin/`, `cifar-10-batches-bin/`, `cifar10/`
    /// and `data_dir` itself. In each, the training split is
    /// `data_batch_1..5.bin` (all five) or else `horse_train.bin`; the test
    /// split is `test_batch.bin` or else `horse_test.bin`.
    pub fn discover(data_dir: &Path) -> Result<Self> {
        let candidates = [
            official_dir(data_dir),
            data_dir.join("cifar-10-batches-bin"),
            data_dir.join("cifar10"),
            data_dir.to_path_buf(),
        ];
        for dir in &candidates {
            if !dir.is_dir() {
                continue;
            }
            let present: Vec<bool> = TRAIN_BATCHES
                .iter()
                .map(|f| dir.join(f).is_file())
                .collect();
            let train = if present.iter().all(|&p| p) {
                TRAIN_BATCHES.iter().map(|f| dir.join(f)).collect()
            } else if present.iter().any(|&p| p) {
                let missing: Vec<&str> = TRAIN_BATCHES
                    .iter()
                    .zip(&present)
                    .filter(|(_, &p)| !p)
                    .map(|(f, _)| *f)
                    .collect();
                return Err(DataError::MissingFile {
                    path: dir.join(missing[0]),
                    hint: format!(
                        "the official training split needs all of data_batch_1..5.bin; missing: {}",
                        missing.join(", ")
                    ),
                });
            } else if dir.join("horse_train.bin").is_file() {
                vec![dir.join("horse_train.bin")]
            } else {
                continue;
            };
            let test = if dir.join("test_batch.bin").is_file() {
                vec![dir.join("test_batch.bin")]
            } else if dir.join("horse_test.bin").is_file() {
                vec![dir.join("horse_test.bin")]
            } else {
                continue;
            };
            return Ok(Self {
                dir: dir.clone(),
                train,
                test,
            });
        }
        Err(DataError::MissingFile {
            path: data_dir.to_path_buf(),
            hint: format!(
                "no CIFAR-10 binary files found. Run `pixclass data fetch cifar10 --data-dir {}` \
                 or unpack cifar-10-binary.tar.gz (from {}) so that {} holds data_batch_1..5.bin \
                 and test_batch.bin",
                data_dir.display(),
                crate::checksum::CIFAR10_TARBALL.origin,
                official_dir(data_dir).display()
            ),
        })
    }

    /// The files of one split.
    pub fn files(&self, split: Split) -> &[PathBuf] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

/// Where records come from: files on disk or the sample compiled into the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CifarSource {
    /// Files found by [`CifarLayout::discover`] or given explicitly.
    Files(CifarLayout),
    /// The embedded sample (500 train + 100 test horses, see `assets/`).
    Embedded,
}

impl CifarSource {
    /// The CIFAR-10 data a command should use ([`crate::paths::locate`]):
    /// `--embedded`, the files in the data directory, or the embedded
    /// sample when the default `./data` holds none.
    pub fn resolve(data_dir: Option<&Path>, embedded: bool) -> Result<Self> {
        let found = crate::paths::locate(
            data_dir,
            embedded,
            CifarLayout::discover,
            "500 train / 100 test horses",
            "pixclass data fetch cifar10",
        )?;
        Ok(found.map_or(CifarSource::Embedded, CifarSource::Files))
    }

    /// Loads one split.
    pub fn load(&self, split: Split) -> Result<CifarSet> {
        match self {
            CifarSource::Files(layout) => CifarSet::read_files(layout.files(split)),
            CifarSource::Embedded => {
                let (bytes, name) = match split {
                    Split::Train => (crate::embedded::CIFAR_HORSE_TRAIN, "horse_train_500.bin"),
                    Split::Test => (crate::embedded::CIFAR_HORSE_TEST, "horse_test_100.bin"),
                };
                CifarSet::from_bytes(bytes, &Path::new("<embedded>").join(name))
            }
        }
    }

    /// A one-line description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            CifarSource::Files(l) => format!("CIFAR-10 files in {}", l.dir.display()),
            CifarSource::Embedded => {
                "embedded sample (500 train / 100 test horses; full results need the full data)"
                    .into()
            }
        }
    }

    /// True for the embedded sample.
    pub fn is_embedded(&self) -> bool {
        matches!(self, CifarSource::Embedded)
    }
}
