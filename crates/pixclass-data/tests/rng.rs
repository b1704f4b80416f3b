//! The split shuffles of the RNG schemes, against NumPy.
#![allow(clippy::unwrap_used)]

/// The `torch` scheme's shuffles are NumPy's: `npr.seed(seed)`, then
/// `npr.shuffle` of the training split and of the test split (golden values
/// from `fixtures/make_numpy_shuffle.py`).
#[test]
fn torch_scheme_shuffles_like_numpy() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpy_shuffle.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let (train, test) = pixclass_data::split_orders(
            n("n_train"),
            n("n_test"),
            n("seed") as u64,
            pixclass_data::RngScheme::Torch,
        )
        .unwrap();
        for (order, head, sum) in [
            (&train, "train_head", "train_checksum"),
            (&test, "test_head", "test_checksum"),
        ] {
            let want: Vec<usize> = case[head]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(&order[..want.len()], want.as_slice(), "{case}");
            let checksum: usize = order.iter().enumerate().map(|(i, p)| i * p).sum();
            assert_eq!(checksum as u64, case[sum].as_u64().unwrap(), "{case}");
        }
    }
    // NumPy refuses seeds of more than 32 bits; so does the scheme.
    assert!(pixclass_data::split_orders(3, 2, 1 << 33, pixclass_data::RngScheme::Torch).is_err());
}
