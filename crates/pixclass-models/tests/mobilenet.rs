//! DeepLabV3-MobileNetV2 (VOC) against the NumPy interpreter of its TFLite
//! graph (`golden/make_mobilenet_golden.py`) on four real photos, with the
//! weights shipped in `assets/`.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use pixclass_models::mobilenet::{tf_same_padding, MobileNetV2DeepLab, VOC_LABELS};

fn input(fixture: &std::collections::HashMap<String, Tensor>, k: usize) -> Tensor {
    // [257, 257, 3] u8 -> [1, 3, 257, 257] in [-1, 1].
    let rgb = fixture[&format!("img{k}/input")]
        .to_dtype(DType::F32)
        .unwrap();
    ((rgb.permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap() - 127.5).unwrap() / 127.5).unwrap()
}

#[test]
fn tf_same_padding_matches_tensorflow() {
    // 257 -> 129 with stride 2: 1 on each side; 224 -> 112: the odd one after.
    assert_eq!(tf_same_padding(257, 3, 2, 1), ((1, 1), 129));
    assert_eq!(tf_same_padding(224, 3, 2, 1), ((0, 1), 112));
    assert_eq!(tf_same_padding(33, 3, 1, 4), ((4, 4), 33));
    assert_eq!(tf_same_padding(28, 1, 1, 1), ((0, 0), 28));
}

#[test]
fn logits_match_the_reference_interpreter() {
    let fixture = load("mobilenet_voc.safetensors");
    let dev = device();
    let model = MobileNetV2DeepLab::pretrained(&dev, true).unwrap();
    assert_eq!(model.num_classes(), 21);
    // What the oracle sees in each photo, and on at least which fraction.
    let expected = [(16usize, 0.1), (13, 0.1), (3, 0.03), (16, 0.1)]; // potted plant, horse, bird
    for (k, &(class, min_frac)) in expected.iter().enumerate() {
        let x = input(&fixture, k).to_device(&dev).unwrap();
        let logits = model.forward(&x).unwrap().i(0).unwrap(); // [21, 257, 257]
        assert_eq!(logits.dims(), &[21, 257, 257]);
        // Every 8th row and column against the oracle.
        let idx = Tensor::new((0..33u32).map(|i| i * 8).collect::<Vec<_>>(), &dev).unwrap();
        let sub = logits
            .index_select(&idx, 1)
            .unwrap()
            .index_select(&idx, 2)
            .unwrap();
        let ours = f64s(&sub.permute((1, 2, 0)).unwrap());
        let want = f64s(&fixture[&format!("img{k}/logits_sub")]);
        let max_abs = ours
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            max_abs <= 1e-3,
            "image {k}: max abs logit difference {max_abs}"
        );
        // The argmax over all 257x257 pixels.
        let arg: Vec<u8> = logits
            .argmax(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::U8)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<u8> = fixture[&format!("img{k}/argmax")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let same = arg.iter().zip(&want).filter(|(a, b)| a == b).count();
        let frac = same as f64 / want.len() as f64;
        assert!(frac >= 0.999, "image {k}: argmax agrees on {frac}");
        // The photo's object is found.
        let found = arg.iter().filter(|&&c| c as usize == class).count();
        assert!(
            found as f64 > min_frac * arg.len() as f64,
            "image {k}: {} on {found} pixels",
            VOC_LABELS[class]
        );
    }
}

#[test]
fn any_input_size_and_features_without_the_logits_layer() {
    let model = MobileNetV2DeepLab::pretrained(&Device::Cpu, false).unwrap();
    let x = Tensor::zeros((2, 3, 224, 200), DType::F32, &Device::Cpu).unwrap();
    let f = model.features(&x).unwrap();
    assert_eq!(f.dims(), &[2, 256, 28, 25]);
    // Features are ReLU outputs.
    let min = f
        .flatten_all()
        .unwrap()
        .min(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(min >= 0.0);
    let err = model.head(&f, 224, 200).unwrap_err().to_string();
    assert!(err.contains("without its logits layer"), "{err}");
    let err = model
        .features(&Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[1, 1, 32, 32]") && err.contains("RGB"),
        "{err}"
    );
}
