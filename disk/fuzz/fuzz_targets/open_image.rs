//! Arbitrary bytes as a disk image: probed and as a VHD, opened, read,
//! written, flushed, reopened and checked.
//!
//! Run: `cd disk/fuzz && cargo +nightly fuzz run open_image`.
//! The same function runs over `corpus/open_image/` in CI
//! (`disk/tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    disk::fuzzing::open_image(data);
});
