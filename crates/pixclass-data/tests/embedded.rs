//! Tests on the embedded sample and palettes: always run.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use pixclass_data::cifar::{CifarSource, Split, HORSE};
use pixclass_data::colourize::{grey_of, shuffle_order};
use pixclass_data::{ColourSplit, Palette};

/// Reads a plain little-endian f64 `.npy` (no pickle), for comparing with the
/// original palette files.
fn read_npy_f64(path: &std::path::Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'<f8'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    bytes[10 + header_len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn embedded_palettes_equal_the_original_files() {
    for k in [16usize, 24, 32] {
        let p = Palette::reference(k).unwrap();
        assert_eq!(p.len(), k);
        let Some(root) = pixclass_data::paths::real_data_dir("palette comparison with originals")
        else {
            continue;
        };
        let orig = read_npy_f64(&root.join(format!("colours/kmeans{k}_cat7_f64.npy")));
        let ours: Vec<f64> = p.centres().iter().flatten().copied().collect();
        assert_eq!(ours, orig, "palette {k} differs from the original");
    }
    let d: Vec<f64> = [16, 24, 32]
        .iter()
        .map(|&k| Palette::reference(k).unwrap().distortion.unwrap())
        .collect();
    assert!(
        (d[0] - 0.0838).abs() < 1e-4
            && (d[1] - 0.0728).abs() < 1e-4
            && (d[2] - 0.0656).abs() < 1e-4
    );
}

#[test]
fn embedded_sample_is_real_horses() {
    let train = CifarSource::Embedded.load(Split::Train).unwrap();
    let test = CifarSource::Embedded.load(Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (500, 100));
    assert_eq!(train.filter_class(HORSE).unwrap().len(), 500);
    // The first training horse of the official data set.
    assert_eq!(&train.image(0)[0..5], &[28, 30, 33, 62, 63]);
}

#[test]
fn preprocessing_follows_the_reference() {
    // 1/256 scale and plain mean of R, G, B.
    assert_eq!(
        grey_of(28, 35, 39),
        ((28.0 + 35.0 + 39.0) / 3.0 / 256.0) as f32
    );
    assert_eq!(grey_of(255, 255, 255), (255.0 / 256.0) as f32);
    let train = CifarSource::Embedded.load(Split::Train).unwrap();
    let palette = Palette::reference(24).unwrap();
    let a = ColourSplit::new(&train, &palette, 0, Split::Train).unwrap();
    let b = ColourSplit::new(&train, &palette, 0, Split::Train).unwrap();
    let c = ColourSplit::new(&train, &palette, 1, Split::Train).unwrap();
    assert_eq!(a.grey(), b.grey(), "same seed, same order");
    assert_ne!(a.grey(), c.grey(), "another seed shuffles differently");
    let order = shuffle_order(500, 0, Split::Train);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..500).collect::<Vec<_>>(), "a permutation");
    assert_ne!(order, (0..500).collect::<Vec<_>>());
    assert_ne!(
        order,
        shuffle_order(500, 0, Split::Test),
        "one stream per split"
    );
    // Image 0 of the split is record order[0].
    assert_eq!(a.image_bytes(0), train.image(order[0]));

    // Batches, including a partial last one.
    assert_eq!(a.num_batches(100), 5);
    assert_eq!(a.num_batches(300), 2);
    let (g, cl) = a.batch(300, 300, &Device::Cpu).unwrap();
    assert_eq!(g.dims(), &[200, 1, 32, 32]);
    assert_eq!(cl.dims(), &[200, 32, 32]);
    assert!(a.batch(500, 10, &Device::Cpu).is_err());
}

#[test]
fn quantisation_ties_and_inverse() {
    let palette = Palette::new(
        vec![[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]],
        None,
    )
    .unwrap();
    // 0.25 is equidistant from centres 0 and 1 and equal to 2; 0.125 ties 0 and 2.
    assert_eq!(palette.nearest([0.25, 0.25, 0.25]), 2);
    assert_eq!(
        palette.nearest([0.125, 0.125, 0.125]),
        0,
        "lowest index on ties"
    );
    assert_eq!(
        palette.nearest([0.375, 0.375, 0.375]),
        1,
        "tie between 1 and 2 -> 1"
    );
    let classes = Tensor::new(&[[[0u32, 1], [2, 1]]], &Device::Cpu).unwrap();
    let rgb = palette.classes_to_rgb(&classes).unwrap();
    assert_eq!(rgb.dims(), &[1, 3, 2, 2]);
    let v: Vec<f32> = rgb.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        v,
        vec![0.0, 0.5, 0.25, 0.5, 0.0, 0.5, 0.25, 0.5, 0.0, 0.5, 0.25, 0.5]
    );
    let back = palette
        .quantize_tensor(&rgb.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap();
    assert_eq!(
        back.to_vec3::<u32>().unwrap(),
        classes.to_vec3::<u32>().unwrap()
    );
}

#[test]
fn kmeans_recovers_planted_colours() {
    let centres = [[0.1, 0.2, 0.3], [0.8, 0.1, 0.1], [0.5, 0.9, 0.5]];
    let mut px = Vec::new();
    for (i, c) in centres.iter().enumerate() {
        for j in 0..300 {
            let e = ((i * 300 + j) % 7) as f64 * 0.001 - 0.003;
            px.push([c[0] + e, c[1] - e, c[2] + e]);
        }
    }
    let (p, iters) = pixclass_data::colours::kmeans(
        &px,
        pixclass_data::colours::KMeansConfig {
            k: 3,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(iters >= 1);
    for c in centres {
        let best = p.centres()[p.nearest(c) as usize];
        let err: f64 = (0..3).map(|i| (best[i] - c[i]).abs()).sum();
        assert!(err < 1e-3, "centre {c:?} recovered as {best:?}");
    }
    assert!(p.distortion.unwrap() < 0.005);
}
