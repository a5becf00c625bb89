//! Speech-to-text: the provider trait, the events every provider is normalised into, and the
//! supervised [`SttActor`](actor::SttActor) that drives one provider stream per call.
//!
//! The trait fits streaming providers such as Deepgram: a session takes audio (with its time
//! offset in the call, so a reconnected stream continues the call's clock) and produces events
//! asynchronously; `Finalize` asks for the last results, after which the session reports
//! `Closed`. Providers do their I/O on tasks of their own; actors only see channels.

pub mod actor;
pub mod deepgram;
pub mod deepgram_normalize;
pub mod replay;
pub mod scripted;
pub mod settings;
pub mod supervision;
pub mod whisper;

pub use crate::transcript::SttEvent;
pub use settings::SttSettings;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why a provider session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttFailure {
    /// True for drops, 1011 closes and stalls; false for auth and request errors.
    pub retryable: bool,
    /// What happened, without secrets.
    pub message: String,
}

impl SttFailure {
    /// A failure worth reconnecting after.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure that reconnecting cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// What a provider session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SttSignal {
    /// A transcript event.
    Event(SttEvent),
    /// The session broke.
    Failed(SttFailure),
    /// The session ended after `Finalize` (all results delivered).
    Closed,
}

/// Input to a provider session.
#[derive(Debug, Clone)]
pub enum SttInput {
    /// PCM s16le mono at the stream's sample rate, starting at `offset_ms` of call audio.
    Audio { pcm: Bytes, offset_ms: i64 },
    /// Deliver the last results and close.
    Finalize,
}

/// Parameters of one provider stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The call the stream belongs to.
    pub call_id: Uuid,
    /// Sample rate of the PCM that will be sent.
    pub sample_rate: u32,
    /// Call time (ms of audio) at which this stream's first audio starts.
    pub start_offset_ms: i64,
    /// 0 for the first stream of a call, then 1, 2… for each reconnect.
    pub session_index: u32,
    /// The tenant's own API key; providers that need one prefer it to the node's.
    pub api_key: Option<crate::secret::Secret>,
}

/// An open provider stream: send audio in, read signals out.
pub struct SttSession {
    /// Bounded: when full, the caller drops audio (and counts it) rather than wait.
    pub audio: mpsc::Sender<SttInput>,
    /// Unbounded: transcript events are never dropped.
    pub signals: mpsc::UnboundedReceiver<SttSignal>,
}

/// A speech-to-text provider.
pub trait SttProvider: Send + Sync + 'static {
    /// Short name for logs and metrics (`scripted`, `deepgram`…).
    fn name(&self) -> &'static str;

    /// Whether a partial that sees no final for a while should be promoted to a turn. True for
    /// providers that may never send a final; false for those that always end a turn with one
    /// (and may take longer than the promotion timeout between partials).
    fn promotes_stale_partials(&self) -> bool {
        true
    }

    /// How long to wait for the last results after `Finalize`, given the configured default.
    /// A local engine that may be decoding a long segment needs longer than a cloud stream.
    fn finalize_timeout(&self, configured: std::time::Duration) -> std::time::Duration {
        configured
    }

    /// Opens a stream. Called on the actor's thread; the provider spawns its own I/O.
    fn open(&self, config: StreamConfig)
        -> LocalBoxFuture<'static, Result<SttSession, SttFailure>>;
}
