//! Every kind of bad input is a typed error whose message names the problem.
#![allow(clippy::unwrap_used)]

use pixclass_data::cifar::{CifarLayout, CifarSet, RECORD_BYTES};
use pixclass_data::{DataError, Palette};

fn record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![fill; RECORD_BYTES];
    r[0] = label;
    r
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.bin");
    let err = CifarSet::read_file(&p).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.bin"), "{err}");
}

#[test]
fn size_not_a_multiple_of_the_record_names_file_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.bin");
    let mut bytes = record(7, 1);
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&p, &bytes).unwrap();
    let err = CifarSet::read_file(&p).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DataError::BadRecordSize {
                len: 3076,
                whole: 1,
                rest: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("short.bin") && msg.contains("3076 bytes") && msg.contains("3073"),
        "{msg}"
    );
}

#[test]
fn label_above_nine_names_record_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("badlabel.bin");
    let mut bytes = record(3, 0);
    bytes.extend(record(12, 0));
    std::fs::write(&p, &bytes).unwrap();
    let err = CifarSet::read_file(&p).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                record: 1,
                label: 12,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("badlabel.bin") && msg.contains("record 1") && msg.contains("12"),
        "{msg}"
    );
}

#[test]
fn empty_file_and_empty_selection() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.bin");
    std::fs::write(&p, []).unwrap();
    let err = CifarSet::read_file(&p).unwrap_err();
    assert!(
        err.to_string().contains("empty.bin") && err.to_string().contains("empty"),
        "{err}"
    );

    let p = dir.path().join("cats.bin");
    std::fs::write(&p, [record(3, 5), record(3, 6)].concat()).unwrap();
    let set = CifarSet::read_file(&p).unwrap();
    assert_eq!(set.class_counts()[3], 2);
    let err = set.filter_class(7).unwrap_err();
    assert!(matches!(err, DataError::EmptySelection { .. }), "{err:?}");
    assert!(err.to_string().contains("class 7 (horse)"), "{err}");
    let err = set.filter_class(10).unwrap_err();
    assert!(err.to_string().contains("class 10"), "{err}");
    assert!(set.take(0).unwrap_err().to_string().contains("limit of 0"));
}

#[test]
fn known_file_with_wrong_content_reports_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test_batch.bin");
    std::fs::write(&p, record(7, 9)).unwrap();
    let err = CifarSet::read_file(&p).unwrap_err();
    match &err {
        DataError::ChecksumMismatch {
            expected,
            found,
            algorithm,
            ..
        } => {
            assert_eq!(*algorithm, "sha256");
            assert_eq!(
                expected,
                "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"
            );
            assert_eq!(found.len(), 64);
            assert_ne!(found, expected);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("8e2eb146"),
        "{msg}"
    );
}

#[test]
fn unknown_file_names_are_read_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("my_records.bin");
    std::fs::write(&p, [record(7, 9), record(1, 2)].concat()).unwrap();
    let set = CifarSet::read_file(&p).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.labels(), &[7, 1]);
    assert!(set.image(0).iter().all(|&b| b == 9));
}

#[test]
fn directory_without_data_explains_where_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let err = CifarLayout::discover(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("pixclass data fetch cifar10") && msg.contains("cifar-10-batches-bin"),
        "{msg}"
    );
}

#[test]
fn partial_official_directory_lists_missing_batches() {
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&off).unwrap();
    for i in [1, 2, 4] {
        std::fs::write(off.join(format!("data_batch_{i}.bin")), record(7, 0)).unwrap();
    }
    let err = CifarLayout::discover(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("data_batch_3.bin, data_batch_5.bin"), "{msg}");
}

#[test]
fn bad_palettes_name_line_and_reason() {
    let err = Palette::parse("0.1 0.2 0.3\n0.5 0.5\n", "mine.txt").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("mine.txt") && msg.contains("line 2") && msg.contains("3 numbers"),
        "{msg}"
    );
    let err = Palette::parse("0.1 0.2 x\n", "p").unwrap_err();
    assert!(err.to_string().contains("\"x\" is not a number"), "{err}");
    let err = Palette::parse("0.1 0.2 1.5\n", "p").unwrap_err();
    assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    let err = Palette::parse("# nothing\n", "p").unwrap_err();
    assert!(err.to_string().contains("no colours"), "{err}");
    assert!(Palette::reference(20)
        .unwrap_err()
        .to_string()
        .contains("16, 24 and 32"));
}

#[test]
fn explicit_file_list_concatenates_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    std::fs::write(&a, record(1, 1)).unwrap();
    std::fs::write(&b, [record(2, 2), record(3, 3)].concat()).unwrap();
    let set = CifarSet::read_files(&[a, b]).unwrap();
    assert_eq!(set.labels(), &[1, 2, 3]);
}
