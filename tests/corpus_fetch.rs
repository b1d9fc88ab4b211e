//! `rnmt corpus fetch` against a static file server on 127.0.0.1.

mod common;

use std::io::Write;

use common::*;

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn fetch_from_mirror_verifies_checksums() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let url = serve_dir(corpora.clone());
    let dest = tempfile::tempdir().unwrap();
    let out = run(rnmt()
        .args(["corpus", "fetch", "wmt-news", "--mirror", &url, "--dir"])
        .arg(dest.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "newstest2021_deen.de",
        "newstest2021_deen.en",
        "newstest2021_ende.de",
        "newstest2021_ende.en",
    ] {
        let got = std::fs::read(dest.path().join("wmt-news").join(name)).unwrap();
        assert_eq!(
            got,
            std::fs::read(corpora.join("wmt-news").join(name)).unwrap(),
            "{name}"
        );
    }
    // A second run finds the verified files and downloads nothing.
    let out = run(rnmt()
        .args([
            "corpus",
            "fetch",
            "wmt-news",
            "--mirror",
            "http://127.0.0.1:9/none",
            "--dir",
        ])
        .arg(dest.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("present, checksum ok"));
}

fn manifest(url: &str, transform: &str, sha256: &str) -> String {
    format!(
        "[[corpus]]\nname = \"tiny\"\ndescription = \"test\"\nlicence = \"test\"\nsource = \"test\"\n\n\
         [[corpus.file]]\nname = \"val.de\"\nurl = \"{url}\"\ntransform = \"{transform}\"\nsha256 = \"{sha256}\"\nbytes = 1\n"
    )
}

#[test]
fn sha_mismatch_fails_and_leaves_no_file() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let url = serve_dir(corpora.clone());
    let dest = tempfile::tempdir().unwrap();
    let m = write(
        dest.path(),
        "manifest.toml",
        manifest(&format!("{url}/multi30k/val.de"), "none", &"0".repeat(64)).as_bytes(),
    );
    let out = run(rnmt()
        .args(["corpus", "fetch", "tiny", "--manifest"])
        .arg(&m)
        .arg("--dir")
        .arg(dest.path().join("c")));
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("sha256 mismatch for val.de") && msg.contains("expected 0000"),
        "{msg}"
    );
    assert!(
        files_in(&dest.path().join("c/tiny")).is_empty(),
        "left behind: {:?}",
        files_in(&dest.path().join("c/tiny"))
    );
}

#[test]
fn gunzip_source_is_rebuilt_and_verified() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let served = tempfile::tempdir().unwrap();
    let original = std::fs::read(corpora.join("multi30k/val.de")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&original).unwrap();
    write(served.path(), "val.de.gz", &gz.finish().unwrap());
    let url = serve_dir(served.path().to_path_buf());
    let sha = rnmt::corpus::fetch::sha256_file(&corpora.join("multi30k/val.de")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let m = write(
        dest.path(),
        "manifest.toml",
        manifest(&format!("{url}/val.de.gz"), "gunzip", &sha).as_bytes(),
    );
    let out = run(rnmt()
        .args(["corpus", "fetch", "tiny", "--manifest"])
        .arg(&m)
        .arg("--dir")
        .arg(dest.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dest.path().join("tiny/val.de")).unwrap(),
        original
    );

    // A URL the server does not have names the URL.
    let m = write(
        dest.path(),
        "manifest.toml",
        manifest(&format!("{url}/gone.gz"), "gunzip", &sha).as_bytes(),
    );
    let out = run(rnmt()
        .args(["corpus", "fetch", "tiny", "--manifest"])
        .arg(&m)
        .arg("--dir")
        .arg(dest.path().join("other")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("gone.gz"), "{}", stderr(&out));
}

#[test]
fn unknown_corpus_lists_the_known_ones() {
    let out = run(rnmt().args(["corpus", "fetch", "europarl"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("known: multi30k, tatoeba-deu-eng, wmt-news"),
        "{}",
        stderr(&out)
    );
}

/// The Tatoeba split rebuilt from the shared files reproduces them byte for byte.
#[test]
fn anki_split_reproduces_tatoeba_splits() {
    let Some(dir) = corpora_dir_for_tests() else {
        return;
    };
    let dir = dir.join("tatoeba-deu-eng");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    // The original interleaves the splits; any order of whole splits gives the same
    // per-split order, since the split keeps the original order within a split.
    let mut anki = String::new();
    for split in ["dev", "train", "test"] {
        for (en, de) in read(&format!("{split}.en"))
            .lines()
            .zip(read(&format!("{split}.de")).lines())
        {
            anki.push_str(&format!("{en}\t{de}\n"));
        }
    }
    let manifest = rnmt::corpus::fetch::Manifest::load(None).unwrap();
    for file in &manifest.get("tatoeba-deu-eng").unwrap().file {
        let out = rnmt::corpus::fetch::anki_split(
            &anki,
            file.split.as_deref().unwrap(),
            file.lang.as_deref().unwrap(),
        )
        .unwrap();
        assert_eq!(hex_sha256(&out), file.sha256, "{}", file.name);
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
