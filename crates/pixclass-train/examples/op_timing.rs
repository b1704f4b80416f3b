//! Times single ops (forward + backward) at the sizes of the colourization nets.
use std::time::Instant;

/// The same allocator (and settings) as the `pixclass` binary.
#[path = "../../pixclass-cli/src/allocator.rs"]
mod allocator;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use pixclass_models::layers::{BatchNorm2d, BatchNormConfig};
use pixclass_ops as ops;

fn time(
    name: &str,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
) -> candle_core::Result<()> {
    let v = Var::from_tensor(x)?;
    for i in 0..3 {
        let t0 = Instant::now();
        let y = f(v.as_tensor())?;
        let t1 = Instant::now();
        let g = y.sum_all()?.backward()?;
        let t2 = Instant::now();
        let _ = g;
        if i == 2 {
            println!("{name:>28}: fwd {:>8.2?} bwd {:>8.2?}", t1 - t0, t2 - t1);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    pixclass_ops::park_idle_candle_workers();
    let dev = Device::Cpu;
    let x = Tensor::rand(0f32, 1.0, (100, 32, 32, 32), &dev)?;
    let vm = candle_nn::VarMap::new();
    let bn = BatchNorm2d::new(
        32,
        BatchNormConfig::default(),
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )?;
    time(
        "batchnorm train 100x32x32x32",
        &|x| bn.forward_t(x, true),
        &x,
    )?;
    time("batchnorm eval", &|x| bn.forward_t(x, false), &x)?;
    time("maxpool2", &|x| ops::max_pool2d(x, 2), &x)?;
    time("upsample2", &|x| ops::upsample_nearest(x, 2), &x)?;
    time("relu", &|x| x.relu(), &x)?;
    let w = Tensor::rand(-0.1f32, 0.1, (32, 32, 3, 3), &dev)?;
    time(
        "conv 32->32 k3",
        &|x| ops::conv2d(x, &w, (1, 1), (1, 1), 1, 1, 1),
        &x,
    )?;
    let l = Tensor::rand(0f32, 1.0, (100, 24, 32, 32), &dev)?;
    let t = Tensor::zeros((100, 32, 32), DType::U32, &dev)?;
    time(
        "cross-entropy 100x24x32x32",
        &|x| pixclass_metrics::cross_entropy(x, &t),
        &l,
    )?;
    time("log_softmax dim1", &|x| ops::log_softmax(x, 1), &l)?;
    time("mean_keepdim (0,2,3)", &|x| x.mean_keepdim((0, 2, 3)), &x)?;
    time(
        "sum_keepdim 3 then 2 then 0",
        &|x| x.sum_keepdim(3)?.sum_keepdim(2)?.sum_keepdim(0),
        &x,
    )?;
    Ok(())
}
