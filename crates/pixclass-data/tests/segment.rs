//! Segmentation data: Oxford-17 (real, when `$PIXCLASS_DATA` is set), the
//! embedded sample, users' image/mask folders and their bad cases, and the
//! MATLAB reader on generated `.mat` files (`fixtures/make_mat.py`).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::Device;
use pixclass_data::matfile::read_mat;
use pixclass_data::paths::real_data_dir;
use pixclass_data::segment::{
    folder_splits, MaskResize, MaskRule, Preprocess, SegSet, SegSource, IMAGENET_MEAN, IMAGENET_STD,
};

#[test]
fn oxford17_split_and_masks_like_pil() {
    let Some(root) = real_data_dir("oxford17_split_and_masks_like_pil") else {
        return;
    };
    let src = SegSource::discover(&root).unwrap();
    assert!(matches!(src, SegSource::Oxford17 { .. }));
    let splits = src.splits().unwrap();
    assert_eq!((splits.train.len(), splits.val.len()), (635, 211));
    assert_eq!(splits.train[0].id, "image_0001");
    assert_eq!(splits.val[0].id, "image_0004");
    let first = |id: &str| {
        splits
            .train
            .iter()
            .chain(&splits.val)
            .find(|s| s.id == id)
            .unwrap()
            .clone()
    };
    let samples = vec![first("image_0001"), first("image_0421")];
    // Flower pixels after the 224x224 resize; PIL (bilinear, RGB) gives
    // 11122 and 15132, nearest 12174 and 16021. The filters differ slightly
    // at the blended edges: within 2 %.
    for (mode, want) in [
        (MaskResize::Bilinear, [11122.0, 15132.0]),
        (MaskResize::Nearest, [12174.0, 16021.0]),
    ] {
        let pre = Preprocess {
            mask_resize: mode,
            ..Preprocess::default()
        };
        let set = SegSet::load(&samples, &pre, false).unwrap();
        assert_eq!(set.len(), 2);
        for (i, w) in want.iter().enumerate() {
            let fg = set.mask_bytes(i).iter().filter(|&&m| m == 1).count() as f64;
            assert!(
                (fg - w).abs() / w < 0.02,
                "{mode:?} image {i}: {fg} flower pixels, PIL {w}"
            );
        }
    }
}

#[test]
fn embedded_sample_loads_and_normalises() {
    let splits = SegSource::Embedded.splits().unwrap();
    assert_eq!((splits.train.len(), splits.val.len()), (36, 12));
    let pre = Preprocess {
        size: 64,
        ..Preprocess::default()
    };
    let set = SegSet::load(&splits.val, &pre, false).unwrap();
    assert_eq!(set.len(), 12);
    assert_eq!(set.images.len(), 12 * 64 * 64 * 3);
    let fg = set.foreground_fraction();
    assert!(fg > 0.1 && fg < 0.7, "flower fraction {fg}");
    let x = set
        .images_tensor(&[0, 3], IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[2, 3, 64, 64]);
    // First pixel of image 0, red channel, by hand.
    let r = set.image_bytes(0)[0] as f32 / 255.0;
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((v - (r - 0.485) / 0.229).abs() < 1e-6);
    let m = set.masks_tensor(&[0, 3], &Device::Cpu).unwrap();
    assert_eq!(m.dims(), &[2, 64, 64]);
}

fn write_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn folder_layout_colour_and_grey_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    // Four pairs; the left half of each mask is foreground.
    for i in 0..4 {
        write_rgb(&d.join(format!("images/p{i}.png")), 8, 6, |x, _| {
            [x as u8 * 30, 0, 0]
        });
        if i % 2 == 0 {
            write_rgb(&d.join(format!("masks/p{i}.png")), 8, 6, |x, _| {
                if x < 4 {
                    [128, 0, 0]
                } else {
                    [0, 0, 0]
                }
            });
        } else {
            image::GrayImage::from_fn(8, 6, |x, _| image::Luma([if x < 4 { 255 } else { 0 }]))
                .save(d.join(format!("masks/p{i}.png")))
                .unwrap();
        }
    }
    let src = SegSource::discover(d).unwrap();
    assert!(matches!(src, SegSource::Folder { .. }));
    let splits = src.splits().unwrap();
    assert_eq!(splits.train.len(), 3);
    assert_eq!(splits.val.len(), 1);
    assert_eq!(splits.val[0].id, "p3");
    let pre = Preprocess {
        size: 8,
        mask_resize: MaskResize::Nearest,
        rule: MaskRule::default(),
    };
    let set = SegSet::load(&splits.train, &pre, false).unwrap();
    for i in 0..3 {
        let row: Vec<u8> = set.mask_bytes(i)[..8].to_vec();
        assert_eq!(row, [1, 1, 1, 1, 0, 0, 0, 0], "mask {i}");
    }
    // A grey foreground value that is not present: empty mask.
    let pre2 = Preprocess {
        rule: MaskRule {
            value: Some(7),
            ..MaskRule::default()
        },
        ..pre
    };
    let set = SegSet::load(&splits.val, &pre2, false).unwrap();
    assert!(set.mask_bytes(0).iter().all(|&m| m == 0));
}

#[test]
fn folder_layout_bad_cases_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    write_rgb(&d.join("images/a.png"), 8, 6, |_, _| [1, 2, 3]);
    write_rgb(&d.join("masks/a.png"), 8, 6, |_, _| [128, 0, 0]);
    write_rgb(&d.join("images/b.png"), 8, 6, |_, _| [1, 2, 3]);
    // Missing mask.
    let err = folder_splits(d).unwrap_err().to_string();
    assert!(err.contains("b.png") && err.contains("mask"), "{err}");
    // Size mismatch.
    write_rgb(&d.join("masks/b.png"), 7, 6, |_, _| [128, 0, 0]);
    // Unreadable image.
    std::fs::write(d.join("images/c.jpg"), b"not a jpeg").unwrap();
    write_rgb(&d.join("masks/c.png"), 8, 6, |_, _| [128, 0, 0]);
    let splits = folder_splits(d).unwrap();
    let all: Vec<_> = splits.train.iter().chain(&splits.val).cloned().collect();
    assert_eq!(all.len(), 3);
    let pre = Preprocess {
        size: 4,
        ..Preprocess::default()
    };
    let err = SegSet::load(&all, &pre, false).unwrap_err().to_string();
    assert!(
        err.contains("b.png") && err.contains("8x6") && err.contains("7x6"),
        "{err}"
    );
    let set = SegSet::load(&all, &pre, true).unwrap();
    assert_eq!(set.ids, ["a"]);
    assert_eq!(set.skipped.len(), 2);
    assert!(
        set.skipped[1].1.contains("c.jpg") && set.skipped[1].1.contains("decode"),
        "{:?}",
        set.skipped
    );
}

#[test]
fn mat_reader_plain_and_compressed() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for f in ["splits_v5.mat", "splits_v5_zlib.mat"] {
        let vars = read_mat(&std::fs::read(fixtures.join(f)).unwrap()).unwrap();
        assert_eq!(vars["trn1"], [1.0, 2.0, 3.0, 5.0], "{f}");
        assert_eq!(vars["trn3"], [1.0, 9.0], "{f}");
        assert_eq!(vars["val1"], [4.0, 8.0], "{f}");
        assert_eq!(vars["tst1"], [12.0], "{f}");
        assert!(!vars.contains_key("note"), "{f}: char arrays are skipped");
    }
    assert!(read_mat(b"short").unwrap_err().contains("too short"));
    let mut hdf5 = vec![0u8; 200];
    hdf5[..8].copy_from_slice(b"\x89HDF\r\n\x1a\n");
    assert!(read_mat(&hdf5).unwrap_err().contains("v7.3"));
}

#[test]
fn oxford17_reference_split_from_datasplits_mat() {
    // An Oxford-17 folder with datasplits.mat and trimaps for some ids only.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("jpg")).unwrap();
    std::fs::create_dir_all(d.join("trimaps")).unwrap();
    for id in [1, 2, 4, 9] {
        std::fs::write(d.join(format!("trimaps/image_{id:04}.png")), b"").unwrap();
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::copy(
        fixtures.join("splits_v5_zlib.mat"),
        d.join("datasplits.mat"),
    )
    .unwrap();
    let splits = SegSource::discover(d).unwrap().splits().unwrap();
    let ids = |v: &[pixclass_data::segment::SegSample]| {
        v.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
    };
    // trn1 [1,2,3,5] + trn2 [2,6,7] + trn3 [1,9], keeping those with a trimap (duplicates kept).
    assert_eq!(
        ids(&splits.train),
        [
            "image_0001",
            "image_0002",
            "image_0002",
            "image_0001",
            "image_0009"
        ]
    );
    assert_eq!(ids(&splits.val), ["image_0004"]);
    assert!(splits.description.contains("datasplits.mat"));
}

#[test]
fn published_photo_checksums_verify_the_real_set() {
    // The list shipped for `data fetch flowers17` matches the real photos.
    let Some(root) = real_data_dir("published_photo_checksums_verify_the_real_set") else {
        return;
    };
    let n = pixclass_data::fetch::verify_flowers17_photos(&root.join("flowers17")).unwrap();
    assert_eq!(n, 1361); // 1360 photos + files.txt
                         // An empty folder: the first missing file is named.
    let tmp = tempfile::tempdir().unwrap();
    let err = pixclass_data::fetch::verify_flowers17_photos(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("jpg/"), "{err}");
}
