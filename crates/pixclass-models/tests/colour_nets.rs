//! The colourization nets against PyTorch (golden fixtures), for every kernel
//! size, and their layer summaries.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use pixclass_models::layers::{trainable_scalars, trainable_vars};
use pixclass_models::{ColourModelKind, ColourNet, ColourNetConfig};
use pixclass_ops as ops;

fn build(cfg: ColourNetConfig, dtype: DType) -> (VarMap, ColourNet) {
    build_on(cfg, dtype, &Device::Cpu)
}

fn build_on(cfg: ColourNetConfig, dtype: DType, dev: &Device) -> (VarMap, ColourNet) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, dev);
    let net = ColourNet::new(cfg, vb).unwrap();
    (vm, net)
}

/// Mean per-pixel cross-entropy, written out here so this crate's tests do
/// not depend on pixclass-metrics.
fn ce(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let (n, _c, h, w) = logits.dims4()?;
    let lsm = ops::log_softmax(logits, 1)?;
    let picked = lsm.gather(&target.unsqueeze(1)?, 1)?;
    picked.sum_all()?.affine(-1.0 / (n * h * w) as f64, 0.0)
}

fn golden_case(file: &str) {
    let t = load(file);
    let meta = {
        let bytes = std::fs::read(golden(file)).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        m.metadata().clone().unwrap()
    };
    let num = |k: &str| meta[k].parse::<usize>().unwrap();
    let cfg = ColourNetConfig {
        kind: meta["kind"].parse().unwrap(),
        kernel: num("kernel"),
        num_filters: num("nf"),
        num_colours: num("nc"),
        in_channels: num("nic"),
    };
    let dev = device();
    let (vm, net) = build_on(cfg, DType::F32, &dev);
    // Load the PyTorch state dict: every tensor must be used exactly once.
    {
        let data = vm.data().lock().unwrap();
        let params: Vec<&String> = t.keys().filter(|k| k.starts_with("param.")).collect();
        assert_eq!(
            params.len(),
            data.len(),
            "{file}: tensor count differs from PyTorch's state dict"
        );
        for (name, var) in data.iter() {
            let src = t
                .get(&format!("param.{name}"))
                .unwrap_or_else(|| panic!("{file}: {name} missing"));
            var.set(&src.to_device(&dev).unwrap()).unwrap();
        }
    }
    assert_eq!(
        trainable_scalars(&vm),
        t.keys()
            .filter(|k| k.starts_with("grad."))
            .map(|k| t[k].elem_count())
            .sum::<usize>()
    );
    let x = t["x"].to_device(&dev).unwrap();
    let logits = net.forward_t(&x, true).unwrap();
    assert!(
        max_rel(&logits, &t["logits_train"]) < 1e-4,
        "{file}: train logits"
    );
    let target = t["target"].to_dtype(DType::U32).unwrap();
    let loss = ce(&logits, &target.to_device(&dev).unwrap()).unwrap();
    assert!(
        max_rel(&loss.reshape(1).unwrap(), &t["loss"]) < 1e-5,
        "{file}: loss"
    );
    let grads = loss.backward().unwrap();
    for (name, var) in trainable_vars(&vm) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{file}: no gradient for {name}"));
        let e = max_rel(g, &t[&format!("grad.{name}")]);
        assert!(e < 1e-4, "{file}: gradient of {name} off by {e}");
    }
    // Running statistics after one train step, then eval-mode logits.
    {
        let data = vm.data().lock().unwrap();
        for (name, var) in data.iter().filter(|(n, _)| n.contains("running")) {
            let e = max_rel(var.as_tensor(), &t[&format!("after.{name}")]);
            assert!(e < 1e-5, "{file}: {name} after the train step off by {e}");
        }
    }
    let eval = net.forward_t(&x, false).unwrap();
    assert!(
        max_rel(&eval, &t["logits_eval"]) < 1e-4,
        "{file}: eval logits"
    );
}

#[test]
fn pool_upsample_matches_pytorch() {
    golden_case("colour_pool_k3.safetensors");
    golden_case("colour_pool_k2.safetensors");
}

#[test]
fn conv_transpose_matches_pytorch() {
    golden_case("colour_convt_k3.safetensors");
    golden_case("colour_convt_k4.safetensors");
}

#[test]
fn unet_matches_pytorch() {
    golden_case("colour_unet_k3.safetensors");
    golden_case("colour_unet_k5.safetensors");
}

#[test]
fn every_kernel_size_keeps_the_resolution() {
    for kind in ColourModelKind::ALL {
        for k in 2..=7 {
            let cfg = ColourNetConfig {
                kind,
                kernel: k,
                num_filters: 4,
                num_colours: 5,
                in_channels: 1,
            };
            let (_vm, net) = build(cfg, DType::F32);
            let x = Tensor::rand(0f32, 1.0, (2, 1, 32, 32), &Device::Cpu).unwrap();
            let y = net.forward_t(&x, true).unwrap();
            assert_eq!(y.dims(), &[2, 5, 32, 32], "{kind} k={k}");
            // Fully convolutional: any size divisible by 4, non-square too.
            let x = Tensor::rand(0f32, 1.0, (1, 1, 44, 24), &Device::Cpu).unwrap();
            assert_eq!(
                net.forward_t(&x, false).unwrap().dims(),
                &[1, 5, 44, 24],
                "{kind} k={k}"
            );
        }
    }
    assert_eq!(
        [3, 4, 5].map(|k| (
            pixclass_models::colourize::strided_padding(k),
            pixclass_models::colourize::transposed_output_padding(k)
        )),
        [(1, 1), (1, 0), (2, 1)]
    );
}

#[test]
fn whole_net_gradients_match_finite_differences() {
    // Every parameter of a tiny UNet and PoolUpsampleNet in f64, train-mode BN.
    for kind in [
        ColourModelKind::UNet,
        ColourModelKind::PoolUpsample,
        ColourModelKind::ConvTranspose,
    ] {
        let cfg = ColourNetConfig {
            kind,
            kernel: 3,
            num_filters: 2,
            num_colours: 3,
            in_channels: 1,
        };
        // Seeded weights: with candle's default initialisation (a fresh
        // random draw every run) about one run in 40 put a ReLU or max-pool
        // input within the finite difference's step of its kink, and the
        // test failed at random.
        let vm = VarMap::new();
        let vb = pixclass_models::init::seeded_var_builder(&vm, 0, DType::F64, &Device::Cpu);
        let net = ColourNet::new(cfg, vb).unwrap();
        let x = rand_tensor(&[2, 1, 8, 8], 30);
        let target = Tensor::from_vec(
            (0..128u32).map(|i| (i * 7 + 1) % 3).collect(),
            (2, 8, 8),
            &Device::Cpu,
        )
        .unwrap();
        for (name, var) in trainable_vars(&vm) {
            let orig = var.as_tensor().copy().unwrap();
            let f = |p: &Tensor| {
                var.set(p)?;
                ce(
                    &net.forward_t(&x, true).map_err(candle_core::Error::wrap)?,
                    &target,
                )
            };
            let num = numeric(&f, &orig).unwrap();
            var.set(&orig).unwrap();
            let loss = ce(&net.forward_t(&x, true).unwrap(), &target).unwrap();
            let g: Vec<f64> = loss
                .backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let e = rel_err(&g, &num);
            assert!(e < 1e-5, "{kind}: {name} gradient off by {e}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vm, net) = build(ColourNetConfig::default(), DType::F32);
    let err = net
        .forward_t(
            &Tensor::zeros((1, 1, 30, 32), DType::F32, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("multiples of 4") && err.to_string().contains("30"),
        "{err}"
    );
    let err = net
        .forward_t(
            &Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("1 input channel"), "{err}");
    let err = net.forward_t(
        &Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 16))
            .unwrap(),
        false,
    );
    assert!(err.is_err());
    let cfg = ColourNetConfig {
        kernel: 1,
        ..Default::default()
    };
    let vm = VarMap::new();
    let e = ColourNet::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
        .err()
        .unwrap();
    assert!(e.to_string().contains("kernel size must be >= 2"));
    // BN refuses a single value per channel in train mode (NaN running_var otherwise).
    let (_vm, net) = build(
        ColourNetConfig {
            kind: ColourModelKind::ConvTranspose,
            ..Default::default()
        },
        DType::F32,
    );
    let err = net
        .forward_t(
            &Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap(),
            true,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("more than one value per channel"),
        "{err}"
    );
}

fn closed_form(nic: usize, nf: usize, nc: usize) -> usize {
    9 * nic * nf + 36 * nf * nf + 9 * nf * nc + 9 * nc * nc + 12 * nf + 4 * nc
}

#[test]
fn summary_totals_match_the_study_and_the_model() {
    let expect = [
        (ColourModelKind::PoolUpsample, 49_728),
        (ColourModelKind::ConvTranspose, 49_728),
        (ColourModelKind::UNet, 56_856),
    ];
    for (kind, params) in expect {
        let (vm, net) = build(
            ColourNetConfig {
                kind,
                ..Default::default()
            },
            DType::F32,
        );
        let s = net.summary(32, 32).unwrap();
        assert_eq!(s.total_params(), params, "{kind}");
        assert_eq!(
            s.total_params(),
            trainable_scalars(&vm),
            "{kind}: summary vs real parameters"
        );
        assert_eq!(s.rows.last().unwrap().output, [24, 32, 32]);
        // Doubling width and height: same parameters, 4x outputs and connections.
        let s2 = net.summary(64, 64).unwrap();
        assert_eq!(s2.total_params(), s.total_params());
        assert_eq!(s2.total_outputs(), 4 * s.total_outputs());
        assert_eq!(s2.total_connections(), 4 * s.total_connections());
    }
    for nic in [1, 3] {
        for nf in [1, 8, 32] {
            for nc in [16, 24, 32] {
                let cfg = ColourNetConfig {
                    kind: ColourModelKind::PoolUpsample,
                    kernel: 3,
                    num_filters: nf,
                    num_colours: nc,
                    in_channels: nic,
                };
                let (vm, net) = build(cfg, DType::F32);
                assert_eq!(
                    net.summary(32, 32).unwrap().total_params(),
                    closed_form(nic, nf, nc)
                );
                assert_eq!(trainable_scalars(&vm), closed_form(nic, nf, nc));
            }
        }
    }
}

#[test]
fn pool_upsample_summary_rows_by_hand() {
    let (_vm, net) = build(ColourNetConfig::default(), DType::F32);
    let s = net.summary(32, 32).unwrap();
    let rows: Vec<(&str, usize, [usize; 3], usize)> = s
        .rows
        .iter()
        .map(|r| (r.name.as_str(), r.params, r.output, r.connections))
        .collect();
    assert_eq!(
        rows[0],
        ("layer1.0", 9 * 32 + 32, [32, 32, 32], 32 * 32 * 32 * 9)
    );
    assert_eq!(rows[1], ("layer1.1", 0, [32, 16, 16], 32 * 16 * 16 * 4));
    assert_eq!(rows[2], ("layer1.2", 64, [32, 16, 16], 32 * 16 * 16));
    assert_eq!(
        rows[4],
        (
            "layer2.0",
            9 * 32 * 64 + 64,
            [64, 16, 16],
            64 * 16 * 16 * 32 * 9
        )
    );
    assert_eq!(rows[9], ("layer3.1", 0, [32, 16, 16], 32 * 16 * 16));
    assert_eq!(
        rows[16],
        (
            "layer5",
            9 * 24 * 24 + 24,
            [24, 32, 32],
            24 * 32 * 32 * 24 * 9
        )
    );
    assert_eq!(rows.len(), 17);
    assert!(s.to_table().contains("49728"));
}

/// `torch_var_builder` reproduces PyTorch's initial weights bit for bit:
/// `torch.manual_seed(seed)` then building the net (golden values from
/// `golden/make_torch_init.py`).
#[test]
fn torch_init_matches_pytorch_bit_for_bit() {
    let text = std::fs::read_to_string(common::golden("torch_init.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let kind: ColourModelKind = case["kind"].as_str().unwrap().parse().unwrap();
        let kernel = case["kernel"].as_u64().unwrap() as usize;
        let seed = case["seed"].as_u64().unwrap();
        let vm = VarMap::new();
        let vb = pixclass_models::init::torch_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        ColourNet::new(
            ColourNetConfig {
                kind,
                kernel,
                ..Default::default()
            },
            vb,
        )
        .unwrap();
        let vars = vm.data().lock().unwrap();
        let params = case["params"].as_array().unwrap();
        for p in params {
            let name = p["name"].as_str().unwrap();
            let t = vars
                .get(name)
                .unwrap_or_else(|| panic!("{kind}: no {name}"));
            let v = t
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let shape: Vec<usize> = p["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.as_tensor().dims(), shape.as_slice(), "{kind} {name}");
            for (i, h) in p["head"].as_array().unwrap().iter().enumerate() {
                assert_eq!(
                    v[i],
                    h.as_f64().unwrap() as f32,
                    "{kind} k{kernel} seed {seed} {name}[{i}]"
                );
            }
            let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
            let want = p["sum"].as_f64().unwrap();
            assert!(
                (sum - want).abs() < 1e-9,
                "{kind} {name}: sum {sum} vs {want}"
            );
        }
        // Every drawn parameter is covered (BatchNorm's constants draw nothing).
        let trainable = vars.keys().filter(|n| !n.contains("running")).count();
        assert_eq!(trainable, params.len(), "{kind}: parameter count");
    }
}
