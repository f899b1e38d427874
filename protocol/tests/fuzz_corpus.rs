//! Runs the `decode_frames` fuzz target's corpus through the same function
//! the fuzzer calls, so CI exercises it without cargo-fuzz or nightly.
//!
//! The seed files are made by `write_seed_corpus` (ignored; run it with
//! `cargo test -p protocol --test fuzz_corpus -- --ignored` after a message
//! change). Files the fuzzer finds are added next to them by hand.

use std::path::PathBuf;

use protocol::frame::{MAX_FRAME, decode};
use protocol::fuzzing::{decode_frames, sample_config, sample_from_worker, sample_to_worker};
use protocol::{FromWorker, Hello, ToWorker, WorkerConfig, encode};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frames")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_goes_through_the_fuzz_target() {
    let files = corpus();
    assert!(files.len() >= 15, "only {} corpus files", files.len());
    for (name, data) in &files {
        let outcome = std::panic::catch_unwind(|| decode_frames(data));
        assert!(
            outcome.is_ok(),
            "fuzz target panicked on corpus file {name}"
        );
    }
}

#[test]
fn valid_seed_files_still_decode() {
    // A message change that invalidates a seed shows up here: regenerate.
    for (name, data) in corpus().iter().filter(|(n, _)| n.starts_with("valid-")) {
        let ok = decode::<Hello>(data).is_ok()
            || decode::<ToWorker>(data).is_ok()
            || decode::<FromWorker>(data).is_ok()
            || decode::<WorkerConfig>(data).is_ok();
        assert!(ok, "seed {name} no longer decodes as any message");
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    s.push(("valid-hello".into(), encode(&Hello::current()).unwrap()));
    s.push(("valid-config".into(), encode(&sample_config()).unwrap()));
    for (i, m) in sample_to_worker().iter().enumerate() {
        s.push((format!("valid-to-worker-{i:02}"), encode(m).unwrap()));
    }
    for (i, m) in sample_from_worker().iter().enumerate() {
        s.push((format!("valid-from-worker-{i:02}"), encode(m).unwrap()));
    }
    let mut stream = encode(&Hello::current()).unwrap();
    stream.extend(encode(&sample_config()).unwrap());
    for m in sample_to_worker() {
        stream.extend(encode(&m).unwrap());
    }
    s.push(("stream-hello-config-commands".into(), stream.clone()));
    s.push(("truncated-prefix".into(), vec![0x05, 0x00]));
    s.push(("truncated-body".into(), stream[..stream.len() - 3].to_vec()));
    let mut oversized = u32::MAX.to_le_bytes().to_vec();
    oversized.extend_from_slice(b"garbage after an absurd length");
    s.push(("oversized-length".into(), oversized));
    s.push((
        "length-cap-plus-one".into(),
        ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),
    ));
    s.push(("empty-frame".into(), vec![0, 0, 0, 0]));
    let mut bad_magic = encode(&Hello {
        magic: *b"BULKHEAX",
        version: 1,
    })
    .unwrap();
    bad_magic.extend(encode(&ToWorker::Start).unwrap());
    s.push(("bad-magic-hello".into(), bad_magic));
    let mut trailing = encode(&ToWorker::Pause).unwrap();
    trailing[0] += 1;
    trailing.push(0xAA);
    s.push(("trailing-byte-in-body".into(), trailing));
    s.push(("bad-variant".into(), vec![1, 0, 0, 0, 0x7F]));
    s.push((
        "overlong-varint".into(),
        vec![6, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    ));
    let garbage: Vec<u8> = (0u32..256)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
        .collect();
    s.push(("garbage".into(), garbage));
    s
}

/// Regenerates the seed files (not a check: run by hand).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds() {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

#[test]
fn checked_in_seeds_match_the_generator() {
    for (name, data) in seeds() {
        let on_disk = std::fs::read(corpus_dir().join(&name))
            .unwrap_or_else(|e| panic!("seed {name} missing ({e}): run write_seed_corpus"));
        assert_eq!(on_disk, data, "seed {name} is stale: run write_seed_corpus");
    }
}
