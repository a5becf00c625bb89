//! callengine: a live phone-call audio engine.
//!
//! Each call is a supervised actor that streams audio to speech-to-text and keeps a durable,
//! ordered transcript in the database while the call runs. This crate is both the library
//! (used by the integration tests) and the `callengine` binary.

pub mod app;
pub mod audio;
pub mod call;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod http_error;
pub mod ingress;
#[cfg(test)]
mod layering;
pub mod loadgen;
pub mod media;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod postcall;
pub mod secret;
pub mod state;
pub mod store;
pub mod stt;
pub mod telemetry;
pub mod text;
pub mod transcript;
pub mod webhooks;

pub use app::Application;
pub use config::Settings;
