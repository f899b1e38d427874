//! The x87 FPU (being written).

mod softfloat;

use iced_x86::Instruction;

use super::exec::Handler;

#[derive(Clone, Debug, Default)]
pub(crate) struct Fpu {}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    let _ = i;
    None
}
