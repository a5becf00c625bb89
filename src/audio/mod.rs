//! Audio primitives. Pure: no I/O, no clocks.

pub mod pcm;
