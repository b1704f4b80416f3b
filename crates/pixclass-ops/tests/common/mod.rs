//! Helpers of the op tests: gradient checks and the PyTorch fixtures.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Result, Tensor};

mod gradcheck;
pub use gradcheck::*;

/// A fixture file of `tests/golden`.
pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Loads a fixture file.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(name), &Device::Cpu).expect("fixture")
}

pub fn fixture_grad(
    t: &std::collections::HashMap<String, Tensor>,
    prefix: &str,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> f64 {
    let x = &t[&format!("{prefix}.x")];
    let ours = analytic(f, x).unwrap();
    let theirs: Vec<f64> = t[&format!("{prefix}.grad")]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    rel_err(&ours, &theirs)
}
