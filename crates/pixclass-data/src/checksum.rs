//! File hashing and the table of known files with published checksums.
//!
//! A file is "known" by its name. Reading a known file verifies it; a
//! mismatch is [`DataError::ChecksumMismatch`] naming the file and both hashes.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// A published checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// Lower-case hex SHA-256.
    Sha256(Cow<'static, str>),
    /// Lower-case hex MD5 (what some data sets publish).
    Md5(Cow<'static, str>),
    /// The leading hex digits of a SHA-256, as torchvision publishes them in
    /// its file names (`deeplabv3_resnet101_coco-586e9e4e.pth`) and checks
    /// them (`check_hash=True`).
    Sha256Prefix(Cow<'static, str>),
}

impl Checksum {
    /// `"sha256"` or `"md5"`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Md5(_) => "md5",
            Checksum::Sha256Prefix(_) => "sha256 prefix",
        }
    }

    /// The expected hex digest.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Md5(h) | Checksum::Sha256Prefix(h) => h,
        }
    }

    /// Hashes `path` with this checksum's algorithm and compares.
    pub fn verify(&self, path: &Path) -> Result<()> {
        let found = match self {
            Checksum::Sha256(_) | Checksum::Sha256Prefix(_) => sha256_file(path)?,
            Checksum::Md5(_) => md5_file(path)?,
        };
        let ok = match self {
            Checksum::Sha256Prefix(p) => !p.is_empty() && found.starts_with(p.as_ref()),
            _ => found == self.hex(),
        };
        if ok {
            Ok(())
        } else {
            Err(DataError::ChecksumMismatch {
                path: path.to_path_buf(),
                algorithm: self.algorithm(),
                expected: self.hex().to_string(),
                found,
            })
        }
    }
}

/// A file whose content is published and can be verified by name.
#[derive(Debug, Clone)]
pub struct KnownFile {
    /// File name (no directory).
    pub name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Its strongest published checksum.
    pub checksum: Checksum,
    /// Where it comes from.
    pub origin: &'static str,
}

/// Official CIFAR-10 binary tarball.
pub const CIFAR10_TARBALL: KnownFile = KnownFile {
    name: "cifar-10-binary.tar.gz",
    size: 170_052_171,
    checksum: Checksum::Md5(Cow::Borrowed("c32a1d4ab5d03f1284b67883e8d87530")),
    origin: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
};

/// Files verified whenever they are read.
pub const KNOWN_FILES: &[KnownFile] = &[
    KnownFile {
        name: "test_batch.bin",
        size: 30_730_000,
        checksum: Checksum::Sha256(Cow::Borrowed(
            "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
        )),
        origin: "official CIFAR-10 binary test batch (md5 803d5f7f4d78ea53de84dbe85f74fb6d)",
    },
    KnownFile {
        name: "horse_train.bin",
        size: 15_365_000,
        checksum: Checksum::Sha256(Cow::Borrowed(
            "e5c3bc15f83790dc8eb193a0fb505983fbf378b7154d8600e5340d81c48fa53c",
        )),
        origin: "the 5000 official training records of class 7, in order",
    },
    KnownFile {
        name: "horse_test.bin",
        size: 3_073_000,
        checksum: Checksum::Sha256(Cow::Borrowed(
            "c9819761b52d933f094450c2a44464ad08b6b4a66d13f201ad2abf0bc82de87c",
        )),
        origin: "the 1000 official test records of class 7, in order",
    },
    KnownFile {
        name: "horse_train_500.bin",
        size: 1_536_500,
        checksum: Checksum::Sha256(Cow::Borrowed(
            "417404d39f7b34ff45b550de76dcb34dc306adba47885a3459ed7962515321a7",
        )),
        origin: "embedded sample: first 500 training horses",
    },
    KnownFile {
        name: "horse_test_100.bin",
        size: 307_300,
        checksum: Checksum::Sha256(Cow::Borrowed(
            "d3947b57c4ee131deac2060d256e5e8dfa0dd0c164db340720b9704d00d28e7e",
        )),
        origin: "embedded sample: first 100 test horses",
    },
    KnownFile {
        name: "cifar-10-binary.tar.gz",
        size: 170_052_171,
        checksum: Checksum::Md5(Cow::Borrowed("c32a1d4ab5d03f1284b67883e8d87530")),
        origin: "official CIFAR-10 binary tarball",
    },
];

/// Looks a file up by its name in [`KNOWN_FILES`].
pub fn known_file(name: &str) -> Option<&'static KnownFile> {
    KNOWN_FILES.iter().find(|k| k.name == name)
}

/// Verification status of one file, as `pixclass data info` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyStatus {
    /// A known file whose checksum matched.
    Verified(&'static str),
    /// A file with no published checksum.
    Unknown,
}

/// Verifies `path` if its name is a known file; unknown names pass as
/// [`VerifyStatus::Unknown`].
pub fn verify_if_known(path: &Path) -> Result<VerifyStatus> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match known_file(name) {
        Some(k) => {
            k.checksum.verify(path)?;
            Ok(VerifyStatus::Verified(k.checksum.algorithm()))
        }
        None => Ok(VerifyStatus::Unknown),
    }
}

fn hash_file<D: Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file::<Sha256>(path)
}

/// Lower-case hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    hash_file::<Md5>(path)
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
