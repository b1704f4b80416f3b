//! Ownership of a run directory: one process at a time (an OS lock held for
//! the run's life), and no run silently replaced: starting into a directory
//! that holds a run needs `Resume` (continue it) or `Overwrite` (start over,
//! its files removed first — only when the new run's inputs have loaded).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, RunError};

/// The lock file of a run directory.
pub const LOCK: &str = ".pixclass.lock";

/// How a run uses its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the directory must not hold one.
    Fresh,
    /// Continue the run the directory holds (it must hold a checkpoint).
    Resume,
    /// A new run replacing whatever run the directory holds.
    Overwrite,
}

/// Files a run writes (what `Overwrite` removes; nothing else is touched).
fn is_run_file(name: &str) -> bool {
    matches!(
        name,
        "config.json"
            | "run.json"
            | "metrics.csv"
            | "curves.png"
            | "checkpoint.safetensors"
            | "best.safetensors"
            | "sweep.csv"
            | "sweep.md"
            | "sweep.png"
    ) || ((name.starts_with("samples_epoch_") || name.starts_with("predictions_epoch_"))
        && name.ends_with(".png"))
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// A run directory owned by this process until dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    start: Start,
    _lock: File,
}

impl RunDir {
    /// Takes `path` for a run (creating it when missing): locks it (another
    /// process holding it is an error naming its pid) and checks `start`
    /// against what is there. Writes nothing but the lock file.
    pub fn open(path: &Path, start: Start) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| RunError::io(path, e))?;
        let lock_path = path.join(LOCK);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| RunError::io(&lock_path, e))?;
        if lock.try_lock().is_err() {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(RunError::Busy {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    format!("process {holder}")
                },
            });
        }
        // Our pid, for the message another process would print.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "{}", std::process::id());
        let _ = lock.flush();
        let holds_run = ["config.json", "run.json", "checkpoint.safetensors"]
            .iter()
            .any(|f| path.join(f).exists());
        let has_checkpoint = path.join("checkpoint.safetensors").is_file();
        match start {
            Start::Fresh if holds_run => {
                return Err(RunError::Invalid {
                    reason: format!(
                        "{} already holds a run: continue it with --resume {0}, or start over with --overwrite (its files are removed), or choose another --out",
                        path.display()
                    ),
                })
            }
            Start::Resume if !has_checkpoint => {
                return Err(RunError::Invalid {
                    reason: format!(
                        "--resume {}: there is no checkpoint.safetensors there (no epoch of a run finished in that directory)",
                        path.display()
                    ),
                })
            }
            _ => {}
        }
        Ok(Self {
            path: path.to_path_buf(),
            start,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the run started.
    pub fn start(&self) -> Start {
        self.start
    }

    /// For `Overwrite`: removes the previous run's files (only files a run
    /// writes; anything else in the directory stays). Call it once the new
    /// run's inputs have loaded, just before the run writes its own files.
    pub fn clear_previous(&self) -> Result<usize> {
        if self.start != Start::Overwrite {
            return Ok(0);
        }
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.path).map_err(|e| RunError::io(&self.path, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_run_file(&name) && e.path().is_file() {
                std::fs::remove_file(e.path()).map_err(|err| RunError::io(e.path(), err))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
