//! Helpers shared by the model tests: fixture access, the test device, and
//! the gradient checks of pixclass-ops' tests.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

#[path = "../../../pixclass-ops/tests/common/gradcheck.rs"]
mod gradcheck;
#[allow(unused_imports)]
pub use gradcheck::*;

/// The device of the golden tests: the CPU, or the GPU with
/// `PIXCLASS_TEST_DEVICE=cuda` (a `--features cuda` build), so the same
/// PyTorch fixtures check candle's CUDA path too. Asking for a GPU that is
/// not there fails the test; it never falls back to the CPU.
pub fn device() -> Device {
    match std::env::var("PIXCLASS_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => Device::Cpu,
        Ok("cuda") => {
            Device::new_cuda(0).expect("PIXCLASS_TEST_DEVICE=cuda: no usable CUDA device")
        }
        Ok(other) => panic!("PIXCLASS_TEST_DEVICE={other:?}: cpu or cuda"),
    }
}

/// The folder of the golden fixtures.
pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Loads a fixture file.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(name), &Device::Cpu).expect("fixture")
}
