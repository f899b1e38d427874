//! `bulkhead disk ...`: the disk image commands, as a clap subcommand the
//! `bulkhead` binary mounts, and `run`, which returns the exit status.
//!
//! Exit status (the `bulkhead` convention): 0 ok (`check`: no errors,
//! warnings allowed), 1 error (`check`: the image has errors), 2 usage,
//! 3 not found, 4 permission denied, 5 the destination exists (without
//! `--force`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::check::Severity;
use crate::error::DiskError;
use crate::image::{LayerInfo, open};
use crate::ops::{Target, compact, convert, merge};

#[derive(clap::Subcommand, Debug)]
pub enum DiskCommand {
    /// Create an image: a new disk (--size), or a differencing disk over a
    /// parent (--parent).
    Create(CreateArgs),
    /// Show an image's format, size and parent chain.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify an image and its parents; exit 1 when it has errors.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a dynamic or differencing VHD without unused space (and,
    /// dynamic, without all-zero blocks).
    Compact { file: PathBuf },
    /// Merge a differencing disk into its parent, then delete it.
    Merge {
        child: PathBuf,
        /// Keep the child after merging.
        #[arg(long)]
        keep: bool,
    },
    /// Copy an image (with its parents, flattened) into a new one.
    Convert {
        src: PathBuf,
        dst: PathBuf,
        #[arg(long = "type", value_enum, default_value_t = Target::Dynamic)]
        kind: Target,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    file: PathBuf,
    /// Size in bytes, or with a K, M, G or T suffix (binary units). VHD
    /// sizes are rounded up to what the CHS geometry states.
    #[arg(long, value_parser = parse_size, required_unless_present = "parent")]
    size: Option<u64>,
    #[arg(long = "type", value_enum, default_value_t = Target::Dynamic, conflicts_with = "parent")]
    kind: Target,
    /// Make a differencing VHD over this parent (any VHD).
    #[arg(long, conflicts_with = "size")]
    parent: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// Parses "4096" (bytes), "10K", "512M", "20G", "1T" (powers of 1024,
/// optionally followed by "B" or "iB"). Fractions are refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a whole number of bytes, K, M, G or T"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn exit_code(e: &DiskError) -> u8 {
    match e {
        DiskError::NotFound(_) => 3,
        DiskError::Exists(_) => 5,
        DiskError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => 4,
        DiskError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 3,
        _ => 1,
    }
}

fn fail(e: DiskError) -> ExitCode {
    eprintln!("bulkhead disk: {e}");
    ExitCode::from(exit_code(&e))
}

fn usage(msg: String) -> ExitCode {
    eprintln!("bulkhead disk: {msg}");
    ExitCode::from(2)
}

/// Percent progress on stderr when it is a terminal; nothing otherwise.
struct Meter {
    label: &'static str,
    on: bool,
    last: Option<u64>,
}

impl Meter {
    fn new(label: &'static str) -> Meter {
        Meter {
            label,
            on: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.on || total == 0 {
            return;
        }
        let pct = done.saturating_mul(100) / total;
        if self.last != Some(pct) {
            self.last = Some(pct);
            let mut e = std::io::stderr();
            let _ = write!(e, "\r{}: {pct:3}%", self.label);
            let _ = e.flush();
        }
    }

    fn done(&self) {
        if self.on && self.last.is_some() {
            eprintln!();
        }
    }
}

fn human(n: u64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in units {
        if n >= 1 << shift {
            let v = n as f64 / (1u64 << shift) as f64;
            return format!("{v:.2} {unit} ({n} bytes)");
        }
    }
    format!("{n} bytes")
}

fn replace(path: &Path, force: bool) -> Result<(), DiskError> {
    if force && std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)
            .map_err(DiskError::io(format!("removing {}", path.display())))?;
    }
    Ok(())
}

pub fn run(cmd: DiskCommand) -> ExitCode {
    match cmd {
        DiskCommand::Create(a) => create(a),
        DiskCommand::Info { file, json } => info(&file, json),
        DiskCommand::Check { file, json } => check(&file, json),
        DiskCommand::Compact { file } => {
            let mut m = Meter::new("compacting");
            let r = compact(&file, &mut |d, t| m.update(d, t));
            m.done();
            match r {
                Ok(r) => {
                    println!(
                        "compacted {}: {} -> {} bytes, {} -> {} blocks",
                        file.display(),
                        r.bytes_before,
                        r.bytes_after,
                        r.blocks_before,
                        r.blocks_after
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        DiskCommand::Merge { child, keep } => {
            let parent = match crate::chain::resolve_chain(&child) {
                Ok(c) if c.len() >= 2 => c[1].clone(),
                Ok(_) => return usage(format!("{} is not a differencing image", child.display())),
                Err(e) => return fail(e),
            };
            let mut m = Meter::new("merging");
            let r = merge(&child, keep, &mut |d, t| m.update(d, t));
            m.done();
            match r {
                Ok(()) => {
                    println!("merged {} into {}", child.display(), parent.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        DiskCommand::Convert {
            src,
            dst,
            kind,
            force,
        } => {
            if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&src), std::fs::canonicalize(&dst))
                && a == b
            {
                return usage("SRC and DST are the same file".into());
            }
            if !src.exists() {
                return fail(DiskError::NotFound(src));
            }
            if let Err(e) = replace(&dst, force) {
                return fail(e);
            }
            let mut m = Meter::new("converting");
            let r = convert(&src, &dst, kind, &mut |d, t| m.update(d, t));
            m.done();
            match r {
                Ok(size) => {
                    println!(
                        "converted {} to {} ({})",
                        src.display(),
                        dst.display(),
                        human(size)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn create(a: CreateArgs) -> ExitCode {
    if let Some(parent) = &a.parent {
        if !parent.exists() {
            return fail(DiskError::NotFound(parent.clone()));
        }
        if let Err(e) = replace(&a.file, a.force) {
            return fail(e);
        }
        return match crate::create::create_differencing(&a.file, parent) {
            Ok(size) => {
                println!(
                    "created {}: vhd differencing over {}, {}",
                    a.file.display(),
                    parent.display(),
                    human(size)
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    let Some(size) = a.size else {
        return usage("--size or --parent is needed".into());
    };
    if a.kind == Target::Raw && !size.is_multiple_of(512) {
        return usage(format!(
            "a raw image's size must be a multiple of 512, not {size}"
        ));
    }
    if size == 0 || size > crate::format::MAX_DISK_SIZE {
        return usage(format!("size {size}: from 1 byte to 2040 GiB"));
    }
    if let Err(e) = replace(&a.file, a.force) {
        return fail(e);
    }
    let r = match a.kind {
        Target::Raw => crate::create::create_raw(&a.file, size),
        Target::Fixed => crate::create::create_fixed(&a.file, size),
        Target::Dynamic => crate::create::create_dynamic(&a.file, size),
    };
    match r {
        Ok(made) => {
            let kind = match a.kind {
                Target::Raw => "raw",
                Target::Fixed => "vhd fixed",
                Target::Dynamic => "vhd dynamic",
            };
            let note = if made != size {
                format!(" (rounded up from {size} bytes to what the CHS geometry states)")
            } else {
                String::new()
            };
            println!(
                "created {}: {kind}, {}{note}",
                a.file.display(),
                human(made)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn info(file: &Path, as_json: bool) -> ExitCode {
    let chain = match crate::chain::resolve_chain(file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let disk = match open(file, false) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let layers = disk.layers();
    if as_json {
        let files: Vec<_> = chain.iter().map(|p| p.display().to_string()).collect();
        println!(
            "{}",
            json!({
                "file": file.display().to_string(),
                "format": disk.format(),
                "size": disk.size(),
                "chain": files,
                "layers": layers,
            })
        );
        return ExitCode::SUCCESS;
    }
    for (i, (path, l)) in chain.iter().zip(&layers).enumerate() {
        if i > 0 {
            println!();
            println!("parent {i}:");
        }
        print_layer(path, l);
    }
    ExitCode::SUCCESS
}

fn print_layer(path: &Path, l: &LayerInfo) {
    println!("file:        {}", path.display());
    println!("format:      {}", l.format);
    println!("size:        {}", human(l.size));
    println!("file size:   {}", human(l.file_len));
    if let Some(u) = l.uuid {
        println!("id:          {u}");
    }
    if let Some(g) = l.geometry {
        println!(
            "geometry:    {}/{}/{} (C/H/S)",
            g.cylinders, g.heads, g.sectors_per_track
        );
    }
    if let Some(c) = &l.creator {
        println!("creator:     {c}");
    }
    if let (Some(bs), Some(n), Some(a)) = (l.block_size, l.blocks, l.allocated_blocks) {
        println!(
            "blocks:      {a} of {n} allocated, {} each",
            human(u64::from(bs))
        );
    }
    if let Some(p) = l.parent_uuid {
        println!("parent id:   {p}");
    }
    if let Some(n) = &l.parent_name {
        println!("parent name: {n}");
    }
}

fn check(file: &Path, as_json: bool) -> ExitCode {
    let report = match crate::check::check(file) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        for p in &report.problems {
            let sev = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            println!("{sev}: {}: {}", p.file, p.message);
        }
        if report.unlisted > 0 {
            println!("... and {} more problems", report.unlisted);
        }
        println!(
            "{}: {} error(s), {} warning(s){}",
            file.display(),
            report.errors(),
            report.warnings(),
            if report.leaked_bytes > 0 {
                format!(", {} leaked", human(report.leaked_bytes))
            } else {
                String::new()
            }
        );
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("8GB"), Ok(8 << 30));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
