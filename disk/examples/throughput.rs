//! Prints throughput figures: sequential writes and reads of a dynamic VHD
//! through `Disk`, and the time to convert a raw image to a dynamic VHD.
//! `cargo run --release -p disk --example throughput -- [DIR] [MIB]`
//! (default: a temporary directory, 1024 MiB). Reads are from the page
//! cache: the figure is the format's overhead, not the device's speed.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir_in(args.get(1).map_or("/tmp", String::as_str)).unwrap();
    let mib: u64 = args.get(2).map_or(1024, |s| s.parse().unwrap());
    let dir = tmp.path();
    let size = mib << 20;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();

    let vhd = dir.join("seq.vhd");
    disk::create_dynamic(&vhd, size).unwrap();
    let mut d = disk::open(&vhd, true).unwrap();
    let t = Instant::now();
    for i in 0..mib {
        d.write_at(i << 20, &chunk).unwrap();
    }
    d.flush().unwrap();
    let w = t.elapsed().as_secs_f64();
    drop(d);
    let mut d = disk::open(&vhd, false).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        d.read_at(i << 20, &mut buf).unwrap();
    }
    let r = t.elapsed().as_secs_f64();
    println!(
        "dynamic VHD, 1 MiB sequential writes + flush: {:.0} MB/s ({mib} MiB in {w:.2} s)",
        size as f64 / w / 1e6
    );
    println!(
        "dynamic VHD, 1 MiB sequential reads (cached): {:.0} MB/s",
        size as f64 / r / 1e6
    );

    let raw = dir.join("src.img");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
    }
    let out = dir.join("conv.vhd");
    let t = Instant::now();
    disk::convert(&raw, &out, disk::Target::Dynamic, &mut disk::no_progress).unwrap();
    println!(
        "convert {mib} MiB raw -> dynamic VHD: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let out2 = dir.join("conv.img");
    let t = Instant::now();
    disk::convert(&out, &out2, disk::Target::Raw, &mut disk::no_progress).unwrap();
    println!(
        "convert {mib} MiB dynamic VHD -> raw: {:.2} s",
        t.elapsed().as_secs_f64()
    );
}
