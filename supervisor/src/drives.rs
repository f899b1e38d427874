//! A VM's IDE drives as the operator defines them (`[[drive]]` in
//! `vms/NAME.toml`, `--disk`/`--cdrom` on the command line), the slots they
//! take, and their undo disks.
//!
//! The worker opens no paths: [`open`] resolves each image (a VHD's
//! differencing chain included), checks that the caller could open every
//! file of it the way the VM will, and opens the descriptors the worker
//! inherits from fd 9 on (see `protocol::fds`).
//!
//! Undo disks, as in Virtual Server: a drive with `undo` runs on a
//! differencing child of its image kept in a directory of the supervisor's
//! (`undo/NAME/` in the daemon's state directory). The image itself is
//! opened read-only. The child survives restarts of the worker; when the VM
//! stops for good it is committed into the image or discarded, as the
//! drive's `undo` says.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use protocol::{DriveAttachment, DriveMedia, IdeSlot, ImageFormat};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// What happens to a drive's undo disk when the VM stops for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UndoAction {
    /// Merge the session's writes into the image.
    Commit,
    /// Throw the session's writes away.
    Discard,
}

impl std::str::FromStr for UndoAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "commit" => Ok(UndoAction::Commit),
            "discard" => Ok(UndoAction::Discard),
            _ => Err(format!("undo={s:?}: expected commit or discard")),
        }
    }
}

/// One drive of a VM definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveDef {
    /// The image: raw, VHD (fixed, dynamic or differencing) or ISO.
    pub path: PathBuf,
    /// Where it sits; filled in by [`assign_slots`] when not given.
    #[serde(default)]
    pub slot: Option<IdeSlot>,
    #[serde(default = "default_media")]
    pub media: DriveMedia,
    #[serde(default)]
    pub read_only: bool,
    /// Run on an undo disk, committed or discarded at the end.
    #[serde(default)]
    pub undo: Option<UndoAction>,
}

fn default_media() -> DriveMedia {
    DriveMedia::Disk
}

impl DriveDef {
    /// Parses a command-line drive: `PATH[,slot=SLOT][,ro][,undo=commit|discard]`.
    pub fn parse(spec: &str, media: DriveMedia) -> Result<DriveDef, String> {
        let mut parts = spec.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
            format!("{spec:?}: expected PATH[,slot=SLOT][,ro][,undo=commit|discard]")
        })?;
        let mut def = DriveDef {
            path: PathBuf::from(path),
            slot: None,
            media,
            read_only: media == DriveMedia::Cdrom,
            undo: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                Some(("slot", v)) => def.slot = Some(v.parse()?),
                Some(("undo", v)) => def.undo = Some(v.parse()?),
                None if opt == "ro" || opt == "read-only" => def.read_only = true,
                _ => {
                    return Err(format!(
                        "{opt:?} in {spec:?}: options are slot=SLOT, ro and undo=commit|discard"
                    ));
                }
            }
        }
        Ok(def)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| {
            Err(ConfigError::Invalid(format!(
                "drive {}: {m}",
                self.path.display()
            )))
        };
        if !self.path.is_absolute() {
            return bad("the image path must be absolute".into());
        }
        if self.media == DriveMedia::Cdrom && !self.read_only {
            return bad("a CD-ROM is read-only".into());
        }
        if self.undo.is_some() && (self.read_only || self.media == DriveMedia::Cdrom) {
            return bad("an undo disk is for a writable hard disk".into());
        }
        Ok(())
    }
}

/// The slot order drives without one take: hard disks fill the primary
/// channel first, CD-ROMs the secondary (where firmware and installers look).
fn preferred(media: DriveMedia) -> [IdeSlot; 4] {
    use IdeSlot::*;
    match media {
        DriveMedia::Disk => [PrimaryMaster, PrimarySlave, SecondarySlave, SecondaryMaster],
        DriveMedia::Cdrom => [SecondaryMaster, SecondarySlave, PrimarySlave, PrimaryMaster],
    }
}

/// Checks the drives and gives each one without a slot the first free one
/// of its kind's order.
pub fn assign_slots(drives: &mut [DriveDef]) -> Result<(), ConfigError> {
    if drives.len() > IdeSlot::ALL.len() {
        return Err(ConfigError::Invalid(format!(
            "{} drives: the IDE controller takes at most 4",
            drives.len()
        )));
    }
    for (i, d) in drives.iter().enumerate() {
        d.validate()?;
        if let Some(slot) = d.slot
            && drives[..i].iter().any(|o| o.slot == Some(slot))
        {
            return Err(ConfigError::Invalid(format!(
                "two drives in the {slot} slot"
            )));
        }
    }
    for i in 0..drives.len() {
        if drives[i].slot.is_none() {
            let taken: Vec<IdeSlot> = drives.iter().filter_map(|d| d.slot).collect();
            let free = preferred(drives[i].media)
                .into_iter()
                .find(|s| !taken.contains(s))
                .expect("at most 4 drives, so a slot is free");
            drives[i].slot = Some(free);
        }
    }
    Ok(())
}

/// The drives' descriptors and their description for the worker.
pub struct Opened {
    pub attachments: Vec<DriveAttachment>,
    /// In fd order: the worker's fd 9 is `fds[0]`, and so on.
    pub fds: Vec<OwnedFd>,
}

/// Resolves and opens every drive's image chain, creating undo disks in
/// `undo_dir` where asked. (The daemon checked at `vm.create` that the
/// owner may open the images.)
pub fn open(drives: &[DriveDef], undo_dir: &Path) -> Result<Opened, String> {
    let mut opened = Opened {
        attachments: Vec::new(),
        fds: Vec::new(),
    };
    for d in drives {
        let slot = d
            .slot
            .ok_or("drive without a slot (assign_slots was not called)")?;
        check_image(d)?;
        let (format, mut chain) = image_chain(&d.path)?;
        let mut writable_leaf = !d.read_only;
        if d.undo.is_some() {
            let child = undo_child(undo_dir, slot, &d.path)?;
            chain.insert(0, child);
            writable_leaf = true;
        }
        let first_fd = protocol::fds::FIRST_EXTRA + opened.fds.len() as i32;
        for (i, path) in chain.iter().enumerate() {
            let write = i == 0 && writable_leaf;
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            opened.fds.push(OwnedFd::from(file));
        }
        opened.attachments.push(DriveAttachment {
            slot,
            media: d.media,
            format,
            fds: (first_fd..first_fd + chain.len() as i32).collect(),
            read_only: !writable_leaf,
        });
    }
    Ok(opened)
}

/// Checks at definition time that the drive's image can be used as asked:
/// it opens, a VHD's parent chain resolves, an undo drive has a VHD.
pub fn check_image(d: &DriveDef) -> Result<(), String> {
    let (format, _) = image_chain(&d.path)?;
    undo_needs_vhd(d, format)?;
    if format == ImageFormat::Raw {
        let len = std::fs::metadata(&d.path)
            .map_err(|e| format!("{}: {e}", d.path.display()))?
            .len();
        let unit = if d.media == DriveMedia::Cdrom {
            2048
        } else {
            512
        };
        if len == 0 || len % unit != 0 {
            return Err(format!(
                "{}: {len} bytes is not a whole number of {unit}-byte sectors",
                d.path.display()
            ));
        }
    }
    Ok(())
}

fn undo_needs_vhd(d: &DriveDef, format: ImageFormat) -> Result<(), String> {
    if d.undo.is_some() && format != ImageFormat::Vhd {
        return Err(format!(
            "{}: an undo disk needs a VHD image (convert it with `bulkhead disk convert`)",
            d.path.display()
        ));
    }
    Ok(())
}

/// The image's format and the files it reads: itself, then its parents.
/// Opening it with the disk crate checks its structures (and a VHD chain's
/// linkage) before any worker sees it.
fn image_chain(path: &Path) -> Result<(ImageFormat, Vec<PathBuf>), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let image = disk::open(path, false).map_err(|e| format!("{}: {e}", path.display()))?;
    let format = match image.format() {
        disk::ImageFormat::Raw => ImageFormat::Raw,
        _ => ImageFormat::Vhd,
    };
    let chain = disk::resolve_chain(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.len() > protocol::WorkerConfig::MAX_CHAIN {
        return Err(format!(
            "{}: a chain of {} images; at most {} (merge some with `bulkhead disk merge`)",
            path.display(),
            chain.len(),
            protocol::WorkerConfig::MAX_CHAIN
        ));
    }
    Ok((format, chain))
}

/// The undo disk of the drive in `slot`: `undo_dir/SLOT.vhd`, created as a
/// differencing child of `parent` unless a previous run of this VM left one
/// on the same parent.
fn undo_child(undo_dir: &Path, slot: IdeSlot, parent: &Path) -> Result<PathBuf, String> {
    let child = undo_path(undo_dir, slot);
    if child.exists() {
        let chain = disk::resolve_chain(&child).map_err(|e| {
            format!(
                "the undo disk {} from an earlier run is unusable ({e}); commit or discard it",
                child.display()
            )
        })?;
        let same_parent = chain
            .get(1)
            .is_some_and(|p| p.canonicalize().ok() == parent.canonicalize().ok());
        if !same_parent {
            return Err(format!(
                "the undo disk {} belongs to another image; commit or discard it first",
                child.display()
            ));
        }
        return Ok(child);
    }
    std::fs::create_dir_all(undo_dir)
        .map_err(|e| format!("creating {}: {e}", undo_dir.display()))?;
    disk::create_differencing(&child, parent)
        .map_err(|e| format!("creating the undo disk {}: {e}", child.display()))?;
    Ok(child)
}

/// Where the undo disk of the drive in `slot` lives.
pub fn undo_path(undo_dir: &Path, slot: IdeSlot) -> PathBuf {
    undo_dir.join(format!("{slot}.vhd"))
}

/// Ends the undo disks of `drives`: each is committed into its image or
/// discarded, as the drive says. Returns one line per undo disk handled.
pub fn finish_undo(drives: &[DriveDef], undo_dir: &Path) -> Vec<Result<String, String>> {
    let mut lines = Vec::new();
    for d in drives {
        let (Some(action), Some(slot)) = (d.undo, d.slot) else {
            continue;
        };
        let child = undo_path(undo_dir, slot);
        if !child.exists() {
            continue;
        }
        lines.push(match action {
            UndoAction::Discard => disk::undo::discard(&child)
                .map(|()| format!("discarded the undo disk of {}", d.path.display()))
                .map_err(|e| format!("discarding {}: {e}", child.display())),
            UndoAction::Commit => disk::undo::commit(&child, &mut disk::no_progress)
                .map(|()| format!("committed the undo disk into {}", d.path.display()))
                .map_err(|e| {
                    format!(
                        "committing {} into {}: {e}",
                        child.display(),
                        d.path.display()
                    )
                }),
        });
    }
    let _ = std::fs::remove_dir(undo_dir);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_specs_parse_with_options_and_refuse_nonsense() {
        let d =
            DriveDef::parse("/a.vhd,slot=primary-slave,undo=discard", DriveMedia::Disk).unwrap();
        assert_eq!(d.slot, Some(IdeSlot::PrimarySlave));
        assert_eq!(d.undo, Some(UndoAction::Discard));
        assert!(!d.read_only);
        assert!(
            DriveDef::parse("/a.img,ro", DriveMedia::Disk)
                .unwrap()
                .read_only
        );
        assert!(
            DriveDef::parse("/a.iso", DriveMedia::Cdrom)
                .unwrap()
                .read_only
        );
        for bad in [
            "",
            ",ro",
            "/a,slot=third",
            "/a,undo=maybe",
            "/a,rw",
            "/a,cache=none",
        ] {
            assert!(DriveDef::parse(bad, DriveMedia::Disk).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_fill_disks_on_the_primary_and_cdroms_on_the_secondary() {
        let d = |spec: &str, m| DriveDef::parse(spec, m).unwrap();
        let mut drives = vec![
            d("/cd.iso", DriveMedia::Cdrom),
            d("/a.vhd", DriveMedia::Disk),
            d("/b.vhd,slot=primary-master", DriveMedia::Disk),
        ];
        assign_slots(&mut drives).unwrap();
        let slots: Vec<_> = drives.iter().map(|d| d.slot.unwrap()).collect();
        assert_eq!(
            slots,
            [
                IdeSlot::SecondaryMaster,
                IdeSlot::PrimarySlave,
                IdeSlot::PrimaryMaster
            ]
        );

        let mut dup = vec![d("/a,slot=primary-master", DriveMedia::Disk); 2];
        assert!(
            assign_slots(&mut dup)
                .unwrap_err()
                .to_string()
                .contains("two drives")
        );
        let mut five = vec![d("/a", DriveMedia::Disk); 5];
        assert!(
            assign_slots(&mut five)
                .unwrap_err()
                .to_string()
                .contains("at most 4")
        );
        let mut relative = vec![d("a.vhd", DriveMedia::Disk)];
        assert!(
            assign_slots(&mut relative)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let mut undo_ro = vec![d("/a.vhd,ro,undo=commit", DriveMedia::Disk)];
        assert!(
            assign_slots(&mut undo_ro)
                .unwrap_err()
                .to_string()
                .contains("writable")
        );
        let mut writable_cd = vec![d("/a.iso", DriveMedia::Cdrom)];
        writable_cd[0].read_only = false;
        assert!(
            assign_slots(&mut writable_cd)
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
    }
}
