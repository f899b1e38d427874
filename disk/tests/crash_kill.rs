//! A writer process is killed with SIGKILL at random points, over and over,
//! while it writes and flushes a dynamic (and a differencing) VHD. It logs
//! each write before making it and each completed flush (fsynced) to a side
//! file. After every kill the image must check clean and hold every write
//! the log shows flushed; sectors written after the last flush may hold
//! the old or the new data, nothing else.
//!
//! The writer is this test binary run again with `BULKHEAD_DISK_CRASH_WRITER`
//! set (the `crash_writer_process` test does nothing otherwise). SIGKILL
//! loses no page-cache data; `power_cut.rs` simulates the harder case.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "BULKHEAD_DISK_CRASH_WRITER";
const ITERATIONS: u32 = 150;
const SIZE: u64 = 8 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A written sector: its writer's tag, its index, a marker.
fn sector(tag: u64, index: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(&tag.to_le_bytes());
    s[8..16].copy_from_slice(&index.to_le_bytes());
    s[16] = 0xD1;
    s
}

/// The tag a sector holds (0: never written), or None for garbage.
fn decode(s: &[u8], index: u64) -> Option<u64> {
    if s.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let tag = u64::from_le_bytes(s[..8].try_into().unwrap());
    (s == sector(tag, index)).then_some(tag)
}

#[test]
fn crash_writer_process() {
    let Ok(spec) = std::env::var(ENV) else {
        return; // only in the re-executed writer
    };
    let mut parts = spec.split('\n');
    let image = parts.next().unwrap();
    let log = parts.next().unwrap();
    let iter: u64 = parts.next().unwrap().parse().unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    let mut d = disk::open(Path::new(image), true).unwrap();
    let sectors = d.size() / 512;
    let mut rng = Rng(iter.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for seq in 1u64.. {
        if seq % 5 == 0 {
            d.flush().unwrap();
            log.write_all(format!("f {seq}\n").as_bytes()).unwrap();
            log.sync_data().unwrap();
            continue;
        }
        let first = rng.below(sectors);
        let count = (1 + rng.below(96)).min(sectors - first);
        let tag = (iter << 32) | seq;
        let buf: Vec<u8> = (first..first + count)
            .flat_map(|i| sector(tag, i))
            .collect();
        // Logged before it is made: a kill may land any part of it.
        log.write_all(format!("w {seq} {first} {count}\n").as_bytes())
            .unwrap();
        d.write_at(first * 512, &buf).unwrap();
    }
}

fn run(image: &Path, initial: Vec<u64>) {
    let dir = image.parent().unwrap();
    let log = dir.join("writer.log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x5EED);
    let mut model = initial; // tag per sector, as the image now holds
    let started = Instant::now();
    let (mut total_writes, mut total_flushes) = (0usize, 0usize);
    for iter in 1..=ITERATIONS as u64 {
        std::fs::write(&log, b"").unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                ENV,
                format!("{}\n{}\n{iter}", image.display(), log.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // What the log says: writes, in order, and the last completed flush.
        let text = std::fs::read_to_string(&log).unwrap();
        let mut writes = Vec::new();
        let mut flushed_upto = 0u64;
        for line in text.lines() {
            let f: Vec<u64> = line[2..].split(' ').map(|x| x.parse().unwrap()).collect();
            match &line[..1] {
                "w" => writes.push((f[0], f[1], f[2])),
                _ => {
                    flushed_upto = f[0];
                    total_flushes += 1;
                }
            }
        }
        total_writes += writes.len();
        let mut flushed = model.clone();
        let mut maybe: Vec<Vec<u64>> = vec![Vec::new(); model.len()];
        for &(seq, first, count) in &writes {
            for s in first..first + count {
                let tag = (iter << 32) | seq;
                if seq < flushed_upto {
                    flushed[s as usize] = tag;
                } else {
                    maybe[s as usize].push(tag);
                }
            }
        }

        let report = disk::check(image).unwrap();
        assert!(report.is_clean(), "iteration {iter}: {report:?}");
        let mut d = disk::open(image, false).unwrap();
        let mut buf = vec![0u8; d.size() as usize];
        d.read_at(0, &mut buf).unwrap();
        for (s, chunk) in buf.chunks(512).enumerate() {
            let got = decode(chunk, s as u64);
            let ok = got == Some(flushed[s]) || got.is_some_and(|t| maybe[s].contains(&t));
            assert!(
                ok,
                "iteration {iter}: sector {s} holds {got:?}, flushed {:#x}, later {:?}",
                flushed[s], maybe[s]
            );
            model[s] = got.unwrap();
        }
    }
    eprintln!(
        "{ITERATIONS} kills of a {} writer ({total_writes} writes, {total_flushes} flushes) in {:.1} s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(total_flushes > ITERATIONS as usize, "the writer hardly ran");
}

#[test]
fn sigkilled_writers_leave_dynamic_images_with_every_flushed_write() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("d.vhd");
    let size = disk::create_dynamic_with_block_size(&image, SIZE, 32 << 10).unwrap();
    run(&image, vec![0; (size / 512) as usize]);
}

#[test]
fn sigkilled_writers_leave_differencing_images_with_every_flushed_write() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let size = disk::create_dynamic_with_block_size(&base, SIZE, 32 << 10).unwrap();
    let mut d = disk::open(&base, true).unwrap();
    let tag = 0xBA5E;
    let half: Vec<u8> = (0..SIZE / 1024).flat_map(|i| sector(tag, i)).collect();
    d.write_at(0, &half).unwrap();
    d.close().unwrap();
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    let initial = (0..size / 512)
        .map(|i| if i < SIZE / 1024 { tag } else { 0 })
        .collect();
    run(&child, initial);
}
