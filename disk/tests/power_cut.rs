//! Power cuts, simulated: a storage layer that keeps what was synced apart
//! from what was only written, and at a "power cut" keeps, for every sector
//! written since the last sync, any one of the versions it had (the synced
//! one or one of the later ones): writes land in any order, torn at sector
//! boundaries. Cuts fall at every kind of point: inside an allocation,
//! between the phases of a flush. After each, the image must check clean
//! (warnings such as orphan blocks allowed), hold every write acknowledged
//! before the last completed flush, and nothing but old or newly written
//! data in each sector.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use disk::{Disk, FormatHint, MemStorage, Storage, check_storage, open_storage};

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

#[derive(Default)]
struct State {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Versions of each sector written since the last sync, oldest first.
    pending: BTreeMap<u64, Vec<[u8; 512]>>,
    /// Storage operations left before the power fails.
    budget: usize,
    /// The file as the disk holds it after the cut.
    crashed: Option<Vec<u8>>,
    seed: u64,
}

#[derive(Clone)]
struct PowerCutFile(Arc<Mutex<State>>);

fn sector_of(buf: &[u8], at: usize) -> [u8; 512] {
    let mut s = [0u8; 512];
    let end = (at + 512).min(buf.len());
    if at < end {
        s[..end - at].copy_from_slice(&buf[at..end]);
    }
    s
}

impl State {
    fn cut(&mut self) {
        let mut rng = Rng(self.seed | 1);
        let mut out = self.durable.clone();
        for (&sector, versions) in &self.pending {
            // 0: the synced content stays; k: the k-th later version.
            let pick = rng.below(versions.len() as u64 + 1) as usize;
            if pick == 0 {
                continue;
            }
            let at = (sector * 512) as usize;
            if out.len() < at + 512 {
                out.resize(at + 512, 0);
            }
            out[at..at + 512].copy_from_slice(&versions[pick - 1]);
        }
        self.crashed = Some(out);
    }

    fn spend(&mut self) -> io::Result<()> {
        if self.crashed.is_some() {
            return Err(io::Error::other("power is off"));
        }
        if self.budget == 0 {
            self.cut();
            return Err(io::Error::other("power cut"));
        }
        self.budget -= 1;
        Ok(())
    }
}

impl Storage for PowerCutFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.0.lock().unwrap();
        let end = offset as usize + buf.len();
        if end > s.current.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&s.current[offset as usize..end]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.spend()?;
        let end = offset as usize + buf.len();
        if end > s.current.len() {
            s.current.resize(end, 0);
        }
        s.current[offset as usize..end].copy_from_slice(buf);
        let first = offset / 512;
        let last = (end as u64).div_ceil(512);
        for sector in first..last {
            let v = sector_of(&s.current, (sector * 512) as usize);
            s.pending.entry(sector).or_default().push(v);
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.spend()?;
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().unwrap().current.len() as u64)
    }
}

/// Which values each sector may hold after a cut.
struct Model {
    flushed: Vec<[u8; 512]>,
    /// Values written to each sector since the last completed flush.
    since: BTreeMap<usize, Vec<[u8; 512]>>,
}

fn template(differencing: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic_with_block_size(&base, 1 << 20, 16 << 10).unwrap();
    if !differencing {
        return (std::fs::read(&base).unwrap(), None);
    }
    let mut d = disk::open(&base, true).unwrap();
    d.write_at(0, &common::pattern(11, 1 << 20)[..600 << 10])
        .unwrap();
    d.close().unwrap();
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    (
        std::fs::read(&child).unwrap(),
        Some(std::fs::read(&base).unwrap()),
    )
}

fn open_with(leaf: Box<dyn Storage>, parent: &Option<Vec<u8>>, writable: bool) -> Disk {
    let mut chain = vec![leaf];
    if let Some(p) = parent {
        chain.push(Box::new(MemStorage::new(p.clone())));
    }
    open_storage(chain, FormatHint::Vhd, writable).unwrap()
}

fn one_cut(seed: u64, leaf: &[u8], parent: &Option<Vec<u8>>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let state = Arc::new(Mutex::new(State {
        durable: leaf.to_vec(),
        current: leaf.to_vec(),
        budget: rng.below(120) as usize,
        seed: rng.next(),
        ..State::default()
    }));
    let file = PowerCutFile(state.clone());
    let mut d = open_with(Box::new(file), parent, true);
    let size = d.size() as usize;
    let sectors = size / 512;
    let mut initial = vec![0u8; size];
    d.read_at(0, &mut initial).unwrap();
    let mut model = Model {
        flushed: (0..sectors).map(|s| sector_of(&initial, s * 512)).collect(),
        since: BTreeMap::new(),
    };
    let mut current = model.flushed.clone();
    let mut n = 0u32;
    loop {
        n += 1;
        if rng.below(5) == 0 {
            if d.flush().is_err() {
                break;
            }
            for &s in model.since.keys() {
                model.flushed[s] = current[s];
            }
            model.since.clear();
            continue;
        }
        let first = rng.below(sectors as u64) as usize;
        let count = (1 + rng.below(80) as usize).min(sectors - first);
        let mut buf = vec![0u8; count * 512];
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            chunk.fill(0);
            chunk[..4].copy_from_slice(&n.to_le_bytes());
            chunk[4..8].copy_from_slice(&((first + i) as u32).to_le_bytes());
            chunk[8] = 0xD1;
        }
        // Recorded as possible before the write: a cut mid-write may land
        // part of it.
        for i in 0..count {
            let v = sector_of(&buf, i * 512);
            model.since.entry(first + i).or_default().push(v);
            current[first + i] = v;
        }
        if d.write_at((first * 512) as u64, &buf).is_err() {
            break;
        }
    }
    std::mem::forget(d); // no flush at drop: the power is off
    let crashed = state
        .lock()
        .unwrap()
        .crashed
        .clone()
        .expect("the power was cut");

    let report = check_storage(&MemStorage::new(crashed.clone()), FormatHint::Vhd);
    assert!(report.is_clean(), "seed {seed}: {report:?}");
    let store = MemStorage::new(crashed);
    let mut after = open_with(Box::new(store.clone()), parent, true);
    let mut back = vec![0u8; size];
    after.read_at(0, &mut back).unwrap();
    for s in 0..sectors {
        let got = sector_of(&back, s * 512);
        let ok = got == model.flushed[s] || model.since.get(&s).is_some_and(|v| v.contains(&got));
        assert!(
            ok,
            "seed {seed}: sector {s} holds neither its flushed data nor a later write"
        );
    }
    // The survivor takes new writes and flushes cleanly.
    after.write_at(0, &[0xEE; 4096]).unwrap();
    after.write_at((size - 4096) as u64, &[0xEF; 4096]).unwrap();
    after.close().unwrap();
    let report = check_storage(&store, FormatHint::Vhd);
    assert!(
        report.is_clean(),
        "seed {seed} after more writes: {report:?}"
    );
}

#[test]
fn power_cuts_in_a_dynamic_image_lose_nothing_that_was_flushed() {
    let (leaf, parent) = template(false);
    for seed in 1..=400 {
        one_cut(seed, &leaf, &parent);
    }
}

#[test]
fn power_cuts_in_a_differencing_image_lose_nothing_that_was_flushed() {
    let (leaf, parent) = template(true);
    for seed in 1..=400 {
        one_cut(seed, &leaf, &parent);
    }
}
