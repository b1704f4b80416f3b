//! `park_idle_candle_workers` sets candle's spin limit unless the user has
//! (its own test binary: it changes this process's environment).
#![allow(clippy::unwrap_used)]

#[test]
fn parks_candle_workers_unless_the_user_chose_a_spin_limit() {
    let var = pixclass_ops::CANDLE_SPIN_LIMIT_VAR;
    std::env::remove_var(var);
    pixclass_ops::park_idle_candle_workers();
    assert_eq!(std::env::var(var).as_deref(), Ok("1"));
    std::env::set_var(var, "5000");
    pixclass_ops::park_idle_candle_workers();
    assert_eq!(std::env::var(var).as_deref(), Ok("5000"));
    // candle still computes with its workers parked.
    let a = candle_core::Tensor::ones(1 << 20, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let s = (&a + &a)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(s, 2.0 * (1 << 20) as f32);
}
