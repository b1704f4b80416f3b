//! Opt-in per-op timing of the CPU kernels: the per-op breakdown of a
//! training step in docs/PERFORMANCE.md (`step_timing --profile`), next to
//! `torch.profiler`'s for PyTorch.
//!
//! Off by default: every kernel then pays one relaxed atomic load. When on,
//! each kernel call adds its wall time to its op name (candle's own ops, which
//! the kernels do not cover, are what a step's total minus the table leaves).
//! The table is process-wide; time only one thing at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, OpTime>> = Mutex::new(BTreeMap::new());

/// Calls and wall time of one kernel op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTime {
    /// The op's name (`pixclass-conv2d`, ...).
    pub name: &'static str,
    /// Calls since the table was last taken.
    pub calls: u64,
    /// Their total wall time.
    pub total: Duration,
}

/// Starts (`true`) or stops recording.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The ops recorded since the last call, by name; empties the table.
pub fn take() -> Vec<OpTime> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *t).into_values().collect()
}

/// Times one kernel call from creation to drop (when recording is on).
pub(crate) struct Scope {
    name: &'static str,
    start: Option<Instant>,
}

/// A [`Scope`] for op `name`.
pub(crate) fn scope(name: &'static str) -> Scope {
    Scope {
        name,
        start: ON.load(Ordering::Relaxed).then(Instant::now),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let dt = start.elapsed();
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(self.name).or_insert(OpTime {
                name: self.name,
                calls: 0,
                total: Duration::ZERO,
            });
            e.calls += 1;
            e.total += dt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_enabled() {
        drop(scope("off"));
        enable(true);
        drop(scope("a"));
        drop(scope("a"));
        enable(false);
        drop(scope("b"));
        // (Other tests' kernels may have recorded while it was on: look at
        // these names only.)
        let t = take();
        let calls = |n: &str| t.iter().find(|o| o.name == n).map(|o| o.calls);
        assert_eq!(calls("a"), Some(2));
        assert_eq!(calls("b"), None);
        assert_eq!(calls("off"), None);
        assert!(!take().iter().any(|o| o.name == "a"), "taken once");
    }
}
