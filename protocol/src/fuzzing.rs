//! The decoder fuzz target's body, shared by `fuzz/fuzz_targets/decode_frames.rs`
//! and `tests/fuzz_corpus.rs`, which runs the corpus in CI without cargo-fuzz.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{FrameDecoder, MAX_FRAME, PREFIX_LEN, decode, decode_body, encode};
use crate::messages::{FromWorker, Hello, ToWorker, WorkerConfig};

/// Feeds `data` through every decoding path, as every message type. Panics
/// only when an invariant breaks: a decoder must not panic, must not buffer
/// past the cap, and a message that decodes must re-encode to a frame that
/// decodes and re-encodes to the same bytes.
pub fn decode_frames(data: &[u8]) {
    whole::<Hello>(data);
    whole::<ToWorker>(data);
    whole::<FromWorker>(data);
    whole::<WorkerConfig>(data);

    // Incrementally: first a piece as long as the first byte says, then
    // fixed pieces, so frames straddle pushes at varying places.
    let first = data.first().map_or(1, |&b| usize::from(b).max(1));
    for piece in [first, 1, 7, 4096] {
        let mut dec = FrameDecoder::new();
        let mut rest = data;
        let mut n = first;
        let mut frames = 0usize;
        'stream: while !rest.is_empty() {
            let take = n.min(rest.len());
            dec.push(&rest[..take]);
            rest = &rest[take..];
            n = piece;
            assert!(dec.buffered() <= PREFIX_LEN + MAX_FRAME + first.max(piece));
            while let Some(frame) = dec.next_frame() {
                let Ok(body) = frame else { break 'stream };
                assert!(body.len() <= MAX_FRAME);
                frames += 1;
                body_as::<Hello>(&body);
                body_as::<ToWorker>(&body);
                body_as::<FromWorker>(&body);
                body_as::<WorkerConfig>(&body);
            }
        }
        assert!(frames <= data.len() / PREFIX_LEN);
    }
}

fn whole<T: Serialize + DeserializeOwned>(data: &[u8]) {
    if let Ok(value) = decode::<T>(data) {
        round_trip(&value);
    }
}

fn body_as<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok(value) = decode_body::<T>(body) {
        round_trip(&value);
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
    let frame = encode(value).expect("a decoded message re-encodes");
    let again: T = decode(&frame).expect("a re-encoded message decodes");
    let frame2 = encode(&again).expect("and re-encodes again");
    assert_eq!(frame, frame2, "re-encoding is not stable");
}

/// One of every [`ToWorker`] variant.
pub fn sample_to_worker() -> Vec<ToWorker> {
    use crate::messages::{KeyEvent, PointerEvent, SerialBytes, Set2Key};
    vec![
        ToWorker::Start,
        ToWorker::Pause,
        ToWorker::Resume,
        ToWorker::Reset,
        ToWorker::PowerButton,
        ToWorker::Key(KeyEvent {
            key: Set2Key::extended(0x75).expect("up arrow"),
            pressed: true,
        }),
        ToWorker::Key(KeyEvent {
            key: Set2Key::PAUSE,
            pressed: false,
        }),
        ToWorker::Pointer(PointerEvent {
            dx: -5,
            dy: 300,
            dz: -1,
            buttons: 0b101,
        }),
        ToWorker::SerialInput {
            port: 0,
            bytes: SerialBytes::new(b"root\n".to_vec()).expect("short"),
        },
        ToWorker::QueryStats,
        ToWorker::Shutdown,
    ]
}

/// One of every [`FromWorker`] variant (and every nested enum variant).
pub fn sample_from_worker() -> Vec<FromWorker> {
    use crate::messages::{
        GuestEvent, LogLevel, LogLine, PixelFormat, ReadyInfo, Stats, VideoMode, VmState,
    };
    let mode = VideoMode {
        width: 1024,
        height: 768,
        stride: 4096,
        format: PixelFormat::X8R8G8B8,
    };
    let mut log = LogLine::new(LogLevel::Warn, "i8042: unknown command 0xd4 (rate-limited)");
    log.dropped = 17;
    vec![
        FromWorker::Ready(ReadyInfo {
            ram_mib: 256,
            video_mode: Some(mode),
        }),
        FromWorker::Ready(ReadyInfo {
            ram_mib: 64,
            video_mode: None,
        }),
        FromWorker::State(VmState::Running),
        FromWorker::State(VmState::Paused),
        FromWorker::State(VmState::Halted),
        FromWorker::State(VmState::Stopped),
        FromWorker::VideoMode(mode),
        FromWorker::Stats(Stats {
            instructions: 123_456_789_012,
            uptime_ms: 60_000,
            halted_ms: 55_000,
            paused_ms: 0,
            interrupts: 6_000,
            frames: 3_600,
            mips: 187.5,
        }),
        FromWorker::Guest(GuestEvent::PowerOff),
        FromWorker::Guest(GuestEvent::Reset),
        FromWorker::Guest(GuestEvent::TripleFault { eip: 0xC010_0000 }),
        FromWorker::Guest(GuestEvent::HaltedForever),
        FromWorker::Guest(GuestEvent::DebugExit(0x31)),
        FromWorker::Log(log),
    ]
}

/// A Linux-boot configuration using the documented fds.
pub fn sample_config() -> WorkerConfig {
    use crate::fds;
    use crate::messages::{
        BootSource, DebugFlags, DriveAttachment, DriveMedia, FramebufferSize, IdeSlot, ImageFormat,
    };
    WorkerConfig {
        ram_mib: 256,
        boot: BootSource::Linux {
            kernel_fd: fds::KERNEL,
            initrd_fd: Some(fds::INITRD),
            cmdline: "console=ttyS0 quiet".into(),
        },
        framebuffer: Some(FramebufferSize {
            width: 1024,
            height: 768,
        }),
        serial: true,
        debug: DebugFlags {
            debug_exit: true,
            ..DebugFlags::default()
        },
        drives: vec![
            DriveAttachment {
                slot: IdeSlot::PrimaryMaster,
                media: DriveMedia::Disk,
                format: ImageFormat::Vhd,
                fds: vec![fds::FIRST_EXTRA, fds::FIRST_EXTRA + 1],
                read_only: false,
            },
            DriveAttachment {
                slot: IdeSlot::SecondaryMaster,
                media: DriveMedia::Cdrom,
                format: ImageFormat::Raw,
                fds: vec![fds::FIRST_EXTRA + 2],
                read_only: true,
            },
        ],
    }
}
