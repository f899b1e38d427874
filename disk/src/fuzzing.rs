//! The parser fuzz target's body, shared by `fuzz/fuzz_targets/open_image.rs`
//! and `tests/fuzz_corpus.rs`, which runs the corpus in CI without
//! cargo-fuzz.

use crate::check::check_storage;
use crate::image::{FormatHint, open_storage};
use crate::storage::{MemStorage, Storage};

/// Opens `data` as an image every way there is; when it opens, reads it,
/// writes to a copy, flushes and reopens. Panics only when an invariant
/// breaks (an image we wrote and flushed must reopen).
pub fn open_image(data: &[u8]) {
    for hint in [FormatHint::Probe, FormatHint::Vhd] {
        let report = check_storage(&MemStorage::new(data.to_vec()), hint);
        let opened = open_storage(
            vec![Box::new(MemStorage::new(data.to_vec())) as Box<dyn Storage>],
            hint,
            false,
        );
        // A file check calls clean opens, unless its parent is missing
        // (check looks at one file).
        if report.is_clean() && !matches!(opened, Err(crate::DiskError::MissingParent)) {
            assert!(
                opened.is_ok(),
                "check passed but open failed: {:?}",
                opened.err()
            );
        }
        let storage = MemStorage::new(data.to_vec());
        let Ok(mut disk) = open_storage(
            vec![Box::new(storage.clone()) as Box<dyn Storage>],
            hint,
            true,
        ) else {
            continue;
        };
        let size = disk.size();
        let mut buf = vec![0u8; 4096];
        for offset in [0, size / 2, size.saturating_sub(4096)] {
            let offset = offset - offset % 512;
            let n = (size - offset).min(4096) as usize;
            let _ = disk.read_at(offset, &mut buf[..n]);
        }
        let pattern = [0x5Au8; 1024];
        let offset = (size / 3) - (size / 3) % 512;
        let n = (size - offset).min(1024) as usize;
        if disk.write_at(offset, &pattern[..n]).is_ok() && disk.flush().is_ok() {
            drop(disk);
            let mut again = open_storage(vec![Box::new(storage) as Box<dyn Storage>], hint, false)
                .expect("an image we wrote and flushed reopens");
            let mut back = vec![0u8; n];
            again.read_at(offset, &mut back).expect("reads back");
            assert_eq!(back, pattern[..n], "a flushed write reads back");
        }
    }
}
