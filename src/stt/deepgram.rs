//! Deepgram streaming speech-to-text: v1 live (`/v1/listen`, Nova) and Flux (`/v2/listen`).
//!
//! One WebSocket per call stream, driven by a task of its own: audio goes out as binary frames
//! (re-chunked to about 80 ms for Flux), results come back and are normalised by
//! [`super::deepgram_normalize`]. Connection care: `Authorization: Token …` (never logged),
//! `KeepAlive` during silence (v1), `Finalize` + `CloseStream` at the end with the last results
//! awaited by the caller, and failures classified for the supervisor: drops, 1011 closes and
//! silent stalls (no message for `stall_timeout_ms` while audio is flowing) are retryable;
//! 401/403/400 at connect and provider `Error` messages are fatal.

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::deepgram_normalize::{FluxNormalizer, Normalised, V1Normalizer};
use super::{StreamConfig, SttEvent, SttFailure, SttInput, SttProvider, SttSession, SttSignal};
use crate::secret::Secret;

/// Settings of both Deepgram providers (`[stt.deepgram]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepgramSettings {
    /// `wss://api.deepgram.com`, or `ws://…` for a self-hosted or test server.
    pub base_url: String,
    /// API key, sent as `Authorization: Token …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// v1 model.
    pub model: String,
    /// v1 language.
    pub language: String,
    /// v1: send interim results (partials).
    pub interim_results: bool,
    /// v1: silence (ms) that marks `speech_final`; 0 disables endpointing.
    pub endpointing_ms: u64,
    /// v1: `UtteranceEnd` after this gap (ms); 0 disables it.
    pub utterance_end_ms: u64,
    /// v1: `SpeechStarted` events.
    pub vad_events: bool,
    /// v1: smart formatting.
    pub smart_format: bool,
    /// v1: `KeepAlive` after this long without audio.
    pub keepalive_secs: u64,
    /// A stream that sent audio but heard nothing for this long is treated as stalled.
    pub stall_timeout_ms: u64,
    /// Time allowed to open the WebSocket.
    pub connect_timeout_ms: u64,
    /// Flux model.
    pub flux_model: String,
    /// Flux end-of-turn threshold (0: provider default).
    pub eot_threshold: f64,
    /// Flux eager end-of-turn threshold (0: off).
    pub eager_eot_threshold: f64,
    /// Flux end-of-turn timeout in ms (0: provider default).
    pub eot_timeout_ms: u64,
    /// Flux audio chunk size.
    pub flux_chunk_ms: u64,
}

impl Default for DeepgramSettings {
    fn default() -> Self {
        Self {
            base_url: "wss://api.deepgram.com".into(),
            api_key: None,
            model: "nova-3".into(),
            language: "en".into(),
            interim_results: true,
            endpointing_ms: 300,
            utterance_end_ms: 1_000,
            vad_events: true,
            smart_format: true,
            keepalive_secs: 4,
            stall_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            flux_model: "flux-general-en".into(),
            eot_threshold: 0.0,
            eager_eot_threshold: 0.0,
            eot_timeout_ms: 0,
            flux_chunk_ms: 80,
        }
    }
}

/// Which Deepgram API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeepgramApi {
    /// `/v1/listen` (Nova).
    V1,
    /// `/v2/listen` (Flux).
    Flux,
}

/// A Deepgram provider.
pub struct DeepgramProvider {
    settings: DeepgramSettings,
    /// The node's key; a tenant's own key (in the stream config) takes precedence.
    api_key: Option<Secret>,
    api: DeepgramApi,
    queue_frames: usize,
}

impl DeepgramProvider {
    /// Checks the settings. `require_key`: the node's key must be set (the provider is the
    /// default, so calls of tenants without their own key would all fail) — an error here, at
    /// start-up.
    pub fn new(
        settings: DeepgramSettings,
        api: DeepgramApi,
        queue_frames: usize,
        require_key: bool,
    ) -> Result<Self, String> {
        let api_key = settings.api_key.clone();
        if require_key && api_key.is_none() {
            return Err(
                "stt.deepgram.api_key is required when Deepgram is the default provider".into(),
            );
        }
        if !(settings.base_url.starts_with("ws://") || settings.base_url.starts_with("wss://")) {
            return Err(format!(
                "stt.deepgram.base_url must start with ws:// or wss://, got {:?}",
                settings.base_url
            ));
        }
        Ok(Self {
            settings,
            api_key,
            api,
            queue_frames: queue_frames.max(1),
        })
    }

    /// The listen URL with every configured query parameter.
    pub fn url(&self, sample_rate: u32) -> String {
        let s = &self.settings;
        let base = s.base_url.trim_end_matches('/');
        let mut query = vec![
            ("encoding", "linear16".to_string()),
            ("sample_rate", sample_rate.to_string()),
        ];
        let path = match self.api {
            DeepgramApi::V1 => {
                query.push(("channels", "1".into()));
                query.push(("model", s.model.clone()));
                query.push(("language", s.language.clone()));
                query.push(("interim_results", s.interim_results.to_string()));
                let endpointing = if s.endpointing_ms == 0 {
                    "false".into()
                } else {
                    s.endpointing_ms.to_string()
                };
                query.push(("endpointing", endpointing));
                if s.utterance_end_ms > 0 && s.interim_results {
                    query.push(("utterance_end_ms", s.utterance_end_ms.to_string()));
                }
                query.push(("vad_events", s.vad_events.to_string()));
                query.push(("smart_format", s.smart_format.to_string()));
                "/v1/listen"
            }
            DeepgramApi::Flux => {
                query.push(("model", s.flux_model.clone()));
                if s.eot_threshold > 0.0 {
                    query.push(("eot_threshold", s.eot_threshold.to_string()));
                }
                if s.eager_eot_threshold > 0.0 {
                    query.push(("eager_eot_threshold", s.eager_eot_threshold.to_string()));
                }
                if s.eot_timeout_ms > 0 {
                    query.push(("eot_timeout_ms", s.eot_timeout_ms.to_string()));
                }
                "/v2/listen"
            }
        };
        let query = serde_urlencoded::to_string(&query).unwrap_or_default();
        format!("{base}{path}?{query}")
    }

    /// The URL of one call's stream: [`Self::url`] plus Deepgram's `tag` request label set to
    /// the engine's call id (an opaque UUID), so provider-side usage and logs — and the load
    /// generator's mock, which times each frame's arrival — can tell calls apart.
    pub fn stream_url(&self, config: &StreamConfig) -> String {
        format!("{}&tag={}", self.url(config.sample_rate), config.call_id)
    }
}

/// Read buffer of a provider socket. tungstenite's default (128 KiB) is allocated per socket and
/// zero-filled before every read; the provider sends small JSON results, so a 4 KiB buffer
/// (it grows for a larger message) saves ~124 KiB per live call and the memset on each read
/// — 8 % of the engine's CPU at 1,000 calls in a profile (docs/benchmarks.md).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The WebSocket settings of a provider socket.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
}

impl SttProvider for DeepgramProvider {
    fn name(&self) -> &'static str {
        match self.api {
            DeepgramApi::V1 => "deepgram",
            DeepgramApi::Flux => "flux",
        }
    }

    fn open(
        &self,
        config: StreamConfig,
    ) -> LocalBoxFuture<'static, Result<SttSession, SttFailure>> {
        let url = self.stream_url(&config);
        let key = config.api_key.clone().or_else(|| self.api_key.clone());
        let settings = self.settings.clone();
        let (api, queue) = (self.api, self.queue_frames);
        Box::pin(async move {
            let key = key.ok_or_else(|| {
                SttFailure::fatal(
                    "no Deepgram API key: the tenant has no stt_api_key and stt.deepgram.api_key is not set",
                )
            })?;
            let ws = connect(
                &url,
                &key,
                Duration::from_millis(settings.connect_timeout_ms),
            )
            .await?;
            let (audio_tx, audio_rx) = mpsc::channel(queue);
            let (signal_tx, signal_rx) = mpsc::unbounded_channel();
            let session = StreamTask {
                api,
                settings,
                offset_ms: config.start_offset_ms,
                sample_rate: config.sample_rate,
            };
            actix_web::rt::spawn(session.run(ws, audio_rx, signal_tx));
            Ok(SttSession {
                audio: audio_tx,
                signals: signal_rx,
            })
        })
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, key: &Secret, limit: Duration) -> Result<Ws, SttFailure> {
    let mut request = url
        .into_client_request()
        .map_err(|err| SttFailure::fatal(format!("bad Deepgram URL: {err}")))?;
    let token = HeaderValue::from_str(&format!("Token {}", key.expose()))
        .map_err(|_| SttFailure::fatal("the Deepgram API key is not a valid header value"))?;
    request.headers_mut().insert("Authorization", token);
    // TCP_NODELAY: a 20 ms frame must leave at once, not wait for the previous one's ACK
    // (Nagle with delayed ACKs held about one frame in ten back by a whole frame period).
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(limit, connect).await {
        Err(_) => Err(SttFailure::retryable(format!(
            "connect timed out after {} ms",
            limit.as_millis()
        ))),
        Ok(Ok((ws, _))) => {
            let tcp = match ws.get_ref() {
                tokio_tungstenite::MaybeTlsStream::Plain(tcp) => Some(tcp),
                tokio_tungstenite::MaybeTlsStream::Rustls(tls) => Some(tls.get_ref().0),
                _ => None,
            };
            if let Some(tcp) = tcp {
                crate::net::observe(crate::net::SocketKind::Stt, tcp.nodelay().unwrap_or(false));
            }
            Ok(ws)
        }
        Ok(Err(WsError::Http(response))) => {
            let status = response.status().as_u16();
            let message = format!("Deepgram refused the stream: HTTP {status}");
            match status {
                400..=403 => Err(SttFailure::fatal(message)),
                _ => Err(SttFailure::retryable(message)),
            }
        }
        Ok(Err(err)) => Err(SttFailure::retryable(format!(
            "cannot connect to Deepgram: {err}"
        ))),
    }
}

enum Normalizer {
    V1(V1Normalizer),
    Flux(FluxNormalizer),
}

impl Normalizer {
    fn on_message(&mut self, text: &str) -> Normalised {
        match self {
            Self::V1(n) => n.on_message(text),
            Self::Flux(n) => n.on_message(text),
        }
    }

    fn on_close(&mut self) -> Vec<SttEvent> {
        match self {
            Self::V1(n) => n.on_close(),
            Self::Flux(n) => n.on_close(),
        }
    }
}

struct StreamTask {
    api: DeepgramApi,
    settings: DeepgramSettings,
    offset_ms: i64,
    sample_rate: u32,
}

impl StreamTask {
    async fn run(
        self,
        ws: Ws,
        mut audio: mpsc::Receiver<SttInput>,
        signals: mpsc::UnboundedSender<SttSignal>,
    ) {
        let (mut sink, mut stream) = ws.split();
        let mut normalizer = match self.api {
            DeepgramApi::V1 => Normalizer::V1(V1Normalizer::new(self.offset_ms)),
            DeepgramApi::Flux => Normalizer::Flux(FluxNormalizer::new(self.offset_ms)),
        };
        let chunk_bytes = match self.api {
            DeepgramApi::V1 => 0,
            DeepgramApi::Flux => {
                (self.sample_rate as usize * 2 * self.settings.flux_chunk_ms as usize) / 1000
            }
        };
        let mut pending: Vec<u8> = Vec::with_capacity(chunk_bytes);
        let keepalive = Duration::from_secs(self.settings.keepalive_secs.max(1));
        let stall = Duration::from_millis(self.settings.stall_timeout_ms.max(100));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (mut last_message, mut last_audio, mut last_keepalive) = (now(), now(), now());
        let mut awaiting_reply = false;
        let mut finalizing = false;
        loop {
            tokio::select! {
                input = audio.recv(), if !finalizing => match input {
                    Some(SttInput::Audio { pcm, .. }) => {
                        if let Err(err) = send_audio(&mut sink, &mut pending, chunk_bytes, pcm).await {
                            return end(&signals, &mut normalizer, SttSignal::Failed(SttFailure::retryable(format!("send failed: {err}"))));
                        }
                        last_audio = now();
                        awaiting_reply = true;
                    }
                    Some(SttInput::Finalize) => {
                        finalizing = true;
                        finalize(&mut sink, &mut pending, self.api).await;
                    }
                    None => {
                        let _ = sink.close().await;
                        return;
                    }
                },
                message = stream.next() => {
                    if matches!(message, Some(Ok(Message::Text(_)))) {
                        last_message = now();
                        awaiting_reply = false;
                    }
                    match hear(&mut normalizer, message, finalizing) {
                        Heard::Events(events) => {
                            for event in events {
                                let _ = signals.send(SttSignal::Event(event));
                            }
                        }
                        Heard::End(signal) => return end(&signals, &mut normalizer, signal),
                    }
                }
                _ = tick.tick() => {
                    let t = now();
                    if !finalizing && awaiting_reply && t.duration_since(last_message) >= stall && t.duration_since(last_audio) < stall {
                        return end(&signals, &mut normalizer, SttSignal::Failed(SttFailure::retryable(format!(
                            "stalled: no message for {} ms while audio was flowing", stall.as_millis()))));
                    }
                    if self.api == DeepgramApi::V1 && !finalizing
                        && t.duration_since(last_audio) >= keepalive && t.duration_since(last_keepalive) >= keepalive
                    {
                        last_keepalive = t;
                        if sink.send(Message::Text(r#"{"type":"KeepAlive"}"#.into())).await.is_err() {
                            return end(&signals, &mut normalizer, SttSignal::Failed(SttFailure::retryable("keep-alive failed")));
                        }
                    }
                }
            }
        }
    }
}

/// The stream's last word to the STT actor; a clean close first flushes what the normaliser
/// still holds (a pending Flux turn).
fn end(signals: &mpsc::UnboundedSender<SttSignal>, normalizer: &mut Normalizer, signal: SttSignal) {
    if matches!(signal, SttSignal::Closed) {
        for event in normalizer.on_close() {
            let _ = signals.send(SttSignal::Event(event));
        }
    }
    let _ = signals.send(signal);
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Sends a frame as it came (v1), or gathers frames into the chunk size Flux requires.
async fn send_audio(
    sink: &mut Sink,
    pending: &mut Vec<u8>,
    chunk_bytes: usize,
    pcm: bytes::Bytes,
) -> Result<(), WsError> {
    if chunk_bytes == 0 {
        return sink.send(Message::Binary(pcm)).await;
    }
    pending.extend_from_slice(&pcm);
    if pending.len() < chunk_bytes {
        return Ok(());
    }
    sink.send(Message::Binary(std::mem::take(pending).into()))
        .await
}

/// The end of the audio: what is gathered goes out, then `Finalize` (v1) and `CloseStream`;
/// the provider's last results and its close follow.
async fn finalize(sink: &mut Sink, pending: &mut Vec<u8>, api: DeepgramApi) {
    if !pending.is_empty() {
        let _ = sink
            .send(Message::Binary(std::mem::take(pending).into()))
            .await;
    }
    if api == DeepgramApi::V1 {
        let _ = sink
            .send(Message::Text(r#"{"type":"Finalize"}"#.into()))
            .await;
    }
    let _ = sink
        .send(Message::Text(r#"{"type":"CloseStream"}"#.into()))
        .await;
}

/// What one message from Deepgram means for the call.
enum Heard {
    /// Transcript events to pass on (possibly none).
    Events(Vec<SttEvent>),
    /// The stream is over: closed as asked (while finalizing) or failed.
    End(SttSignal),
}

/// Reads one message of the provider's socket: results become events; a close, an error or the
/// socket's end is `Closed` while finalizing and a failure otherwise (a policy close — bad key,
/// bad request — is fatal, anything else worth a reconnect).
fn hear(
    normalizer: &mut Normalizer,
    message: Option<Result<Message, WsError>>,
    finalizing: bool,
) -> Heard {
    let dropped = |why: String| {
        Heard::End(if finalizing {
            SttSignal::Closed
        } else {
            SttSignal::Failed(SttFailure::retryable(why))
        })
    };
    match message {
        Some(Ok(Message::Text(text))) => match normalizer.on_message(&text) {
            Normalised::Events(events) => Heard::Events(events),
            Normalised::Failure(failure) => Heard::End(SttSignal::Failed(failure)),
        },
        Some(Ok(Message::Close(_))) if finalizing => Heard::End(SttSignal::Closed),
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame.map_or((CloseCode::Status, String::new()), |f| {
                (f.code, f.reason.to_string())
            });
            let message = format!("Deepgram closed the stream: {} {reason}", u16::from(code));
            Heard::End(SttSignal::Failed(match code {
                CloseCode::Policy => SttFailure::fatal(message),
                _ => SttFailure::retryable(message),
            }))
        }
        Some(Ok(_)) => Heard::Events(Vec::new()),
        Some(Err(err)) => dropped(format!("connection dropped: {err}")),
        None => dropped("connection dropped".into()),
    }
}

fn now() -> std::time::Instant {
    crate::clock::now()
}

#[cfg(test)]
mod tests;
