//! A built-in stand-in for Deepgram's v1 live API, so a load run can drive the engine's real
//! Deepgram client (`stt.provider = "deepgram"`, `stt.deepgram.base_url = ws://ADDR`) without
//! the service: `callengine loadgen … --mock-deepgram 127.0.0.1:PORT`.
//!
//! It speaks the documented protocol: a WebSocket on `/v1/listen` (query `encoding=linear16`,
//! `sample_rate`, `interim_results`, `endpointing`, `vad_events`), `Authorization: Token
//! <key>` (401 otherwise), binary audio in; `Results` messages out (`channel.alternatives[0]
//! .transcript`, `is_final`, `speech_final`, `from_finalize`, `start`, `duration` in seconds
//! from the stream's start), `SpeechStarted` with `vad_events`; `KeepAlive` is accepted,
//! `Finalize` flushes the open utterance, `CloseStream` flushes, sends `Metadata` and closes.
//!
//! Transcripts come from the audio ([`super::energy`]): every run of speech is one utterance
//! and every utterance says the same words (`--mock-transcript`, "Yes." by default), so the
//! engine must keep repeated answers as separate turns, and a stream that replays audio after
//! a reconnect hears the same utterances again at the same audio times.
//!
//! `--mock-drop-rate p`: each stream, with probability p, is cut (TCP reset, no close frame) at
//! a random point of its audio in `[100, --mock-drop-max-ms]` ms, so the engine's STT actor
//! reconnects and replays. Choices follow `--seed` and the order streams connect in.
//!
//! Every stream is one cheap tokio task on a runtime of the mock's own, so thousands can run
//! at once without taking the load generator's threads. Each stream's audio is timed into an
//! [`ArrivalLog`] keyed by the stream's `tag` (the engine's call id): the provider's side of
//! the load generator's forwarding-lag report. [`FrameHook`] also sees each audio frame.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::arrivals::{ArrivalLog, Recorder};
use super::deepgram_wire::{self as wire, StreamParams};
use super::energy::{EnergyDetector, Heard};

/// The mock's command-line options (part of `callengine loadgen`).
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Run a mock Deepgram v1 live server on this address for the run (point the engine's
    /// `stt.deepgram.base_url` at `ws://ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub mock_deepgram: Option<String>,
    /// Fraction of the mock's streams cut once at a random point (0–1).
    #[arg(long, default_value_t = 0.0, requires = "mock_deepgram")]
    pub mock_drop_rate: f64,
    /// Latest point of a stream's audio (ms) where a cut may fall (earliest: 100 ms).
    #[arg(long, default_value_t = 4_000, requires = "mock_deepgram")]
    pub mock_drop_max_ms: u64,
    /// What the mock says for every utterance.
    #[arg(long, default_value = "Yes.", requires = "mock_deepgram")]
    pub mock_transcript: String,
    /// Key the mock requires (`Authorization: Token KEY`); default: any key.
    #[arg(long, env = "LOADGEN_MOCK_DEEPGRAM_KEY", hide_env_values = true)]
    pub mock_deepgram_key: Option<String>,
}

impl Default for MockArgs {
    fn default() -> Self {
        Self {
            mock_deepgram: None,
            mock_drop_rate: 0.0,
            mock_drop_max_ms: 4_000,
            mock_transcript: "Yes.".into(),
            mock_deepgram_key: None,
        }
    }
}

impl MockArgs {
    /// The mock's configuration, or why the options are wrong; None without `--mock-deepgram`.
    pub fn config(&self, seed: u64) -> anyhow::Result<Option<MockConfig>> {
        let Some(bind) = &self.mock_deepgram else {
            return Ok(None);
        };
        let bind: SocketAddr = bind.parse().map_err(|e| {
            anyhow::anyhow!("--mock-deepgram {bind:?} is not an address like 127.0.0.1:8765: {e}")
        })?;
        if !(0.0..=1.0).contains(&self.mock_drop_rate) {
            anyhow::bail!(
                "--mock-drop-rate must be between 0 and 1, got {}",
                self.mock_drop_rate
            );
        }
        if self.mock_drop_max_ms < 100 {
            anyhow::bail!("--mock-drop-max-ms must be at least 100");
        }
        if self.mock_transcript.trim().is_empty() {
            anyhow::bail!("--mock-transcript must not be empty");
        }
        Ok(Some(MockConfig {
            bind,
            key: self.mock_deepgram_key.clone(),
            drop_rate: self.mock_drop_rate,
            drop_max_ms: self.mock_drop_max_ms,
            transcript: self.mock_transcript.trim().to_string(),
            seed,
            frame_hook: None,
        }))
    }
}

/// One audio frame as it reached the mock.
#[derive(Debug, Clone, Copy)]
pub struct FrameArrival {
    /// The stream (connection) number, from 0 in connection order.
    pub stream: u64,
    /// Where the frame begins in the stream's audio, ms.
    pub offset_ms: u64,
    pub bytes: usize,
    pub at: Instant,
}

/// Called for every audio frame (keep it cheap: it runs on the stream's task).
pub type FrameHook = Arc<dyn Fn(FrameArrival) + Send + Sync>;

/// How the mock behaves.
#[derive(Clone)]
pub struct MockConfig {
    pub bind: SocketAddr,
    pub key: Option<String>,
    pub drop_rate: f64,
    pub drop_max_ms: u64,
    pub transcript: String,
    pub seed: u64,
    pub frame_hook: Option<FrameHook>,
}

/// What the mock did, for the report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MockSummary {
    pub addr: String,
    pub streams: u64,
    pub rejected: u64,
    /// Streams the mock cut on purpose (`--mock-drop-rate`).
    pub streams_dropped: u64,
    pub frames: u64,
    pub audio_secs: f64,
    pub interims_sent: u64,
    pub finals_sent: u64,
    pub keepalives: u64,
    pub finalizes: u64,
    pub close_streams: u64,
}

#[derive(Default)]
struct Counters {
    next_stream: AtomicU64,
    streams: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    frames: AtomicU64,
    audio_ms: AtomicU64,
    interims: AtomicU64,
    finals: AtomicU64,
    keepalives: AtomicU64,
    finalizes: AtomicU64,
    close_streams: AtomicU64,
}

struct Shared {
    config: MockConfig,
    counters: Counters,
    arrivals: ArrivalLog,
}

/// A running mock; stops when dropped.
pub struct MockDeepgram {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockDeepgram {
    /// Binds and starts serving on a runtime of its own (two threads).
    pub fn start(config: MockConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-deepgram")
            .enable_all()
            .build()?;
        // Bound with std so that starting works inside another runtime too (no block_on).
        let cannot = |e: std::io::Error| {
            anyhow::anyhow!("mock Deepgram cannot listen on {}: {e}", config.bind)
        };
        let std_listener = std::net::TcpListener::bind(config.bind).map_err(cannot)?;
        std_listener.set_nonblocking(true).map_err(cannot)?;
        let listener = {
            let _runtime = runtime.enter();
            TcpListener::from_std(std_listener).map_err(cannot)?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            counters: Counters::default(),
            arrivals: ArrivalLog::default(),
        });
        let serving = shared.clone();
        runtime.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(serve(tcp, serving.clone()));
                    }
                    // Out of descriptors or the like: wait instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When each call's audio arrived (streams keyed by their `tag`).
    pub fn arrivals(&self) -> &ArrivalLog {
        &self.shared.arrivals
    }

    /// Counts so far.
    pub fn summary(&self) -> MockSummary {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MockSummary {
            addr: self.addr.to_string(),
            streams: get(&c.streams),
            rejected: get(&c.rejected),
            streams_dropped: get(&c.dropped),
            frames: get(&c.frames),
            audio_secs: get(&c.audio_ms) as f64 / 1000.0,
            interims_sent: get(&c.interims),
            finals_sent: get(&c.finals),
            keepalives: get(&c.keepalives),
            finalizes: get(&c.finalizes),
            close_streams: get(&c.close_streams),
        }
    }
}

impl Drop for MockDeepgram {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

// tungstenite's handshake callback type fixes the large `Err` variant.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, shared: Arc<Shared>) {
    let mut admitted = None;
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        match wire::admit(request, shared.config.key.as_deref()) {
            Ok(params) => {
                admitted = Some(params);
                Ok(response)
            }
            Err((status, why)) => {
                let body = json!({"err_code": status.as_u16().to_string(), "err_msg": why});
                let mut refusal = ErrorResponse::new(Some(body.to_string()));
                *refusal.status_mut() = status;
                Err(refusal)
            }
        }
    };
    // Small read buffers: thousands of streams, each with tungstenite's default 128 KiB zeroed
    // before every read, would make the mock the bottleneck of the run it measures.
    let config = crate::stt::deepgram::ws_config();
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await;
    let (ws, params) = match (handshake, admitted) {
        (Ok(ws), Some(params)) => (ws, params),
        _ => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let c = &shared.counters;
    c.streams.fetch_add(1, Ordering::Relaxed);
    let index = c.next_stream.fetch_add(1, Ordering::Relaxed);
    let mut rng =
        fastrand::Rng::with_seed(shared.config.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let drop_at =
        (rng.f64() < shared.config.drop_rate).then(|| rng.u64(100..=shared.config.drop_max_ms));
    if drop_at.is_some() {
        // A reset, not a FIN: the abrupt end a dead peer or a middlebox gives.
        let _ = ws.get_ref().set_zero_linger();
    }
    let recorder = shared
        .arrivals
        .open(params.tag.as_deref(), params.sample_rate, Instant::now());
    let mut stream = Stream {
        shared: shared.clone(),
        index,
        recorder,
        detector: EnergyDetector::new(
            params.sample_rate,
            params.endpoint_ms,
            params.interim.then_some(250),
        ),
        params,
        request_id: uuid::Uuid::new_v4().to_string(),
        drop_at,
    };
    stream.run(ws).await;
}

/// One stream's state.
struct Stream {
    shared: Arc<Shared>,
    index: u64,
    /// Times the audio into the arrival log (a tagged stream).
    recorder: Option<Recorder>,
    detector: EnergyDetector,
    params: StreamParams,
    request_id: String,
    drop_at: Option<u64>,
}

/// What to do after a client message.
enum Next {
    Go,
    /// The planned cut: reset the connection.
    Cut,
    /// `CloseStream`: close normally.
    Close,
}

impl Stream {
    async fn run(&mut self, ws: Ws) {
        let (mut sink, mut source) = ws.split();
        while let Some(Ok(message)) = source.next().await {
            let (out, next) = match message {
                Message::Binary(audio) => self.on_audio(&audio),
                Message::Text(text) => self.on_text(&text),
                Message::Close(_) => return,
                _ => continue,
            };
            for text in out {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            match next {
                Next::Go => {}
                Next::Cut => {
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    // Dropping both halves resets the connection (linger 0): no close frame.
                    return;
                }
                Next::Close => {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            }
        }
    }

    fn cut_due(&self) -> bool {
        self.drop_at
            .is_some_and(|at| self.detector.stream_ms() >= at)
    }

    fn on_audio(&mut self, audio: &[u8]) -> (Vec<String>, Next) {
        let c = &self.shared.counters;
        let before = self.detector.stream_ms();
        let at = Instant::now();
        if let Some(recorder) = &self.recorder {
            recorder.record(audio.len(), at);
        }
        if let Some(hook) = &self.shared.config.frame_hook {
            hook(FrameArrival {
                stream: self.index,
                offset_ms: before,
                bytes: audio.len(),
                at,
            });
        }
        let heard = self.detector.push(audio);
        c.frames.fetch_add(1, Ordering::Relaxed);
        c.audio_ms
            .fetch_add(self.detector.stream_ms() - before, Ordering::Relaxed);
        if self.cut_due() {
            // Cut before answering: the results of this audio are lost with the connection.
            return (Vec::new(), Next::Cut);
        }
        let out = heard.into_iter().filter_map(|h| self.message(h)).collect();
        (out, Next::Go)
    }

    fn on_text(&mut self, text: &str) -> (Vec<String>, Next) {
        let c = &self.shared.counters;
        let kind = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v["type"].as_str().map(String::from));
        match kind.as_deref() {
            Some("KeepAlive") => {
                c.keepalives.fetch_add(1, Ordering::Relaxed);
                (Vec::new(), Next::Go)
            }
            Some("Finalize") => {
                c.finalizes.fetch_add(1, Ordering::Relaxed);
                let flushed = self.detector.flush().and_then(|h| self.message(h));
                (flushed.into_iter().collect(), Next::Go)
            }
            Some("CloseStream") => {
                c.close_streams.fetch_add(1, Ordering::Relaxed);
                let mut out: Vec<String> = self
                    .detector
                    .flush()
                    .and_then(|h| self.message(h))
                    .into_iter()
                    .collect();
                out.push(wire::metadata(&self.request_id, self.detector.stream_ms()));
                (out, Next::Close)
            }
            _ => (Vec::new(), Next::Go),
        }
    }

    /// The Deepgram message for one result (None: nothing to say).
    fn message(&self, heard: Heard) -> Option<String> {
        let c = &self.shared.counters;
        match heard {
            Heard::Started { at_ms } => self.params.vad_events.then(|| wire::speech_started(at_ms)),
            Heard::Interim { start_ms, end_ms } => self.params.interim.then(|| {
                c.interims.fetch_add(1, Ordering::Relaxed);
                let words = wire::interim_words(&self.shared.config.transcript);
                wire::results(&self.request_id, &words, (start_ms, end_ms), false, false)
            }),
            Heard::Final {
                start_ms,
                end_ms,
                speech_final,
            } => {
                c.finals.fetch_add(1, Ordering::Relaxed);
                let text = &self.shared.config.transcript;
                let span = (start_ms, end_ms);
                Some(wire::results(
                    &self.request_id,
                    text,
                    span,
                    true,
                    speech_final,
                ))
            }
        }
    }
}
