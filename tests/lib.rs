//! Cross-crate integration tests of pixclass live in this package's test
//! targets (`pipeline.rs`); per-crate tests live in each crate's `tests/`.
