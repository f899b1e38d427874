//! Architectural exceptions as values: every instruction handler returns
//! `Result<_, Fault>` and the fault is delivered in one place
//! (`Cpu::deliver_fault`, in `interrupt.rs`).

/// Exception vectors (Intel SDM vol. 3, table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
}

/// A pending architectural exception: vector and optional error code.
/// For #PF, CR2 is written where the fault is raised.
///
/// Kept to 8 bytes (the error code's presence is a `bool`, whose spare
/// values give `Result<(), Fault>` and `Result<u32, Fault>` a niche), so
/// every handler and memory access returns its result in a register.
/// `repr(C)` with the `bool` first puts that niche in the low byte, so
/// testing a result for `Ok` is a single byte compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Fault {
    has_code: bool,
    pub vector: u8,
    code: u32,
}

impl Fault {
    #[inline]
    pub const fn new(vector: u8) -> Self {
        Self {
            vector,
            has_code: false,
            code: 0,
        }
    }
    #[inline]
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Self {
            vector,
            has_code: true,
            code,
        }
    }
    pub const DE: Fault = Fault::new(vector::DE);
    pub const DB: Fault = Fault::new(vector::DB);
    pub const BP: Fault = Fault::new(vector::BP);
    pub const OF: Fault = Fault::new(vector::OF);
    pub const BR: Fault = Fault::new(vector::BR);
    pub const UD: Fault = Fault::new(vector::UD);
    pub const NM: Fault = Fault::new(vector::NM);
    pub const MF: Fault = Fault::new(vector::MF);
    #[inline]
    pub const fn gp(code: u32) -> Self {
        Self::with_code(vector::GP, code)
    }
    #[inline]
    pub const fn ss(code: u32) -> Self {
        Self::with_code(vector::SS, code)
    }
    #[inline]
    pub const fn np(code: u32) -> Self {
        Self::with_code(vector::NP, code)
    }
    #[inline]
    pub const fn ts(code: u32) -> Self {
        Self::with_code(vector::TS, code)
    }
    #[inline]
    pub const fn pf(code: u32) -> Self {
        Self::with_code(vector::PF, code)
    }
    /// #GP(0).
    pub const GP0: Fault = Fault::gp(0);

    /// The error code the exception pushes, if it has one.
    #[inline]
    pub const fn error_code(&self) -> Option<u32> {
        if self.has_code { Some(self.code) } else { None }
    }

    /// Exception class for the double-fault rules (SDM table 6-5).
    pub(crate) fn is_contributory(vector: u8) -> bool {
        matches!(vector, 0 | 10 | 11 | 12 | 13)
    }
}

pub type Result<T, E = Fault> = core::result::Result<T, E>;

const _: () = assert!(size_of::<Result<()>>() == 8 && size_of::<Result<u32>>() == 8);

/// Page-fault error code bits.
pub mod pf {
    pub const PRESENT: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const USER: u32 = 4;
    pub const RSVD: u32 = 8;
}
