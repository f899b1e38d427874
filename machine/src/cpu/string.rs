//! (being written)

use iced_x86::Instruction;

use super::exec::Handler;

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    let _ = i;
    None
}
