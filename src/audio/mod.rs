//! Audio primitives. Pure: no I/O, no clocks.

pub mod g711;
pub mod pcm;
pub mod resample;
pub mod speech;
pub mod wav;
