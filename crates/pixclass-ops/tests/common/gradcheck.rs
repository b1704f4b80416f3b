//! Gradient checks shared by the tests of pixclass-ops and pixclass-models
//! (included by path): finite differences in f64, relative errors, and
//! deterministic test tensors.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};

/// Analytic gradient of the scalar `f(x)` at `x`, or the backward error.
pub fn analytic(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Vec<f64>> {
    let v = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
    let loss = f(v.as_tensor())?;
    let grads = loss.backward()?;
    match grads.get(v.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f64>(),
        None => Ok(vec![0.0; x.elem_count()]),
    }
}

/// Central finite differences of the scalar `f(x)` for every element of `x`
/// (f64, step 1e-6).
pub fn numeric(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Vec<f64>> {
    let eps = 1e-6;
    let base: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let shape = x.shape().clone();
    let mut out = Vec::with_capacity(base.len());
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let fp = f(&Tensor::from_vec(plus, shape.clone(), &Device::Cpu)?)?.to_scalar::<f64>()?;
        let fm = f(&Tensor::from_vec(minus, shape.clone(), &Device::Cpu)?)?.to_scalar::<f64>()?;
        out.push((fp - fm) / (2.0 * eps));
    }
    Ok(out)
}

/// Largest absolute difference relative to the largest magnitude (at least 1).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The relative error of `f`'s analytic gradient at `x` against finite
/// differences, or the error of the backward pass (a gradient that cannot be
/// computed is not the same defect as a wrong one: the canaries that prove a
/// candle built-in wrong tell them apart).
pub fn gradient_error(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<f64> {
    let a = analytic(f, x)?;
    Ok(rel_err(&a, &numeric(f, x)?))
}

/// True when `f`'s analytic gradient at `x` matches finite differences
/// (a backward error fails it).
pub fn gradient_ok(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, tol: f64) -> bool {
    gradient_error(f, x).is_ok_and(|e| e <= tol)
}

/// Deterministic pseudo-random f64 tensor in [-1, 1) with distinct values.
pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// `sum(y * r)`: a scalar with a non-trivial gradient for any `y`.
pub fn weighted_sum(y: &Tensor, r: &Tensor) -> Result<Tensor> {
    y.mul(r)?.sum_all()
}

/// All values of a tensor as f64.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest absolute difference of two tensors relative to the largest
/// magnitude of `b` (at least 1), in f64.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    rel_err(&f64s(a), &f64s(b))
}

/// Largest absolute difference relative to the largest magnitude of `b`
/// (no floor: for outputs much smaller than 1).
pub fn max_rel_strict(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (f64s(a), f64s(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
