//! Reading and writing every image type through `Disk`.

mod common;

use common::{pattern, read_all};
use disk::{
    DiskError, ImageFormat, create_differencing, create_dynamic, create_dynamic_with_block_size,
    create_fixed, create_raw, open,
};

#[test]
fn every_type_reads_back_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let data = pattern(3, size);
    for (name, fmt) in [
        ("a.raw", ImageFormat::Raw),
        ("f.vhd", ImageFormat::VhdFixed),
        ("d.vhd", ImageFormat::VhdDynamic),
    ] {
        let path = dir.path().join(name);
        let made = match fmt {
            ImageFormat::Raw => create_raw(&path, size as u64),
            ImageFormat::VhdFixed => create_fixed(&path, size as u64),
            _ => create_dynamic(&path, size as u64),
        }
        .unwrap();
        let mut d = open(&path, true).unwrap();
        assert_eq!(d.format(), fmt);
        assert_eq!(d.size(), made);
        // Unaligned pieces of whole sectors, crossing block boundaries.
        let mut at = 0;
        for (i, n) in [512usize, 4096, 1 << 20, 3 << 20, 7 * 512]
            .iter()
            .cycle()
            .enumerate()
        {
            if at >= size {
                break;
            }
            let n = (*n).min(size - at);
            if i % 3 != 2 {
                d.write_at(at as u64, &data[at..at + n]).unwrap();
            } else {
                d.write_at(at as u64, &data[at..at + n]).unwrap();
                d.flush().unwrap();
            }
            at += n;
        }
        d.close().unwrap();
        let mut d = open(&path, false).unwrap();
        let back = read_all(&mut d);
        assert_eq!(&back[..size], &data[..], "{name}");
        assert!(back[size..].iter().all(|&b| b == 0));
    }
}

#[test]
fn unwritten_sectors_of_a_dynamic_image_read_as_zero_and_stay_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    create_dynamic_with_block_size(&path, 64 << 20, 64 << 10).unwrap();
    let mut d = open(&path, true).unwrap();
    d.write_at(70_000 * 512, &[1u8; 1024]).unwrap();
    d.close().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < 1 << 20, "file is {len} bytes");
    let mut d = open(&path, false).unwrap();
    let mut buf = vec![0xFFu8; 128 << 10];
    d.read_at((70_000 * 512) - 4096, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..5120].iter().all(|&b| b == 1));
    assert!(buf[5120..].iter().all(|&b| b == 0));
}

#[test]
fn misaligned_and_out_of_range_accesses_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    let size = create_dynamic(&path, 1 << 20).unwrap();
    let mut d = open(&path, true).unwrap();
    let mut buf = [0u8; 512];
    assert!(matches!(
        d.read_at(1, &mut buf),
        Err(DiskError::Unaligned { .. })
    ));
    assert!(matches!(
        d.read_at(0, &mut buf[..100]),
        Err(DiskError::Unaligned { .. })
    ));
    assert!(matches!(
        d.read_at(size, &mut buf),
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        d.write_at(size - 256, &buf),
        Err(DiskError::Unaligned { .. })
    ));
    assert!(matches!(
        d.write_at(u64::MAX - 511, &buf),
        Err(DiskError::OutOfRange { .. })
    ));
    let mut ro = open(&path, false).unwrap();
    assert!(matches!(ro.write_at(0, &buf), Err(DiskError::ReadOnly)));
    assert!(ro.read_only());
}

#[test]
fn creating_over_an_existing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    create_dynamic(&path, 1 << 20).unwrap();
    assert!(matches!(
        create_fixed(&path, 1 << 20),
        Err(DiskError::Exists(_))
    ));
    assert!(matches!(
        create_raw(&path, 1 << 20),
        Err(DiskError::Exists(_))
    ));
    assert!(matches!(
        create_differencing(&path, &path),
        Err(DiskError::Exists(_))
    ));
}

#[test]
fn bad_sizes_are_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.vhd");
    assert!(matches!(
        create_dynamic(&path, 0),
        Err(DiskError::BadSize(0))
    ));
    assert!(matches!(
        create_dynamic(&path, 2041 << 30),
        Err(DiskError::SizeTooLarge(_))
    ));
    assert!(matches!(
        create_dynamic_with_block_size(&path, 1 << 20, 3000),
        Err(DiskError::BadBlockSize(3000))
    ));
    assert!(matches!(
        create_raw(&path, 1000),
        Err(DiskError::BadSize(1000))
    ));
    assert!(!path.exists());
}

#[test]
fn disk_is_send() {
    fn send<T: Send>() {}
    send::<disk::Disk>();
}
