//! `[stt]`: speech-to-text settings, shared by every provider, with each provider's section.

use serde::{Deserialize, Serialize};

/// Speech-to-text settings (`[stt]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SttSettings {
    /// Provider: `whisper` (local), `scripted`, `deepgram` (v1 live) or `flux`.
    pub provider: String,
    /// Restarts of a call's STT stream allowed per window…
    pub restart_max: usize,
    /// …of this many seconds; past it the call ends `failed`.
    pub restart_window_secs: u64,
    /// First reconnect delay; doubles per attempt, with ±20 % jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// Audio kept for replay after a reconnect (since the last final), at most.
    pub replay_buffer_ms: u64,
    /// Audio frames queued towards the provider before frames are dropped (and counted).
    pub audio_queue_frames: usize,
    /// How long the end of a call waits for the provider's last results.
    pub finalize_timeout_ms: u64,
    /// The scripted provider.
    pub scripted: crate::stt::scripted::ScriptedSettings,
    /// Deepgram (v1 live and Flux).
    pub deepgram: crate::stt::deepgram::DeepgramSettings,
    /// Local Whisper.
    pub whisper: crate::stt::whisper::stream::WhisperSettings,
}

impl Default for SttSettings {
    fn default() -> Self {
        Self {
            provider: "whisper".into(),
            restart_max: 3,
            restart_window_secs: 10,
            backoff_initial_ms: 250,
            backoff_max_ms: 5_000,
            replay_buffer_ms: 10_000,
            audio_queue_frames: 50,
            finalize_timeout_ms: 3_000,
            scripted: Default::default(),
            deepgram: Default::default(),
            whisper: Default::default(),
        }
    }
}
