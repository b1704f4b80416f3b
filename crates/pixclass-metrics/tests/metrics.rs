//! Losses and metrics with hand-computed values.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use pixclass_metrics::*;

fn logits_2class(fg_logit: &[f32], n: usize, h: usize, w: usize) -> Tensor {
    // Background logit 0, foreground logit given: p = sigmoid(fg).
    let hw = h * w;
    let mut v = Vec::new();
    for i in 0..n {
        v.extend(std::iter::repeat_n(0f32, hw));
        v.extend_from_slice(&fg_logit[i * hw..(i + 1) * hw]);
    }
    Tensor::from_vec(v, (n, 2, h, w), &Device::Cpu).unwrap()
}

#[test]
fn cross_entropy_by_hand() {
    // One pixel, logits [0, ln 3]: p(class 1) = 3/4.
    let l = Tensor::new(&[[[[0f32]], [[3f32.ln()]]]], &Device::Cpu).unwrap();
    let t1 = Tensor::new(&[[[1u32]]], &Device::Cpu).unwrap();
    let t0 = Tensor::new(&[[[0u32]]], &Device::Cpu).unwrap();
    let v1 = cross_entropy(&l, &t1).unwrap().to_scalar::<f32>().unwrap();
    let v0 = cross_entropy(&l, &t0).unwrap().to_scalar::<f32>().unwrap();
    assert!((v1 - (4.0f32 / 3.0).ln()).abs() < 1e-6);
    assert!((v0 - 4f32.ln()).abs() < 1e-6);
    assert_eq!(correct_pixels(&l, &t1).unwrap(), 1);
    assert_eq!(correct_pixels(&l, &t0).unwrap(), 0);
}

#[test]
fn soft_iou_uses_batch_level_sums() {
    // Two images of 2 pixels; p = 0.5 everywhere (logit 0), y = [1,0 | 0,0].
    let l = logits_2class(&[0.0; 4], 2, 1, 2);
    let y = Tensor::new(&[[[1u32, 0]], [[0, 0]]], &Device::Cpu).unwrap();
    // I = 0.5; U = sum(p) + sum(y) - I = 2 + 1 - 0.5 = 2.5; loss = 1 - 0.2.
    let v = soft_iou_loss(&l, &y).unwrap().to_scalar::<f32>().unwrap();
    assert!((v - 0.8).abs() < 1e-6, "{v}");
    // Dice: 1 - (2*0.5 + 1e-6)/(2 + 1 + 1e-6) = 2/3.
    let d = soft_dice_loss(&l, &y).unwrap().to_scalar::<f32>().unwrap();
    assert!((d - 2.0 / 3.0).abs() < 1e-6, "{d}");
    // Per-image IoU would differ: image 1 alone gives 0.5/1.5, image 2 gives 0.
    // Empty ground truth and zero prediction: I = 0 -> loss 1.
    let l = logits_2class(&[-80.0; 4], 2, 1, 2);
    let y0 = Tensor::new(&[[[0u32, 0]], [[0, 0]]], &Device::Cpu).unwrap();
    let v = soft_iou_loss(&l, &y0).unwrap().to_scalar::<f32>().unwrap();
    assert!((v - 1.0).abs() < 1e-5, "{v}");
    let three = Tensor::zeros((1, 3, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(soft_iou_loss(&three, &Tensor::new(&[[[0u32]]], &Device::Cpu).unwrap()).is_err());
}

#[test]
fn thresholded_score_by_hand() {
    // iou = 1 -> ceil(10)/10 = 1.
    assert_eq!(thresholded_iou_score(&[1, 1, 0, 0], &[1, 1, 0, 0]), 1.0);
    // iou = 2/3 -> 20*(0.1667) = 3.33 -> ceil 4 -> 0.4.
    assert!((thresholded_iou_score(&[1, 1, 1, 0], &[1, 1, 0, 0]) - 0.4).abs() < 1e-6);
    // iou "0.5": the +1e-6 smoothing makes it (1+1e-6)/(2+1e-6) > 0.5, so
    // the reference formula gives 0.1, not 0.
    assert_eq!(thresholded_iou_score(&[1, 1, 0, 0], &[1, 0, 0, 0]), 0.1);
    // iou = 1/3 -> 0.
    assert_eq!(thresholded_iou_score(&[1, 1, 1, 0], &[1, 0, 0, 0]), 0.0);
    // Empty prediction, empty ground truth: (0+1e-6)/(0+1e-6) = 1 -> 1.0.
    assert_eq!(thresholded_iou_score(&[0, 0], &[0, 0]), 1.0);
    // Empty prediction, non-empty truth -> iou ~ 0 -> 0.
    assert_eq!(thresholded_iou_score(&[0, 0], &[1, 0]), 0.0);
    // Non-empty prediction, empty truth -> 0.
    assert_eq!(thresholded_iou_score(&[1, 0], &[0, 0]), 0.0);
    // iou = 0.8 -> 20*0.3 = 6 -> 0.6.
    assert!((thresholded_iou_score(&[1, 1, 1, 1, 1], &[1, 1, 1, 1, 0]) - 0.6).abs() < 1e-6);
}

#[test]
fn confusion_matrix_by_hand() {
    let mut cm = ConfusionMatrix::new(2);
    // truth:  1 1 0 0 0 ; pred: 1 0 1 0 0
    cm.add(&[1, 1, 0, 0, 0], &[1, 0, 1, 0, 0]);
    assert_eq!(
        (cm.get(0, 0), cm.get(0, 1), cm.get(1, 0), cm.get(1, 1)),
        (2, 1, 1, 1)
    );
    assert!((cm.pixel_accuracy().unwrap() - 0.6).abs() < 1e-12);
    let iou = cm.iou();
    assert!((iou[0].unwrap() - 0.5).abs() < 1e-12); // 2 / (2 + 1 + 1)
    assert!((iou[1].unwrap() - 1.0 / 3.0).abs() < 1e-12); // 1 / (1 + 1 + 1)
    assert!((cm.mean_iou().unwrap() - (0.5 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    // Accumulating two batches equals one big batch.
    let mut a = ConfusionMatrix::new(2);
    a.add(&[1, 1], &[1, 0]);
    a.add(&[0, 0, 0], &[1, 0, 0]);
    assert_eq!(a, cm);
    // Class 1 neither present nor predicted: no IoU (absent, never NaN or
    // 1), left out of mIoU; an empty matrix has no accuracy.
    let mut e = ConfusionMatrix::new(2);
    e.add(&[0, 0], &[0, 0]);
    assert_eq!(e.iou()[1], None);
    assert_eq!(e.mean_iou(), Some(1.0));
    assert_eq!(ConfusionMatrix::new(2).pixel_accuracy(), None);
    // From logits.
    let l = Tensor::new(&[[[[1f32, 0.0]], [[0.0, 1.0]]]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[[[0u32, 0]]], &Device::Cpu).unwrap();
    let mut m = ConfusionMatrix::new(2);
    m.add_logits(&l, &t).unwrap();
    assert_eq!((m.get(0, 0), m.get(0, 1)), (1, 1));
}

#[test]
fn margin_losses_equal_two_channel_losses() {
    // Random 2-channel logits; the margin is logit_1 - logit_0.
    let dev = Device::Cpu;
    let l = Tensor::rand(-3f32, 3.0, (2, 2, 5, 6), &dev).unwrap();
    let t = Tensor::rand(0f32, 1.0, (2, 5, 6), &dev)
        .unwrap()
        .ge(0.6)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let margin = (l.narrow(1, 1, 1).unwrap() - l.narrow(1, 0, 1).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap();
    for loss in [Loss::Ce, Loss::Iou, Loss::Dice] {
        let a = pixclass_metrics::loss::compute(loss, &l, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = loss
            .compute_margin(&margin, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-5, "{loss:?}: {a} vs {b}");
    }
}
