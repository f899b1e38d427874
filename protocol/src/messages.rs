//! Every message that crosses the supervisor/worker control channel.
//!
//! The conversation on the control socket ([`crate::fds::CONTROL`]):
//!
//! 1. Both sides send a [`Hello`] and check the peer's with
//!    [`crate::check_hello`].
//! 2. The supervisor sends one [`WorkerConfig`] frame.
//! 3. The worker builds its machine and answers [`FromWorker::Ready`].
//! 4. From then on the supervisor sends [`ToWorker`] and the worker sends
//!    [`FromWorker`], each side whenever it likes.
//!
//! Messages are plain data. Length limits that a peer could abuse (log text,
//! serial input, command line) are enforced while decoding, so a value that
//! decodes is a value within its limits.

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change to any message in this module.
pub const PROTOCOL_VERSION: u16 = 2;
/// The first bytes of every connection.
pub const HELLO_MAGIC: [u8; 8] = *b"BULKHEAD";

/// Opens every connection, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u16,
}

impl Hello {
    /// This build's hello.
    pub const fn current() -> Hello {
        Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        }
    }
}

impl Default for Hello {
    fn default() -> Hello {
        Hello::current()
    }
}

/// Supervisor → worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Start (or continue after `Ready`) running the guest.
    Start,
    /// Stop running guest instructions; state is kept.
    Pause,
    /// Continue after `Pause`.
    Resume,
    /// Hard reset, as the reset button.
    Reset,
    /// Press the ACPI power button (the guest decides whether to power off).
    PowerButton,
    /// A key went down or up.
    Key(KeyEvent),
    /// Relative pointer motion and the current button state.
    Pointer(PointerEvent),
    /// Bytes for a guest serial port's receiver.
    ///
    /// Only for small interactive input (a console keystroke, a pasted line):
    /// bulk serial traffic has its own fd channel ([`crate::fds::SERIAL_COM1`])
    /// so it can never delay control messages.
    SerialInput { port: u8, bytes: SerialBytes },
    /// Ask for a [`FromWorker::Stats`] answer.
    QueryStats,
    /// Stop the guest and exit with [`crate::WorkerExit::Ok`].
    Shutdown,
}

/// A keyboard event as a PS/2 scancode set 2 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    pub key: Set2Key,
    pub pressed: bool,
}

/// A key named by its scancode set 2 make code: the low byte is the code, a
/// high byte of `0xE0` means the key is sent with the `E0` prefix.
///
/// Two keys have irregular sequences and their own values:
/// [`Set2Key::PAUSE`] and [`Set2Key::PRINT_SCREEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Set2Key(u16);

impl Set2Key {
    /// Pause/Break: `E1 14 77 E1 F0 14 F0 77` on press, nothing on release.
    pub const PAUSE: Set2Key = Set2Key(0xE114);
    /// Print Screen: `E0 12 E0 7C` / `E0 F0 7C E0 F0 12`.
    pub const PRINT_SCREEN: Set2Key = Set2Key(0xE07C);
    /// The longest sequence [`Set2Key::bytes`] produces.
    pub const MAX_SEQUENCE: usize = 8;

    /// A plain key (`0x01..=0x83`).
    pub const fn plain(code: u8) -> Option<Set2Key> {
        Set2Key::new(code as u16)
    }
    /// An `E0`-prefixed key.
    pub const fn extended(code: u8) -> Option<Set2Key> {
        Set2Key::new(0xE000 | code as u16)
    }
    /// Checks a raw value: a plain or `E0` code in `0x01..=0x83`, or PAUSE.
    pub const fn new(raw: u16) -> Option<Set2Key> {
        let code = raw & 0xFF;
        let valid = raw == Set2Key::PAUSE.0
            || ((raw >> 8 == 0 || raw >> 8 == 0xE0) && code != 0 && code <= 0x83);
        if valid { Some(Set2Key(raw)) } else { None }
    }
    pub const fn raw(self) -> u16 {
        self.0
    }
    /// The bytes the keyboard sends for a press or release.
    pub fn bytes(self, pressed: bool) -> Vec<u8> {
        let code = (self.0 & 0xFF) as u8;
        match (self, pressed) {
            (Set2Key::PAUSE, true) => vec![0xE1, 0x14, 0x77, 0xE1, 0xF0, 0x14, 0xF0, 0x77],
            (Set2Key::PAUSE, false) => Vec::new(),
            (Set2Key::PRINT_SCREEN, true) => vec![0xE0, 0x12, 0xE0, 0x7C],
            (Set2Key::PRINT_SCREEN, false) => vec![0xE0, 0xF0, 0x7C, 0xE0, 0xF0, 0x12],
            _ => {
                let mut v = Vec::with_capacity(3);
                if self.0 >> 8 == 0xE0 {
                    v.push(0xE0);
                }
                if !pressed {
                    v.push(0xF0);
                }
                v.push(code);
                v
            }
        }
    }
}

impl TryFrom<u16> for Set2Key {
    type Error = &'static str;
    fn try_from(raw: u16) -> Result<Self, Self::Error> {
        Set2Key::new(raw).ok_or("not a scancode set 2 key")
    }
}

impl From<Set2Key> for u16 {
    fn from(k: Set2Key) -> u16 {
        k.0
    }
}

/// Relative pointer motion (PS/2 mouse semantics: `dy` positive is up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointerEvent {
    pub dx: i32,
    pub dy: i32,
    /// Wheel.
    pub dz: i32,
    /// Bit 0 left, 1 right, 2 middle.
    pub buttons: u8,
}

/// At most [`SerialBytes::MAX`] bytes of serial input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct SerialBytes(Vec<u8>);

impl SerialBytes {
    pub const MAX: usize = 4096;
    /// `None` if `bytes` is longer than [`SerialBytes::MAX`].
    pub fn new(bytes: Vec<u8>) -> Option<SerialBytes> {
        (bytes.len() <= SerialBytes::MAX).then_some(SerialBytes(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl TryFrom<Vec<u8>> for SerialBytes {
    type Error = &'static str;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        SerialBytes::new(v).ok_or("serial input longer than SerialBytes::MAX")
    }
}

impl From<SerialBytes> for Vec<u8> {
    fn from(s: SerialBytes) -> Vec<u8> {
        s.0
    }
}

/// Worker → supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The machine is built and waits for [`ToWorker::Start`].
    Ready(ReadyInfo),
    /// The run state changed.
    State(VmState),
    /// The guest switched video mode (the framebuffer header says the same).
    VideoMode(VideoMode),
    /// The answer to [`ToWorker::QueryStats`].
    Stats(Stats),
    /// Something the guest did.
    Guest(GuestEvent),
    /// A rate-limited log line.
    Log(LogLine),
}

/// What the worker reports once its machine is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyInfo {
    /// Guest RAM actually allocated.
    pub ram_mib: u32,
    /// The initial video mode, if the VM has a framebuffer.
    pub video_mode: Option<VideoMode>,
}

/// Run state of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Executing guest instructions (or idle in HLT, waiting for an interrupt).
    Running,
    /// Paused by [`ToWorker::Pause`].
    Paused,
    /// Stopped by the guest (power-off, triple fault, halted forever): only
    /// [`ToWorker::Reset`] or [`ToWorker::Shutdown`] get it going again.
    Halted,
    /// Not running guest code: built but not started, or shutting down.
    Stopped,
}

/// The pixel formats of the framebuffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PixelFormat {
    /// 32 bits per pixel, little-endian `0xXXRRGGBB` (bytes B, G, R, X).
    X8R8G8B8,
}

impl PixelFormat {
    pub const fn bytes_per_pixel(self) -> u32 {
        match self {
            PixelFormat::X8R8G8B8 => 4,
        }
    }
    /// The value stored in the framebuffer header.
    pub const fn to_raw(self) -> u32 {
        match self {
            PixelFormat::X8R8G8B8 => 1,
        }
    }
    pub const fn from_raw(raw: u32) -> Option<PixelFormat> {
        match raw {
            1 => Some(PixelFormat::X8R8G8B8),
            _ => None,
        }
    }
}

/// A video mode: what the framebuffer's pixels currently mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoMode {
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    pub format: PixelFormat,
}

/// Counters answering [`ToWorker::QueryStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Guest instructions retired since power-on.
    pub instructions: u64,
    /// Time since the machine was built.
    pub uptime_ms: u64,
    /// Time the vCPU spent blocked in HLT.
    pub halted_ms: u64,
    /// Time spent paused.
    pub paused_ms: u64,
    /// Interrupts delivered to the CPU.
    pub interrupts: u64,
    /// Framebuffer frames committed.
    pub frames: u64,
    /// Millions of instructions per second over the last reporting interval
    /// (a worker's claim: display it, never trust it for decisions).
    pub mips: f64,
}

/// Something the guest did that the supervisor should know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestEvent {
    /// ACPI S5.
    PowerOff,
    /// The guest reset the machine (keyboard controller, port 0xCF9, ...).
    Reset,
    /// The CPU triple-faulted at this instruction pointer.
    TripleFault { eip: u32 },
    /// HLT with interrupts disabled and nothing that could wake it.
    HaltedForever,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
}

/// A log line from the worker. The worker rate-limits them; the supervisor
/// enforces its own limit too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub level: LogLevel,
    pub text: LogText,
    /// Lines the worker's rate limiter dropped since the previous one sent.
    pub dropped: u32,
}

impl LogLine {
    /// A line, truncated to [`LogText::MAX`] bytes.
    pub fn new(level: LogLevel, text: &str) -> LogLine {
        LogLine {
            level,
            text: LogText::truncated(text),
            dropped: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Log text of at most [`LogText::MAX`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogText(String);

impl LogText {
    pub const MAX: usize = 1024;
    /// `None` if `text` is longer than [`LogText::MAX`] bytes.
    pub fn new(text: String) -> Option<LogText> {
        (text.len() <= LogText::MAX).then_some(LogText(text))
    }
    /// `text`, cut at a character boundary to fit.
    pub fn truncated(text: &str) -> LogText {
        let mut end = text.len().min(LogText::MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        LogText(text[..end].to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogText {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        LogText::new(s).ok_or("log text longer than LogText::MAX")
    }
}

impl From<LogText> for String {
    fn from(t: LogText) -> String {
        t.0
    }
}

/// The VM a worker builds, sent once after the hellos.
///
/// Plain data: the worker opens nothing, so every image arrives as an
/// inherited fd (see [`crate::fds`]) and this only says which ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub ram_mib: u32,
    pub boot: BootSource,
    /// The framebuffer's largest mode; the memfd on
    /// [`crate::fds::FRAMEBUFFER`] is sized for it. `None`: no display.
    pub framebuffer: Option<FramebufferSize>,
    /// COM1 output goes to [`crate::fds::SERIAL_COM1`].
    pub serial: bool,
    pub debug: DebugFlags,
    /// IDE drives, their image descriptors at [`crate::fds::FIRST_EXTRA`]
    /// onwards in the order listed.
    pub drives: Vec<DriveAttachment>,
}

/// One IDE drive of the PIIX3 controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveAttachment {
    pub slot: IdeSlot,
    pub media: DriveMedia,
    pub format: ImageFormat,
    /// The image's descriptors: the image itself first, then (for a VHD
    /// differencing chain) each parent in turn. Only the first is ever
    /// written, and only when `read_only` is false.
    pub fds: Vec<i32>,
    pub read_only: bool,
}

/// Where a drive sits on the two IDE channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdeSlot {
    PrimaryMaster,
    PrimarySlave,
    SecondaryMaster,
    SecondarySlave,
}

impl IdeSlot {
    pub const ALL: [IdeSlot; 4] = [
        IdeSlot::PrimaryMaster,
        IdeSlot::PrimarySlave,
        IdeSlot::SecondaryMaster,
        IdeSlot::SecondarySlave,
    ];
    /// Channel (0 primary, 1 secondary) and position (0 master, 1 slave).
    pub fn channel_and_position(self) -> (u8, u8) {
        match self {
            IdeSlot::PrimaryMaster => (0, 0),
            IdeSlot::PrimarySlave => (0, 1),
            IdeSlot::SecondaryMaster => (1, 0),
            IdeSlot::SecondarySlave => (1, 1),
        }
    }
}

impl std::fmt::Display for IdeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdeSlot::PrimaryMaster => "primary-master",
            IdeSlot::PrimarySlave => "primary-slave",
            IdeSlot::SecondaryMaster => "secondary-master",
            IdeSlot::SecondarySlave => "secondary-slave",
        })
    }
}

impl std::str::FromStr for IdeSlot {
    type Err = String;
    fn from_str(s: &str) -> Result<IdeSlot, String> {
        IdeSlot::ALL
            .into_iter()
            .find(|slot| slot.to_string() == s)
            .ok_or_else(|| {
                format!("{s:?}: expected primary-master, primary-slave, secondary-master or secondary-slave")
            })
    }
}

/// What the drive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriveMedia {
    /// An ATA hard disk.
    Disk,
    /// An ATAPI CD-ROM drive (2048-byte sectors, always read-only).
    Cdrom,
}

/// How the drive's image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// Sector after sector (also ISO images).
    Raw,
    /// A VHD (fixed, dynamic or differencing).
    Vhd,
}

/// What the machine starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootSource {
    /// Direct Linux boot: the bzImage on `kernel_fd`, an optional initrd.
    Linux {
        kernel_fd: i32,
        initrd_fd: Option<i32>,
        cmdline: String,
    },
    /// A BIOS image (SeaBIOS) on `firmware_fd`, entered at the reset vector.
    Firmware { firmware_fd: i32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramebufferSize {
    pub width: u32,
    pub height: u32,
}

/// Development switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugFlags {
    /// Enable the debug-exit port (the guest can end the VM with a code).
    pub debug_exit: bool,
    /// Forward the 0xE9/0x402 debug console as log lines.
    pub debug_console: bool,
    /// Derive time from the instruction count (reproducible runs).
    pub deterministic: bool,
}

/// Why a [`WorkerConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("guest RAM of {0} MiB is out of range (1..={max})", max = WorkerConfig::MAX_RAM_MIB)]
    BadRam(u32),
    #[error("the {what} fd {fd} is not the documented one ({expected})")]
    BadFd {
        what: &'static str,
        fd: i32,
        expected: i32,
    },
    #[error("the kernel command line is {0} bytes (at most {max})", max = WorkerConfig::MAX_CMDLINE)]
    CmdlineTooLong(usize),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("framebuffer {width}x{height} is out of range (1..={max} each way)", max = crate::framebuffer::MAX_DIMENSION)]
    BadFramebuffer { width: u32, height: u32 },
    #[error("{0} drives: at most 4 (two IDE channels, master and slave)")]
    TooManyDrives(usize),
    #[error("two drives in the {0} slot")]
    DuplicateSlot(IdeSlot),
    #[error("the drive in {slot}: {problem}")]
    BadDrive {
        slot: IdeSlot,
        problem: &'static str,
    },
}

impl WorkerConfig {
    /// 3.5 GiB: what fits below the PCI hole of a 32-bit PC.
    pub const MAX_RAM_MIB: u32 = 3584;
    /// Linux's `COMMAND_LINE_SIZE` on x86, less the terminating NUL.
    pub const MAX_CMDLINE: usize = 2047;

    /// Checks ranges and that every fd is the documented one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::fds;
        if self.ram_mib == 0 || self.ram_mib > WorkerConfig::MAX_RAM_MIB {
            return Err(ConfigError::BadRam(self.ram_mib));
        }
        let check = |what, fd, expected| {
            if fd == expected {
                Ok(())
            } else {
                Err(ConfigError::BadFd { what, fd, expected })
            }
        };
        match &self.boot {
            BootSource::Linux {
                kernel_fd,
                initrd_fd,
                cmdline,
            } => {
                check("kernel", *kernel_fd, fds::KERNEL)?;
                if let Some(fd) = initrd_fd {
                    check("initrd", *fd, fds::INITRD)?;
                }
                if cmdline.len() > WorkerConfig::MAX_CMDLINE {
                    return Err(ConfigError::CmdlineTooLong(cmdline.len()));
                }
                if cmdline.contains('\0') {
                    return Err(ConfigError::CmdlineNul);
                }
            }
            BootSource::Firmware { firmware_fd } => check("firmware", *firmware_fd, fds::FIRMWARE)?,
        }
        if let Some(FramebufferSize { width, height }) = self.framebuffer {
            let max = crate::framebuffer::MAX_DIMENSION;
            if width == 0 || height == 0 || width > max || height > max {
                return Err(ConfigError::BadFramebuffer { width, height });
            }
        }
        self.validate_drives()
    }

    /// Longest VHD differencing chain a drive may have (image and parents).
    pub const MAX_CHAIN: usize = 16;

    /// Drives: distinct slots, descriptors numbered consecutively from
    /// [`crate::fds::FIRST_EXTRA`], raw images without parents, CD-ROMs
    /// read-only.
    fn validate_drives(&self) -> Result<(), ConfigError> {
        if self.drives.len() > IdeSlot::ALL.len() {
            return Err(ConfigError::TooManyDrives(self.drives.len()));
        }
        let mut next_fd = crate::fds::FIRST_EXTRA;
        for (i, d) in self.drives.iter().enumerate() {
            let bad = |problem| {
                Err(ConfigError::BadDrive {
                    slot: d.slot,
                    problem,
                })
            };
            if self.drives[..i].iter().any(|o| o.slot == d.slot) {
                return Err(ConfigError::DuplicateSlot(d.slot));
            }
            if d.fds.is_empty() || d.fds.len() > WorkerConfig::MAX_CHAIN {
                return bad("an image needs 1 to 16 descriptors (itself and its parents)");
            }
            if d.format == ImageFormat::Raw && d.fds.len() != 1 {
                return bad("a raw image has no parents");
            }
            if d.media == DriveMedia::Cdrom && !d.read_only {
                return bad("a CD-ROM is read-only");
            }
            for &fd in &d.fds {
                if fd != next_fd {
                    return bad(
                        "descriptors must be numbered consecutively from fd 9 in drive order",
                    );
                }
                next_fd += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DecodeError, decode, encode};
    use crate::fuzzing::{sample_config, sample_from_worker, sample_to_worker};

    #[test]
    fn every_to_worker_message_round_trips() {
        for msg in sample_to_worker() {
            let frame = encode(&msg).unwrap();
            assert_eq!(decode::<ToWorker>(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn every_from_worker_message_round_trips() {
        for msg in sample_from_worker() {
            let frame = encode(&msg).unwrap();
            assert_eq!(decode::<FromWorker>(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn hello_and_config_round_trip() {
        let hello = Hello::current();
        assert_eq!(decode::<Hello>(&encode(&hello).unwrap()).unwrap(), hello);
        let config = sample_config();
        assert_eq!(
            decode::<WorkerConfig>(&encode(&config).unwrap()).unwrap(),
            config
        );
    }

    #[test]
    fn hello_wire_format_is_magic_then_varint_version() {
        let frame = encode(&Hello::current()).unwrap();
        assert_eq!(&frame[..4], &9u32.to_le_bytes());
        assert_eq!(&frame[4..12], b"BULKHEAD");
        assert_eq!(frame[12], PROTOCOL_VERSION as u8);
    }

    #[test]
    fn oversized_log_text_is_refused_while_decoding() {
        // A hostile worker bypasses LogText::new by encoding a plain String.
        #[derive(Serialize)]
        enum Forged {
            _Ready,
            _State,
            _VideoMode,
            _Stats,
            _Guest,
            Log {
                level: LogLevel,
                text: String,
                dropped: u32,
            },
        }
        let forged = Forged::Log {
            level: LogLevel::Info,
            text: "x".repeat(LogText::MAX + 1),
            dropped: 0,
        };
        let err = decode::<FromWorker>(&encode(&forged).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::Postcard(_)), "{err:?}");
    }

    #[test]
    fn oversized_serial_input_is_refused_while_decoding() {
        #[derive(Serialize)]
        enum Forged {
            _Start,
            _Pause,
            _Resume,
            _Reset,
            _PowerButton,
            _Key,
            _Pointer,
            SerialInput { port: u8, bytes: Vec<u8> },
        }
        let forged = Forged::SerialInput {
            port: 0,
            bytes: vec![b'a'; SerialBytes::MAX + 1],
        };
        assert!(decode::<ToWorker>(&encode(&forged).unwrap()).is_err());
        assert!(SerialBytes::new(vec![0; SerialBytes::MAX]).is_some());
    }

    #[test]
    fn invalid_scancode_is_refused_while_decoding() {
        let frame = encode(&(5u32, 0x1234u16, true)).unwrap();
        assert!(decode::<ToWorker>(&frame).is_err());
        assert_eq!(Set2Key::new(0x1234), None);
        assert_eq!(Set2Key::new(0x0000), None);
        assert_eq!(Set2Key::new(0x00F0), None);
    }

    #[test]
    fn set2_key_bytes_cover_plain_extended_and_irregular_keys() {
        let a = Set2Key::plain(0x1C).unwrap();
        assert_eq!(a.bytes(true), [0x1C]);
        assert_eq!(a.bytes(false), [0xF0, 0x1C]);
        let up = Set2Key::extended(0x75).unwrap();
        assert_eq!(up.bytes(true), [0xE0, 0x75]);
        assert_eq!(up.bytes(false), [0xE0, 0xF0, 0x75]);
        assert_eq!(Set2Key::PAUSE.bytes(true).len(), Set2Key::MAX_SEQUENCE);
        assert!(Set2Key::PAUSE.bytes(false).is_empty());
        assert_eq!(Set2Key::PRINT_SCREEN.bytes(true), [0xE0, 0x12, 0xE0, 0x7C]);
    }

    #[test]
    fn log_text_truncates_at_a_char_boundary() {
        let text = "é".repeat(LogText::MAX);
        let t = LogText::truncated(&text);
        assert!(t.as_str().len() <= LogText::MAX);
        assert_eq!(t.as_str().len(), LogText::MAX);
        assert!(LogText::new("x".repeat(LogText::MAX + 1)).is_none());
    }

    #[test]
    fn config_validation_accepts_the_documented_fds() {
        assert_eq!(sample_config().validate(), Ok(()));
    }

    #[test]
    fn config_validation_refuses_wrong_fds_ram_and_cmdline() {
        let mut c = sample_config();
        c.boot = BootSource::Linux {
            kernel_fd: 0,
            initrd_fd: None,
            cmdline: String::new(),
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadFd {
                what: "kernel",
                fd: 0,
                ..
            })
        ));
        let mut c = sample_config();
        c.ram_mib = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadRam(0)));
        let mut c = sample_config();
        c.boot = BootSource::Linux {
            kernel_fd: crate::fds::KERNEL,
            initrd_fd: None,
            cmdline: "a".repeat(WorkerConfig::MAX_CMDLINE + 1),
        };
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineTooLong(_))));
        let mut c = sample_config();
        c.framebuffer = Some(FramebufferSize {
            width: 0,
            height: 480,
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadFramebuffer { .. })
        ));
    }

    #[test]
    fn config_validation_refuses_bad_drives() {
        use crate::fds::FIRST_EXTRA;
        let bad = |f: &dyn Fn(&mut WorkerConfig)| {
            let mut c = sample_config();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            bad(&|c| c.drives[1].slot = IdeSlot::PrimaryMaster),
            Err(ConfigError::DuplicateSlot(IdeSlot::PrimaryMaster))
        );
        let problem = |r: Result<(), ConfigError>| match r {
            Err(ConfigError::BadDrive { problem, .. }) => problem,
            other => panic!("expected BadDrive, got {other:?}"),
        };
        assert!(problem(bad(&|c| c.drives[1].read_only = false)).contains("read-only"));
        assert!(problem(bad(&|c| c.drives[0].fds.clear())).contains("descriptors"));
        assert!(problem(bad(&|c| c.drives[1].fds.push(FIRST_EXTRA + 3))).contains("no parents"));
        // Gaps, reordering and fds below 9 are all refused.
        assert!(
            problem(bad(&|c| c.drives[1].fds = vec![FIRST_EXTRA + 3])).contains("consecutively")
        );
        assert!(problem(bad(&|c| c.drives[0].fds.swap(0, 1))).contains("consecutively"));
        assert!(
            problem(bad(&|c| c.drives[0].fds[0] = crate::fds::CONTROL)).contains("consecutively")
        );
        assert!(
            problem(bad(
                &|c| c.drives[0].fds = (FIRST_EXTRA..FIRST_EXTRA + 17).collect()
            ))
            .contains("1 to 16")
        );
        assert_eq!(
            bad(&|c| {
                let d = c.drives[0].clone();
                c.drives = vec![d.clone(), d.clone(), d.clone(), d.clone(), d];
            }),
            Err(ConfigError::TooManyDrives(5))
        );
        assert_eq!(bad(&|c| c.drives.clear()), Ok(()));
    }

    #[test]
    fn a_message_with_an_extra_field_is_refused() {
        // postcard is positional, so an unknown field shows up as bytes the
        // message did not use.
        #[derive(Serialize)]
        struct Extra {
            dx: i32,
            dy: i32,
            dz: i32,
            buttons: u8,
            sneaky: u8,
        }
        let extra = Extra {
            dx: 0,
            dy: 0,
            dz: 0,
            buttons: 0,
            sneaky: 1,
        };
        // Positional: the extra byte is trailing garbage, refused.
        let frame = encode(&extra).unwrap();
        assert!(matches!(
            decode::<PointerEvent>(&frame),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
    }
}
