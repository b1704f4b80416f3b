//! Atomic file replacement: a temporary file unique to this process and
//! call, fsync, rename over the target. A crash mid-write never leaves a
//! torn file, and two processes never share a temporary name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, RunError};

/// A temporary path next to `path`, unique to this process and call:
/// `.<name>.<pid>.<n>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (unique temporary file, fsync,
/// rename). The temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| RunError::io(&tmp, e))?;
        f.sync_all().map_err(|e| RunError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_unique_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.safetensors");
        let (a, b) = (temp_path(&p), temp_path(&p));
        assert_ne!(a, b, "two writes never share a temporary file");
        assert!(a
            .to_string_lossy()
            .contains(&std::process::id().to_string()));
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }
}
