//! Downloads: HTTP(S) with a progress bar, resume of partial files, checksum
//! verification, and unpacking of the official CIFAR-10 tarball.
//!
//! A download goes to `<dest>.part`; an interrupted download resumes from
//! there with an HTTP `Range` request; only a verified file is renamed to
//! `<dest>`, so `<dest>` is never a partial or corrupt file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::checksum::{KnownFile, CIFAR10_TARBALL};
use crate::error::{DataError, Result};

/// What a download must produce.
#[derive(Debug, Clone)]
pub struct DownloadSpec<'a> {
    /// Source address.
    pub url: &'a str,
    /// Final path of the verified file.
    pub dest: PathBuf,
    /// The published checksum, when there is one.
    pub checksum: Option<crate::checksum::Checksum>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Outcome of [`download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was already present and verified; nothing was downloaded.
    AlreadyPresent,
    /// Downloaded `bytes` bytes (resumed from `resumed_from`).
    Downloaded {
        /// Bytes transferred in this call.
        bytes: u64,
        /// Size of the partial file this call resumed from.
        resumed_from: u64,
    },
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Downloads `spec.url` to `spec.dest` (resuming `<dest>.part` if present),
/// verifies the checksum, and renames into place. A present, verified `dest`
/// makes this a no-op; a present one that fails its checksum stays until a
/// verified replacement is renamed over it. A checksum mismatch of the
/// download deletes the partial file and returns
/// [`DataError::ChecksumMismatch`].
pub fn download(spec: &DownloadSpec<'_>) -> Result<Fetched> {
    let dest = &spec.dest;
    let hint = format!(
        "download {} by hand and place it at {}",
        spec.url,
        dest.display()
    );
    if dest.is_file() {
        match &spec.checksum {
            Some(c) => {
                if c.verify(dest).is_ok() {
                    return Ok(Fetched::AlreadyPresent);
                }
                // Kept until a verified replacement is renamed over it.
                tracing::warn!(
                    "{} exists but fails its checksum; downloading a replacement (the file stays until it is verified)",
                    dest.display()
                );
            }
            None => return Ok(Fetched::AlreadyPresent),
        }
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    // One download of a file at a time: a second process waits here, then
    // finds the file present and verified.
    let lock_path = {
        let mut s = dest.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    };
    let lock = File::create(&lock_path).map_err(|e| DataError::io(&lock_path, e))?;
    lock.lock().map_err(|e| DataError::io(&lock_path, e))?;
    if let Some(c) = &spec.checksum {
        if dest.is_file() && c.verify(dest).is_ok() {
            return Ok(Fetched::AlreadyPresent);
        }
    }
    let part = part_path(dest);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let dl_err = |reason: String| DataError::Download {
        url: spec.url.to_string(),
        reason,
        hint: hint.clone(),
    };
    let mut req = agent().get(spec.url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let mut resp = req.call().map_err(|e| dl_err(e.to_string()))?;
    let status = resp.status().as_u16();
    let (mut file, start) = match status {
        206 => (
            OpenOptions::new()
                .append(true)
                .open(&part)
                .map_err(|e| DataError::io(&part, e))?,
            have,
        ),
        200 => (File::create(&part).map_err(|e| DataError::io(&part, e))?, 0),
        416 if have > 0 => {
            // The partial file is already complete (or longer): verify it below.
            (
                OpenOptions::new()
                    .append(true)
                    .open(&part)
                    .map_err(|e| DataError::io(&part, e))?,
                have,
            )
        }
        s => return Err(dl_err(format!("HTTP status {s}"))),
    };
    let remaining: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bar = if spec.progress {
        let pb = ProgressBar::new(start + remaining.unwrap_or(0));
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        pb.set_position(start);
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut transferred = 0u64;
    if status != 416 {
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                dl_err(format!(
                    "connection broke after {} bytes: {e}",
                    start + transferred
                ))
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(|e| DataError::io(&part, e))?;
            transferred += n as u64;
            bar.inc(n as u64);
        }
    }
    file.sync_all().map_err(|e| DataError::io(&part, e))?;
    drop(file);
    bar.finish_and_clear();
    if let Some(c) = &spec.checksum {
        if let Err(e) = c.verify(&part) {
            let _ = std::fs::remove_file(&part);
            return Err(match e {
                DataError::ChecksumMismatch {
                    algorithm,
                    expected,
                    found,
                    ..
                } => DataError::ChecksumMismatch {
                    path: dest.clone(),
                    algorithm,
                    expected,
                    found,
                },
                other => other,
            });
        }
    }
    std::fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))?;
    Ok(Fetched::Downloaded {
        bytes: transferred,
        resumed_from: start,
    })
}

/// Downloads (if needed), verifies and unpacks the official CIFAR-10 binary
/// tarball into `<data_dir>/cifar10/`, giving
/// `<data_dir>/cifar10/cifar-10-batches-bin/`. A no-op when the unpacked
/// files are already there. Returns the unpacked directory.
pub fn fetch_cifar10(data_dir: &Path, url: Option<&str>, progress: bool) -> Result<PathBuf> {
    let out_dir = crate::cifar::official_dir(data_dir);
    if crate::cifar::CifarLayout::discover(data_dir)
        .map(|l| l.dir == out_dir)
        .unwrap_or(false)
    {
        return Ok(out_dir);
    }
    let tarball = data_dir.join("cifar10").join(CIFAR10_TARBALL.name);
    fetch_known(&CIFAR10_TARBALL, url, &tarball, progress)?;
    unpack_tar_gz(&tarball, &data_dir.join("cifar10"))?;
    crate::cifar::CifarLayout::discover(data_dir)?;
    Ok(out_dir)
}

/// Downloads a [`KnownFile`] from `url` (default: its origin) to `dest`.
pub fn fetch_known(
    known: &KnownFile,
    url: Option<&str>,
    dest: &Path,
    progress: bool,
) -> Result<Fetched> {
    download(&DownloadSpec {
        url: url.unwrap_or(known.origin),
        dest: dest.to_path_buf(),
        checksum: Some(known.checksum.clone()),
        progress,
    })
}

/// Unpacks a `.tar.gz` into `into`, refusing entries that would escape it.
pub fn unpack_tar_gz(tarball: &Path, into: &Path) -> Result<()> {
    let f = File::open(tarball).map_err(|e| DataError::io(tarball, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    std::fs::create_dir_all(into).map_err(|e| DataError::io(into, e))?;
    let entries = archive.entries().map_err(|e| DataError::io(tarball, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| DataError::io(tarball, e))?;
        // `unpack_in` rejects absolute paths and `..` components.
        entry
            .unpack_in(into)
            .map_err(|e| DataError::io(tarball, e))?;
    }
    Ok(())
}

/// Where Oxford-17 is published (SPEC §B.1).
pub const FLOWERS17_BASE: &str = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/";

/// SHA-256 of every file of the published `17flowers.tgz` (`jpg/...`).
const FLOWERS17_JPG_SUMS: &str = include_str!("../../../assets/flowers17/jpg.SHA256SUMS");

/// Downloads (resumable, with progress) and unpacks Oxford-17 into
/// `<data_dir>/flowers17/`: `17flowers.tgz` (`jpg/`), `trimaps.tgz`
/// (`trimaps/`) and `datasplits.mat`, from `base` (default: the official
/// site). The site publishes no checksums of its archives, so every
/// unpacked photo is verified against the SHA-256 list of the published
/// set shipped in `assets/flowers17/jpg.SHA256SUMS`. A no-op when the
/// folder already holds the photos, trimaps and a split.
pub fn fetch_flowers17(data_dir: &Path, base: Option<&str>, progress: bool) -> Result<PathBuf> {
    let dir = data_dir.join("flowers17");
    let complete = dir.join("jpg/image_1360.jpg").is_file()
        && dir.join("trimaps").is_dir()
        && (dir.join("datasplits.mat").is_file() || dir.join("splits.json").is_file());
    if complete {
        return Ok(dir);
    }
    let base = base.unwrap_or(FLOWERS17_BASE).trim_end_matches('/');
    let downloads = dir.join("downloads");
    for (file, unpack) in [
        ("17flowers.tgz", true),
        ("trimaps.tgz", true),
        ("datasplits.mat", false),
    ] {
        let dest = if unpack {
            downloads.join(file)
        } else {
            dir.join(file)
        };
        download(&DownloadSpec {
            url: &format!("{base}/{file}"),
            dest: dest.clone(),
            checksum: None,
            progress,
        })?;
        if unpack {
            unpack_tar_gz(&dest, &dir)?;
        }
    }
    verify_flowers17_photos(&dir)?;
    Ok(dir)
}

/// Checks every photo of `dir/jpg` named in the published SHA-256 list.
pub fn verify_flowers17_photos(dir: &Path) -> Result<usize> {
    use rayon::prelude::*;
    let lines: Vec<(&str, &str)> = FLOWERS17_JPG_SUMS
        .lines()
        .filter_map(|l| l.split_once("  "))
        .collect();
    lines
        .par_iter()
        .map(|(sum, name)| {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    path,
                    hint: "17flowers.tgz did not contain it; delete the folder and fetch again"
                        .into(),
                });
            }
            let found = crate::checksum::sha256_file(&path)?;
            if found != *sum {
                return Err(DataError::ChecksumMismatch {
                    path,
                    algorithm: "sha256",
                    expected: sum.to_string(),
                    found,
                });
            }
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    Ok(lines.len())
}
