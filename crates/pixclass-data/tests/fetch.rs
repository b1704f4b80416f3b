//! Downloads against a real HTTP server on 127.0.0.1: checksum ok, checksum
//! wrong, interrupted and resumed, and offline.
#![allow(clippy::unwrap_used)]

#[path = "common/serve.rs"]
mod serve;

use std::sync::atomic::Ordering;

use pixclass_data::checksum::{sha256_bytes, Checksum};
use pixclass_data::fetch::{download, DownloadSpec, Fetched};
use pixclass_data::DataError;
use serve::serve;

fn body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn checksum_ok_then_no_op() {
    let b = body();
    let sum = leak(sha256_bytes(&b));
    let (url, count) = serve(b.clone(), 0);
    let dir = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        url: &url,
        dest: dir.path().join("f.bin"),
        checksum: Some(Checksum::Sha256(sum.into())),
        progress: false,
    };
    let got = download(&spec).unwrap();
    assert_eq!(
        got,
        Fetched::Downloaded {
            bytes: b.len() as u64,
            resumed_from: 0
        }
    );
    assert_eq!(std::fs::read(&spec.dest).unwrap(), b);
    assert_eq!(download(&spec).unwrap(), Fetched::AlreadyPresent);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "second call must not touch the network"
    );
}

#[test]
fn checksum_wrong_leaves_nothing_behind() {
    let (url, _) = serve(body(), 0);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    let spec = DownloadSpec {
        url: &url,
        dest: dir.path().join("f.bin"),
        checksum: Some(Checksum::Sha256(wrong.into())),
        progress: false,
    };
    let err = download(&spec).unwrap_err();
    match &err {
        DataError::ChecksumMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(found, &sha256_bytes(&body()));
        }
        other => panic!("expected checksum mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("f.bin"));
    assert!(!spec.dest.exists());
    assert!(!dir.path().join("f.bin.part").exists());
}

#[test]
fn interrupted_download_resumes() {
    let b = body();
    let sum = leak(sha256_bytes(&b));
    let (url, count) = serve(b.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        url: &url,
        dest: dir.path().join("f.bin"),
        checksum: Some(Checksum::Sha256(sum.into())),
        progress: false,
    };
    let err = download(&spec).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err:?}");
    let part = dir.path().join("f.bin.part");
    let have = std::fs::metadata(&part).unwrap().len();
    assert_eq!(have, b.len() as u64 / 2, "the partial file is kept");
    assert!(!spec.dest.exists(), "no partial file under the final name");
    let got = download(&spec).unwrap();
    assert_eq!(
        got,
        Fetched::Downloaded {
            bytes: b.len() as u64 - have,
            resumed_from: have
        }
    );
    assert_eq!(std::fs::read(&spec.dest).unwrap(), b);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn offline_fails_fast_and_says_where_to_put_the_file() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        url: &url,
        dest: dir.path().join("cifar-10-binary.tar.gz"),
        checksum: None,
        progress: false,
    };
    let t = std::time::Instant::now();
    let err = download(&spec).unwrap_err();
    assert!(t.elapsed().as_secs() < 10);
    let msg = err.to_string();
    assert!(
        msg.contains("download") && msg.contains(&spec.dest.display().to_string()),
        "{msg}"
    );
}

#[test]
fn cifar_fetch_unpacks_a_tarball_into_the_official_layout() {
    // A tarball with the official layout, served locally and unpacked.
    let rec = |label: u8| {
        let mut r = vec![label; 3073];
        r[0] = label;
        r
    };
    let mut tar_bytes = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut tar_bytes, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for name in [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch_x.bin",
        ] {
            let data = rec(7);
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    format!("cifar-10-batches-bin/{name}"),
                    &data[..],
                )
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("x.tar.gz");
    std::fs::write(&tgz, &tar_bytes).unwrap();
    pixclass_data::fetch::unpack_tar_gz(&tgz, &dir.path().join("cifar10")).unwrap();
    let out = pixclass_data::cifar::official_dir(dir.path());
    assert!(out.join("data_batch_5.bin").is_file());
    let set = pixclass_data::CifarSet::read_file(&out.join("data_batch_3.bin")).unwrap();
    assert_eq!(set.labels(), &[7]);
}

#[test]
fn a_file_failing_its_checksum_stays_until_a_verified_replacement() {
    let good = body();
    let sum = sha256_bytes(&good);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    std::fs::write(&dest, b"an older, damaged copy").unwrap();
    // The server sends something else again: the download fails its
    // checksum and the file that was there is still there.
    let (url, _) = serve(b"not it either".to_vec(), 0);
    let spec = DownloadSpec {
        url: &url,
        dest: dest.clone(),
        checksum: Some(Checksum::Sha256(sum.clone().into())),
        progress: false,
    };
    assert!(matches!(
        download(&spec).unwrap_err(),
        DataError::ChecksumMismatch { .. }
    ));
    assert_eq!(std::fs::read(&dest).unwrap(), b"an older, damaged copy");
    // A good download replaces it in one rename.
    let (url, _) = serve(good.clone(), 0);
    let spec = DownloadSpec { url: &url, ..spec };
    download(&spec).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
}
