//! Start-up on the main thread, before the sandbox and before any other
//! thread: take the inherited fds, shake hands, read and validate the
//! [`WorkerConfig`], read the boot images and map the framebuffer header.
//!
//! Everything here happens while the process can still open nothing it was
//! not given: the worker opens no paths at all, only reads the fds at the
//! numbers documented in [`protocol::fds`].

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use machine::boot::{linux, multiboot};
use machine::pc::{FramebufferConfig, FramebufferMemory};
use protocol::messages::ConfigError;
use protocol::{
    BootSource, FbError, FbWriter, Hello, PIXELS_OFFSET, ReadError, WorkerConfig, WorkerExit,
    WriteError, fds,
};

use super::sys;

/// The largest kernel image read (a distribution bzImage is ~10 MiB).
pub const MAX_KERNEL: u64 = 64 << 20;
/// The largest initrd read (it must also fit in guest RAM).
pub const MAX_INITRD: u64 = 1 << 30;
/// The largest BIOS image (what [`machine::pc::Pc`] accepts).
pub const MAX_FIRMWARE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("fd {fd} ({name}) is not open: the supervisor must pass it")]
    MissingFd { fd: RawFd, name: &'static str },
    #[error("sending our hello: {0}")]
    SendHello(#[source] WriteError),
    #[error("reading the supervisor's hello: {0}")]
    Hello(#[source] ReadError),
    #[error("reading the WorkerConfig frame: {0}")]
    ReadConfig(#[source] ReadError),
    #[error("invalid WorkerConfig: {0}")]
    Config(#[source] ConfigError),
    #[error("reading the {what} image on fd {fd}: {source}")]
    ReadImage {
        what: &'static str,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("the {what} image on fd {fd} is larger than {max} bytes")]
    ImageTooLarge {
        what: &'static str,
        fd: RawFd,
        max: u64,
    },
    #[error("the {what} image on fd {fd} is empty")]
    ImageEmpty { what: &'static str, fd: RawFd },
    #[error("framebuffer memfd on fd {fd}: {0}", fd = fds::FRAMEBUFFER)]
    Framebuffer(#[source] FbError),
    #[error("the framebuffer memfd has {capacity} pixel bytes; {width}x{height} needs {needed}")]
    FramebufferTooSmall {
        width: u32,
        height: u32,
        needed: u64,
        capacity: u64,
    },
}

impl SetupError {
    /// The exit code the supervisor sees: broken frames are protocol
    /// errors, everything else is a bad setup.
    pub fn exit(&self) -> WorkerExit {
        match self {
            SetupError::SendHello(_) | SetupError::Hello(_) | SetupError::ReadConfig(_) => {
                WorkerExit::ProtocolError
            }
            _ => WorkerExit::BadSetup,
        }
    }
}

/// The fds the supervisor passed, each taken at most once.
pub struct Inherited {
    pub control: Option<OwnedFd>,
    pub framebuffer: Option<OwnedFd>,
    pub serial: Option<OwnedFd>,
    pub kernel: Option<OwnedFd>,
    pub initrd: Option<OwnedFd>,
    pub firmware: Option<OwnedFd>,
}

impl Inherited {
    /// Takes ownership of every open fd among [`protocol::fds::ALL`].
    /// Main thread only, before any other thread exists.
    pub fn take() -> Inherited {
        Inherited {
            control: sys::take_inherited(fds::CONTROL),
            framebuffer: sys::take_inherited(fds::FRAMEBUFFER),
            serial: sys::take_inherited(fds::SERIAL_COM1),
            kernel: sys::take_inherited(fds::KERNEL),
            initrd: sys::take_inherited(fds::INITRD),
            firmware: sys::take_inherited(fds::FIRMWARE),
        }
    }
}

fn required(fd: Option<OwnedFd>, number: RawFd) -> Result<OwnedFd, SetupError> {
    fd.ok_or(SetupError::MissingFd {
        fd: number,
        name: fds::ALL
            .iter()
            .find(|&&(n, _)| n == number)
            .map_or("?", |&(_, name)| name),
    })
}

/// The shared framebuffer: the writer (header page) and the memfd the
/// `Pc` maps as the guest's linear framebuffer.
pub struct SharedFramebuffer {
    pub writer: FbWriter,
    pub memfd: OwnedFd,
    pub width: u32,
    pub height: u32,
}

impl SharedFramebuffer {
    /// The `Pc`'s view: the pixel area of the same memfd, so guest stores
    /// land in shared memory with no copy.
    pub fn pc_config(self) -> (FbWriter, FramebufferConfig) {
        let config = FramebufferConfig {
            // Validated against MAX_DIMENSION (4096), so they fit.
            width: self.width as u16,
            height: self.height as u16,
            memory: FramebufferMemory::Shared {
                fd: self.memfd,
                offset: PIXELS_OFFSET as u64,
            },
        };
        (self.writer, config)
    }
}

/// What start-up produced.
pub struct Setup {
    pub control: UnixStream,
    pub config: WorkerConfig,
    pub firmware: machine::pc::Firmware,
    pub framebuffer: Option<SharedFramebuffer>,
    /// COM1's stream (a socket or a pipe).
    pub serial: Option<File>,
    /// The drives' image descriptors, not yet parsed (that waits for the
    /// sandbox).
    pub drives: Vec<super::drives::DriveFiles>,
}

/// Runs the start-up sequence on the fds in `inherited`.
pub fn setup(mut inherited: Inherited) -> Result<Setup, SetupError> {
    let mut control = UnixStream::from(required(inherited.control.take(), fds::CONTROL)?);
    // Ours first: both sides send a hello without waiting for the other's,
    // so neither order on the supervisor's side can deadlock.
    protocol::write_frame(&mut control, &Hello::current()).map_err(SetupError::SendHello)?;
    protocol::read_hello(&mut control).map_err(SetupError::Hello)?;
    let config: WorkerConfig =
        protocol::read_frame(&mut control).map_err(SetupError::ReadConfig)?;
    config.validate().map_err(SetupError::Config)?;

    let firmware = match &config.boot {
        BootSource::Linux {
            initrd_fd, cmdline, ..
        } => {
            let kernel = read_image(
                "kernel",
                required(inherited.kernel.take(), fds::KERNEL)?,
                fds::KERNEL,
                MAX_KERNEL,
            )?;
            let initrd = match initrd_fd {
                Some(_) => Some(read_image(
                    "initrd",
                    required(inherited.initrd.take(), fds::INITRD)?,
                    fds::INITRD,
                    MAX_INITRD.min(u64::from(config.ram_mib) << 20),
                )?),
                None => None,
            };
            // The direct-boot path also takes Multiboot kernels (test
            // kernels, hobby OSes), as QEMU's -kernel does.
            if multiboot::is_multiboot(&kernel) && linux::check_header(&kernel).is_err() {
                machine::pc::Firmware::Multiboot {
                    kernel,
                    cmdline: cmdline.clone(),
                    modules: initrd
                        .map(|i| vec![(i, "initrd".to_string())])
                        .unwrap_or_default(),
                }
            } else {
                machine::pc::Firmware::Linux {
                    kernel,
                    initrd,
                    cmdline: cmdline.clone(),
                }
            }
        }
        BootSource::Firmware { .. } => machine::pc::Firmware::Bios {
            image: read_image(
                "firmware",
                required(inherited.firmware.take(), fds::FIRMWARE)?,
                fds::FIRMWARE,
                MAX_FIRMWARE,
            )?,
        },
    };

    let framebuffer = match config.framebuffer {
        Some(size) => {
            let memfd = required(inherited.framebuffer.take(), fds::FRAMEBUFFER)?;
            let writer = FbWriter::new(&memfd).map_err(SetupError::Framebuffer)?;
            // The Pc maps the page-rounded pixel area: all of it must exist
            // in the memfd, or a guest store past its end would SIGBUS.
            let needed =
                (u64::from(size.width) * u64::from(size.height) * 4).next_multiple_of(4096);
            if (writer.capacity() as u64) < needed {
                return Err(SetupError::FramebufferTooSmall {
                    width: size.width,
                    height: size.height,
                    needed,
                    capacity: writer.capacity() as u64,
                });
            }
            Some(SharedFramebuffer {
                writer,
                memfd,
                width: size.width,
                height: size.height,
            })
        }
        None => None,
    };
    let serial = if config.serial {
        Some(File::from(required(
            inherited.serial.take(),
            fds::SERIAL_COM1,
        )?))
    } else {
        None
    };
    let drives = config
        .drives
        .iter()
        .map(|d| {
            let files = d
                .fds
                .iter()
                .map(|&fd| {
                    sys::take_inherited(fd)
                        .map(File::from)
                        .ok_or(SetupError::MissingFd {
                            fd,
                            name: "disk image",
                        })
                })
                .collect::<Result<_, _>>()?;
            Ok(super::drives::DriveFiles {
                attachment: d.clone(),
                files,
            })
        })
        .collect::<Result<_, SetupError>>()?;
    // Unused fds (an initrd with no initrd configured, ...) close here; the
    // sandbox closes every fd it was not told to keep anyway.
    drop(inherited);
    Ok(Setup {
        control,
        config,
        firmware,
        framebuffer,
        serial,
        drives,
    })
}

/// Reads an image fd to its end, refusing more than `max` bytes.
fn read_image(
    what: &'static str,
    fd: OwnedFd,
    number: RawFd,
    max: u64,
) -> Result<Vec<u8>, SetupError> {
    let mut bytes = Vec::new();
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SetupError::ReadImage {
            what,
            fd: number,
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(SetupError::ImageTooLarge {
            what,
            fd: number,
            max,
        });
    }
    if bytes.is_empty() {
        return Err(SetupError::ImageEmpty { what, fd: number });
    }
    Ok(bytes)
}
