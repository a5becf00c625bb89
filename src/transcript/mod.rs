//! Transcript assembly: the pure [`assembler::TurnAssembler`] and the
//! [`buffer::TranscriptBuffer`] actor that drives it for one call.

pub mod assembler;
pub mod buffer;
