//! A real WebSocket client for `/ws/voice`, an in-process app on port 0, and the per-call
//! durability checks every termination-path test makes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callengine::app::ShutdownHandle;
use callengine::store::{CallStatus, Store};
use callengine::{Application, Settings};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::{Backend, TestDb};

/// The admin token of test apps.
pub const TOKEN: &str = "test-admin-token";
/// Audio per scripted turn in test apps.
pub const TURN_MS: u64 = 200;

/// A running app with its own database.
pub struct TestApp {
    pub port: u16,
    /// The AudioSocket listener's port, when the settings enable one.
    pub audiosocket_port: Option<u16>,
    pub db: TestDb,
    pub shutdown: ShutdownHandle,
    /// The app's shared state (its registry, for tests that reach a live call's actor).
    pub state: actix_web::web::Data<callengine::state::AppState>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts an app on `backend` with scripted STT (a turn per 200 ms of audio) and the given
    /// extra settings (`KEY=value` pairs in environment form).
    pub async fn start(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        Self::start_with_db(db, None, extra).await
    }

    /// Starts an app on an existing database, optionally through another URL (a proxy).
    pub async fn start_with_db(
        db: TestDb,
        url_override: Option<String>,
        extra: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = url_override.unwrap_or_else(|| db.url_string.clone());
        let mut env: Vec<(String, String)> = vec![
            ("CALLENGINE_BIND".into(), "127.0.0.1:0".into()),
            (
                "CALLENGINE_DATA_DIR".into(),
                dir.path().display().to_string(),
            ),
            ("CALLENGINE_HTTP_WORKERS".into(), "2".into()),
            ("CALLENGINE_NODE_ID".into(), "test-node".into()),
            ("CALLENGINE_DATABASE__URL".into(), url),
            ("CALLENGINE_DATABASE__POOL_SIZE".into(), "8".into()),
            ("CALLENGINE_API__ADMIN_TOKEN".into(), TOKEN.into()),
            ("CALLENGINE_STT__PROVIDER".into(), "scripted".into()),
            (
                "CALLENGINE_STT__SCRIPTED__TURN_MS".into(),
                TURN_MS.to_string(),
            ),
            (
                "CALLENGINE_STT__SCRIPTED__PARTIALS_PER_TURN".into(),
                "1".into(),
            ),
            ("CALLENGINE_STT__BACKOFF_INITIAL_MS".into(), "20".into()),
            // Post-call workers only where a test asks for them.
            ("CALLENGINE_POSTCALL__WORKERS".into(), "0".into()),
            ("CALLENGINE_POSTCALL__WEBHOOK_WORKERS".into(), "0".into()),
            ("CALLENGINE_STT__BACKOFF_MAX_MS".into(), "100".into()),
            (
                "CALLENGINE_SECURITY__NODE_KEY".into(),
                super::TEST_NODE_KEY.into(),
            ),
            // The local stand-ins for carriers and receivers listen on loopback over http; the
            // security suite sets these back to the strict defaults.
            ("CALLENGINE_EGRESS__ALLOW_HTTP".into(), "true".into()),
            ("CALLENGINE_EGRESS__ALLOW_PRIVATE".into(), "true".into()),
            (
                "CALLENGINE_EGRESS__RECORDING_HOSTS".into(),
                "127.0.0.1,localhost".into(),
            ),
        ];
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let settings = Settings::load_from(None, env).unwrap();
        let app = Application::build(settings).await.unwrap();
        let (port, shutdown) = (app.port(), app.shutdown_handle());
        let audiosocket_port = app.audiosocket_port();
        let state = app.state();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        Self {
            port,
            audiosocket_port,
            db,
            shutdown,
            state,
            server: Some(server),
            _dir: dir,
        }
    }

    /// The store of the app's database.
    pub fn store(&self) -> &Store {
        &self.db.store
    }

    /// Drains and stops the app, then drops its database.
    pub async fn stop(mut self) {
        self.shutdown.shutdown().await;
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.db.cleanup().await;
    }
}

/// The open tenant (`media_open`) every test app has: the engine's local tenant, which a node
/// listening on loopback creates (`/ws/voice` admits only known tenants).
pub const OPEN_TENANT: Uuid = callengine::ingress::admission::LOCAL_TENANT;

/// Query string for a new call of the open tenant with fresh campaign and lead ids.
pub fn call_query() -> String {
    let (t, c, l) = (OPEN_TENANT, Uuid::new_v4(), Uuid::new_v4());
    format!("tenant_id={t}&campaign_id={c}&lead_id={l}&phone_number=%2B14155550100")
}

/// What the client saw.
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    pub call_id: Option<Uuid>,
    pub partials: Vec<(i64, String)>,
    pub finals: Vec<(i64, String)>,
    pub errors: Vec<String>,
    pub closes: Vec<(u16, String)>,
    pub ended: bool,
}

type Ws = WebSocketStream<TcpStream>;

/// A voice client over a real TCP connection.
pub struct VoiceClient {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    pub log: Arc<Mutex<ClientLog>>,
    reader: tokio::task::JoinHandle<()>,
}

impl VoiceClient {
    /// Connects to `/ws/voice/{external}?{query}`.
    pub async fn connect(port: u16, external: Uuid, query: &str) -> Self {
        Self::connect_path(port, &format!("/ws/voice/{external}?{query}")).await
    }

    /// Connects to any path on the app.
    pub async fn connect_path(port: u16, path: &str) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        // SO_LINGER 0: when the client is dropped the socket sends RST, not FIN (used by the
        // "TCP reset without a Close frame" tests; after a normal close it changes nothing).
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        let (sink, mut stream) = ws.split();
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let shared = log.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let mut log = shared.lock().unwrap();
                match message {
                    Message::Text(text) => record_event(&mut log, &text),
                    Message::Close(frame) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        log.closes.push((code, reason));
                    }
                    _ => {}
                }
            }
            shared.lock().unwrap().ended = true;
        });
        Self { sink, log, reader }
    }

    /// Waits until the server has answered with the call id (the call row exists).
    pub async fn wait_started(&self) -> Uuid {
        wait_until(Duration::from_secs(15), || self.log.lock().unwrap().call_id)
            .await
            .expect("call started")
    }

    /// Sends `millis` of audio as 100 ms frames of `pcm` (cycled), lightly paced.
    pub async fn send_audio(&mut self, millis: u64, pcm: &[u8]) {
        let frame_bytes = 3200;
        let mut offset = 0;
        for _ in 0..millis / 100 {
            let mut frame = Vec::with_capacity(frame_bytes);
            while frame.len() < frame_bytes {
                let take = (frame_bytes - frame.len()).min(pcm.len() - offset);
                frame.extend_from_slice(&pcm[offset..offset + take]);
                offset = (offset + take) % pcm.len();
            }
            self.sink.send(Message::Binary(frame.into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends `pcm` once, in 100 ms frames (the last one padded with silence to whole 20 ms).
    pub async fn send_pcm(&mut self, pcm: &[u8]) {
        for chunk in pcm.chunks(3200) {
            let mut frame = chunk.to_vec();
            frame.resize(chunk.len().div_ceil(640) * 640, 0);
            self.sink.send(Message::Binary(frame.into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends one binary message as is.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.sink.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Sends one text message; false when the server has already closed the socket.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.sink.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends one binary message; false when the server has already closed the socket.
    pub async fn try_send_binary(&mut self, bytes: Vec<u8>) -> bool {
        self.sink.send(Message::Binary(bytes.into())).await.is_ok()
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) {
        self.sink.send(Message::Text(text.into())).await.unwrap();
    }

    /// Waits for `n` finals.
    pub async fn wait_finals(&self, n: usize) {
        let got = wait_until(Duration::from_secs(60), || {
            (self.log.lock().unwrap().finals.len() >= n).then_some(())
        })
        .await;
        assert!(
            got.is_some(),
            "expected {n} finals, saw {:?}",
            self.log.lock().unwrap().finals
        );
    }

    /// Sends a Close frame with `code`.
    pub async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        self.sink.send(Message::Close(Some(frame))).await.unwrap();
    }

    /// Waits until the server has closed the connection; returns what the client saw.
    pub async fn finished(self) -> ClientLog {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.reader).await;
        let log = self.log.lock().unwrap().clone();
        assert!(log.ended, "server never ended the connection: {log:?}");
        log
    }

    /// Resets the TCP connection (RST, no Close frame): both halves of the socket are dropped.
    pub fn reset(self) {
        self.reader.abort();
        drop(self.sink);
    }
}

fn record_event(log: &mut ClientLog, text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let seq = value["seq"].as_i64().unwrap_or(-1);
    let body = value["text"].as_str().unwrap_or_default().to_string();
    match value["type"].as_str() {
        Some("call") => {
            log.call_id = value["call_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
        }
        Some("partial") => log.partials.push((seq, body)),
        Some("final") => log.finals.push((seq, body)),
        Some("error") => log
            .errors
            .push(value["message"].as_str().unwrap_or_default().to_string()),
        other => panic!("unknown event type {other:?}: {text}"),
    }
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub async fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the call row has left `active`.
pub async fn wait_call_ended(store: &Store, call_id: Uuid) -> callengine::store::Call {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = store
            .get_call(call_id)
            .await
            .unwrap()
            .expect("call row exists");
        if call.status != CallStatus::Active {
            return call;
        }
        assert!(Instant::now() < deadline, "call {call_id} still active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The expected durable outcome of one call.
pub struct Expect {
    pub status: CallStatus,
    pub end_reason: &'static str,
    /// Final turns the audio must have produced (scripted: one per 200 ms).
    pub finals: usize,
    /// The close code the client must have seen exactly once (`None`: connection was reset).
    pub close: Option<u16>,
    /// Whether the client must have seen every final (false when it went away early).
    pub client_saw_all: bool,
}

impl Expect {
    /// A normally completed call whose client stayed until the server's close.
    pub fn completed(end_reason: &'static str, finals: usize, close: u16) -> Self {
        Self {
            status: CallStatus::Completed,
            end_reason,
            finals,
            close: Some(close),
            client_saw_all: true,
        }
    }
}

/// Asserts the per-call promises: every final once and in order in `call_turns`, the call row
/// ended with duration and cost, and exactly one Close frame with the right code.
pub async fn assert_durable(store: &Store, log: &ClientLog, expect: Expect) -> Uuid {
    let call_id = log.call_id.expect("the client learnt its call id");
    let call = wait_call_ended(store, call_id).await;
    assert_eq!(call.status, expect.status, "{call:?}");
    assert_eq!(call.end_reason.as_deref(), Some(expect.end_reason));
    assert!(call.ended_at.is_some());
    let duration = call.duration_seconds.expect("duration stored");
    assert_eq!(
        call.cost_micros,
        Some(duration * 1_000),
        "default rate $0.001/s"
    );
    let turns = store.list_turns(call_id).await.unwrap();
    let finals: Vec<(i64, String)> = turns
        .iter()
        .filter(|t| t.is_final)
        .map(|t| (i64::from(t.seq), t.text.clone()))
        .collect();
    let seqs: Vec<i32> = turns.iter().map(|t| t.seq).collect();
    assert_eq!(
        seqs,
        (1..=turns.len() as i32).collect::<Vec<_>>(),
        "turns numbered 1..n without gaps"
    );
    assert!(
        turns.iter().rev().skip(1).all(|t| t.is_final),
        "only the last turn may be a flushed partial"
    );
    assert_eq!(
        finals.len(),
        expect.finals,
        "final turns in the database: {finals:?}"
    );
    for (seq, text) in &log.finals {
        assert!(
            finals.contains(&(*seq, text.clone())),
            "acknowledged final {seq} {text:?} missing from the database"
        );
    }
    if expect.client_saw_all {
        assert_eq!(
            log.finals, finals,
            "the client saw every final, once, in order"
        );
    }
    let text = call.transcript_text.unwrap_or_default();
    assert_eq!(
        text.lines().count(),
        turns.len(),
        "transcript materialised from every turn"
    );
    match expect.close {
        Some(code) => {
            assert_eq!(
                log.closes.len(),
                1,
                "exactly one Close frame: {:?}",
                log.closes
            );
            assert_eq!(log.closes[0].0, code, "{:?}", log.closes);
        }
        None => assert!(log.closes.is_empty()),
    }
    call_id
}

/// Speech from espeak-ng as s16 samples at `rate` Hz (the engine's band-limited resampler).
pub fn speech_samples(text: &str, rate: u32) -> Vec<i16> {
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "--stdout", text])
        .output()
        .expect("espeak-ng is installed (apt-get install espeak-ng)");
    assert!(out.status.success(), "espeak-ng failed");
    let (from, samples) = parse_wav(&out.stdout);
    let samples: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32_768.0).collect();
    callengine::audio::resample::resample(&samples, from, rate)
        .iter()
        .map(|s| (s * 32_767.0).clamp(-32_768.0, 32_767.0) as i16)
        .collect()
}

/// 16 kHz s16le speech from espeak-ng, resampled with the engine's band-limited resampler.
pub fn speech_pcm(text: &str) -> Vec<u8> {
    speech_pcm_at(text, 170)
}

/// Like [`speech_pcm`], at `wpm` words per minute.
pub fn speech_pcm_at(text: &str, wpm: u32) -> Vec<u8> {
    let speed = wpm.to_string();
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", speed.as_str(), "--stdout", text])
        .output()
        .expect("espeak-ng is installed (apt-get install espeak-ng)");
    assert!(out.status.success(), "espeak-ng failed");
    let (rate, samples) = parse_wav(&out.stdout);
    let samples: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32_768.0).collect();
    callengine::audio::resample::resample(&samples, rate, 16_000)
        .iter()
        .map(|s| (s * 32_767.0).clamp(-32_768.0, 32_767.0) as i16)
        .flat_map(i16::to_le_bytes)
        .collect()
}

/// 100 ms of a 16 kHz test tone (s16le); the scripted provider's fixed mode ignores content.
pub fn tone() -> Vec<u8> {
    (0..1600)
        .map(|i| ((i as f64 * 0.3).sin() * 3000.0) as i16)
        .flat_map(i16::to_le_bytes)
        .collect()
}

/// `millis` of digital silence at 16 kHz.
pub fn silence(millis: usize) -> Vec<u8> {
    vec![0; millis * 32]
}

fn parse_wav(bytes: &[u8]) -> (u32, Vec<i16>) {
    assert_eq!(&bytes[0..4], b"RIFF");
    let mut pos = 12;
    let mut rate = 0;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let mut len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().unwrap());
        } else if id == b"data" {
            // espeak-ng writes 0xFFFFFFFF-ish lengths when streaming to stdout.
            len = len.min(bytes.len() - body);
            let samples = bytes[body..body + len]
                .chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]]))
                .collect();
            return (rate, samples);
        }
        pos = body + len + (len & 1);
    }
    panic!("no data chunk in WAV");
}
