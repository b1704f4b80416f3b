//! Tests on the real CIFAR-10 files of `$PIXCLASS_DATA` (../shared/data).
//! They print a loud SKIPPED line when the data is absent.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use pixclass_data::checksum::{verify_if_known, VerifyStatus};
use pixclass_data::cifar::{CifarLayout, CifarSet, CifarSource, Split, HORSE};
use pixclass_data::colours::{pixels_of, Palette};
use pixclass_data::paths::real_data_dir;
use pixclass_data::ColourSplit;

#[test]
fn horse_counts_and_official_test_batch() {
    let Some(root) = real_data_dir("horse_counts_and_official_test_batch") else {
        return;
    };
    let layout = CifarLayout::discover(&root).unwrap();
    let train = CifarSet::read_files(&layout.train)
        .unwrap()
        .filter_class(HORSE)
        .unwrap();
    let test = CifarSet::read_files(&layout.test)
        .unwrap()
        .filter_class(HORSE)
        .unwrap();
    assert_eq!(train.len(), 5000);
    assert_eq!(test.len(), 1000);

    // The official test batch: verified by its published checksum, 1000 of
    // each class, and its horses byte-identical to horse_test.bin.
    let tb = root.join("cifar10/test_batch.bin");
    let (full, status) = CifarSet::read_file_verified(&tb).unwrap();
    assert_eq!(status, VerifyStatus::Verified("sha256"));
    assert_eq!(full.class_counts(), [1000; 10]);
    let horses = full.filter_class(HORSE).unwrap();
    let horse_test = CifarSet::read_file(&root.join("cifar10/horse_test.bin")).unwrap();
    assert_eq!(horses, horse_test);
    assert_eq!(
        verify_if_known(&root.join("cifar10/horse_train.bin")).unwrap(),
        VerifyStatus::Verified("sha256")
    );

    // First training horse, first pixels of each plane (read with NumPy).
    let img = train.image(0);
    assert_eq!(&img[0..5], &[28, 30, 33, 62, 63]);
    assert_eq!(&img[1024..1029], &[35, 34, 44, 83, 84]);
    assert_eq!(&img[2048..2053], &[39, 44, 47, 72, 72]);
}

#[test]
fn colour_class_histogram_of_the_training_horses() {
    let Some(root) = real_data_dir("colour_class_histogram_of_the_training_horses") else {
        return;
    };
    let src = CifarSource::Files(CifarLayout::discover(&root).unwrap());
    let train = src.load(Split::Train).unwrap().filter_class(HORSE).unwrap();
    let palette = Palette::reference(24).unwrap();
    let split = ColourSplit::new(&train, &palette, 0, Split::Train).unwrap();
    let hist = split.class_histogram(24);
    // Computed independently with NumPy (np.linalg.norm + np.argmin, f64).
    let expected = [
        155639, 314424, 229497, 160983, 163528, 195551, 256040, 193835, 226960, 175711, 326284,
        284981, 84008, 191213, 110198, 342741, 145988, 294802, 164237, 230518, 45161, 268147,
        316691, 242863,
    ];
    assert_eq!(hist, expected);
    let most = hist.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
    assert_eq!(most, 15);

    // The reference palette's distortion on these pixels (NumPy: 0.0728212).
    let d = palette.distortion_of(&pixels_of(train.pixels(), 1024));
    assert!((d - 0.072_821_157_857).abs() < 1e-9, "{d}");
    assert!((palette.distortion.unwrap() - 0.072_829_931).abs() < 1e-8);

    // The tensor version agrees with the f64 reference pixel for pixel.
    let n = 200;
    let rgb: Vec<f64> = train.pixels()[..n * 3072]
        .iter()
        .map(|&b| b as f64 / 256.0)
        .collect();
    let t = Tensor::from_vec(rgb, (n, 3, 32, 32), &Device::Cpu).unwrap();
    let classes = palette.quantize_tensor(&t).unwrap();
    assert_eq!(classes.dtype(), DType::U32);
    let from_tensor: Vec<u32> = classes.flatten_all().unwrap().to_vec1().unwrap();
    let from_slice = palette.quantize_bytes(&train.pixels()[..n * 3072], 1024);
    assert_eq!(from_tensor, from_slice);
}
