//! The post-call pipeline end to end: a call ends → job → recording fetched from a local HTTP
//! server → transcribed by local Whisper (espeak-ng speech) → summary and fields extracted →
//! `call.completed` delivered once to a local receiver, whose Standard Webhooks signature is
//! checked here with the hmac crate directly. Faults: recording 404 / corrupt / timeout,
//! receiver down then up, workers racing, a worker dying mid-job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use callengine::store::{
    CallCompletion, CallStatus, Direction, NewCall, NewTenant, NewTurn, Protocol, RecordingOutcome,
    RecordingUpdate, Secret, Store, TurnSource, JOB_KIND_POSTCALL, POSTCALL_PROCESSED,
    POSTCALL_WAITING,
};
use common::voice::TestApp;
use common::Backend;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SENTENCE: &str = "My heating is broken, please send someone to Boston on Tuesday afternoon.";

/// A request a local server received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Bodies a server answers in turn, per path.
type Replies = Arc<Mutex<Vec<(String, VecDeque<Vec<u8>>)>>>;

/// A tiny HTTP server: answers each request with the next queued status (default 200) and
/// `files[path]` as the body; `/slow…` never answers.
struct Server {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    /// Bodies answered in turn for a path before its file.
    replies: Replies,
}

impl Server {
    fn start(files: Vec<(String, Vec<u8>)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let statuses: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let replies: Replies = Arc::default();
        let (log, queue, queued) = (received.clone(), statuses.clone(), replies.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (log, queue, files, queued) =
                    (log.clone(), queue.clone(), files.clone(), queued.clone());
                std::thread::spawn(move || {
                    let mut raw = Vec::new();
                    let mut buf = [0u8; 8192];
                    let (head_end, length) = loop {
                        let Ok(n) = stream.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        raw.extend_from_slice(&buf[..n]);
                        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&raw[..at]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (at + 4, length);
                        }
                    };
                    while raw.len() < head_end + length {
                        let Ok(n) = stream.read(&mut buf) else { return };
                        if n == 0 {
                            break;
                        }
                        raw.extend_from_slice(&buf[..n]);
                    }
                    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
                    let mut lines = head.lines();
                    let path = lines
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                        .collect();
                    log.lock().unwrap().push(Received {
                        path: path.clone(),
                        headers,
                        body: raw[head_end..].to_vec(),
                    });
                    if path.starts_with("/slow") {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    let next = queued
                        .lock()
                        .unwrap()
                        .iter_mut()
                        .find(|(p, _)| *p == path)
                        .and_then(|(_, q)| q.pop_front());
                    let body = next.or_else(|| {
                        files
                            .iter()
                            .find(|(p, _)| *p == path)
                            .map(|(_, b)| b.clone())
                    });
                    let status = match &body {
                        _ if path.starts_with("/fail") => 500,
                        None if path.starts_with("/rec") => 404,
                        _ => queue.lock().unwrap().pop_front().unwrap_or(200),
                    };
                    let body = body.unwrap_or_default();
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = stream.write_all(&body);
                });
            }
        });
        Self {
            port,
            received,
            statuses,
            replies,
        }
    }

    fn reply_in_turn(&self, path: &str, bodies: Vec<Vec<u8>>) {
        self.replies
            .lock()
            .unwrap()
            .push((path.to_string(), bodies.into_iter().collect()));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, prefix: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn model_dir() -> std::path::PathBuf {
    common::whisper_model_dir()
}

fn speech_wav(text: &str) -> Vec<u8> {
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "--stdout", text])
        .output()
        .expect("espeak-ng is installed");
    // espeak's stdout WAV has open-ended sizes; fix them for a strict reader.
    let mut wav = out.stdout;
    let data_at = wav.windows(4).position(|w| w == b"data").unwrap();
    let data_len = (wav.len() - data_at - 8) as u32;
    wav[data_at + 4..data_at + 8].copy_from_slice(&data_len.to_le_bytes());
    let riff_len = (wav.len() - 8) as u32;
    wav[4..8].copy_from_slice(&riff_len.to_le_bytes());
    wav
}

async fn app(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let model = model_dir().display().to_string();
    let mut settings = vec![
        ("CALLENGINE_POSTCALL__WORKERS", "1"),
        ("CALLENGINE_POSTCALL__WEBHOOK_WORKERS", "1"),
        ("CALLENGINE_POSTCALL__POLL_MS", "50"),
        ("CALLENGINE_POSTCALL__RETRY_BASE_MS", "100"),
        ("CALLENGINE_POSTCALL__RETRY_MAX_MS", "300"),
        ("CALLENGINE_POSTCALL__RECORDING_TIMEOUT_SECS", "1"),
        ("CALLENGINE_POSTCALL__WEBHOOK_RETRY_SECS", "0.2,0.2,0.2"),
    ];
    let owned: Vec<(&str, String)> = vec![("CALLENGINE_STT__WHISPER__MODEL_DIR", model)];
    let mut all: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.append(&mut settings);
    all.extend_from_slice(extra);
    TestApp::start(backend, &all).await
}

async fn tenant(store: &Store, webhook_url: Option<String>) -> Uuid {
    store
        .insert_tenant(&NewTenant {
            name: format!("postcall-{}", Uuid::new_v4()),
            webhook_url,
            webhook_secret: Some(Secret::new(SECRET)),
            cost_per_second_micros: 1_000,
            postcall_config: Some(json!({
                "cities": ["Boston", "Denver"],
                "service_categories": ["heating", "plumbing"],
                "agent_name": "Ava"
            })),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id
}

/// An ended call with one realtime turn and, optionally, a recording URL.
async fn ended_call(store: &Store, tenant_id: Uuid, recording: Option<String>) -> Uuid {
    let external = format!("CA{}", Uuid::new_v4().simple());
    let (call, _) = store
        .create_or_link_call(&NewCall {
            id: None,
            tenant_id,
            campaign_id: None,
            lead_id: Some(Uuid::new_v4()),
            phone_number: Some("+14155550100".into()),
            external_id: Some(external.clone()),
            protocol: Protocol::Twilio,
            direction: Direction::Inbound,
            started_at: chrono::Utc::now() - chrono::Duration::seconds(20),
            media_metadata: None,
        })
        .await
        .unwrap();
    store
        .append_turns(
            call.id,
            &[NewTurn {
                key: None,
                speaker: "contact".into(),
                speaker_label: None,
                text: "my heating is broken in denver".into(),
                is_final: true,
                start_ms: Some(0),
                end_ms: Some(2_000),
                confidence: None,
                source: TurnSource::Realtime,
            }],
        )
        .await
        .unwrap();
    if let Some(url) = &recording {
        store
            .record_recording(&RecordingUpdate {
                external_id: external.clone(),
                protocol: Protocol::Twilio,
                recording_id: "RE1".into(),
                recording_url: Some(url.clone()),
                status: "completed".into(),
                duration_secs: Some(20),
                tenant_id: call.tenant_id,
                phone_number: None,
            })
            .await
            .unwrap();
    }
    store
        .complete_call(
            call.id,
            &CallCompletion {
                status: CallStatus::Completed,
                ended_at: chrono::Utc::now(),
                end_reason: "caller_hangup".into(),
                pending_partial: None,
                dtmf: None,
                recording_url: None,
            },
        )
        .await
        .unwrap();
    call.id
}

async fn wait_for<F: Fn() -> bool>(what: &str, seconds: u64, done: F) {
    for _ in 0..seconds * 20 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn job_status(store: &Store, call_id: Uuid) -> (String, i32) {
    let jobs = store.list_jobs_for_call(call_id).await.unwrap();
    let job = jobs.iter().find(|j| j.kind == JOB_KIND_POSTCALL).unwrap();
    (job.status.clone(), job.attempts)
}

/// The Standard Webhooks check, written here from the specification.
fn verify(received: &Received) -> Value {
    let header = |name: &str| {
        received
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        signature.split(' ').any(|s| s == expected),
        "signature {signature} != {expected}"
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "timestamp {timestamp} is current");
    serde_json::from_slice(&received.body).unwrap()
}

async fn recording_to_signed_webhook(backend: Backend) {
    let server = Server::start(vec![("/rec/call.wav".into(), speech_wav(SENTENCE))]);
    let app = app(backend, &[]).await;
    let store = app.store();
    let tenant_id = tenant(store, Some(server.url("/hook"))).await;
    let call_id = ended_call(store, tenant_id, Some(server.url("/rec/call.wav"))).await;
    let hooks = || server.hits("/hook").len();
    wait_for("the webhook", 90, || hooks() >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hooks(), 1, "exactly one webhook");
    let payload = verify(&server.hits("/hook")[0]);

    let call = store.get_call(call_id).await.unwrap().unwrap();
    let offline = call.offline_transcript.clone().unwrap();
    // Stored as an `offline` turn after the realtime one, too.
    let turns = store.list_turns(call_id).await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        (turns[1].seq, turns[1].source, turns[1].text.as_str()),
        (2, TurnSource::Offline, offline.as_str())
    );
    let lower = offline.to_lowercase();
    // tiny.en hears this espeak sentence as "My healing is broken. Please send someone to
    // master on Tuesday afternoon." with greedy decoding; these words survive either way.
    for word in ["broken", "send", "someone", "tuesday", "afternoon"] {
        assert!(lower.contains(word), "{word} in {offline:?}");
    }
    // The payload is the database row.
    assert_eq!(payload["event_type"], "call.completed");
    assert_eq!(payload["call_id"], call_id.to_string());
    assert_eq!(payload["tenant_id"], tenant_id.to_string());
    assert_eq!(payload["lead_id"], call.lead_id.unwrap().to_string());
    assert_eq!(payload["phone"], "+14155550100");
    assert_eq!(payload["transcript"], offline);
    assert_eq!(payload["transcript_source"], "offline");
    assert_eq!(payload["summary"], call.summary.clone().unwrap());
    assert_eq!(payload["duration_sec"], call.duration_seconds.unwrap());
    assert_eq!(payload["agent_name"], "Ava");
    assert_eq!(payload["direction"], "inbound");
    let fields = call.extracted_fields.clone().unwrap();
    assert_eq!(payload["city"], fields["city"]["value"]);
    assert_eq!(payload["service_category"], "heating");
    assert_eq!(
        payload["city"], "Denver",
        "the realtime contact turn names Denver first"
    );
    assert_eq!(job_status(store, call_id).await.0, "done");
    let deliveries = store.deliveries_for_call(call_id).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, "delivered");
    assert_eq!(
        server.hits("/hook")[0]
            .headers
            .iter()
            .find(|(k, _)| k == "webhook-id")
            .unwrap()
            .1,
        deliveries[0].event_id
    );
    app.stop().await;
}

async fn bad_recordings_end_dead_and_the_webhook_still_goes(backend: Backend) {
    let server = Server::start(vec![(
        "/rec/corrupt.wav".into(),
        b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk".to_vec(),
    )]);
    let app = app(backend, &[]).await;
    let store = app.store();
    let tenant_id = tenant(store, Some(server.url("/hook"))).await;
    let mut calls = Vec::new();
    for path in ["/rec/missing.wav", "/rec/corrupt.wav", "/slow/rec.wav"] {
        calls.push((
            path,
            ended_call(store, tenant_id, Some(server.url(path))).await,
        ));
    }
    let calls_first = calls[0].1;
    wait_for("three webhooks", 90, || server.hits("/hook").len() >= 3).await;
    for (path, call_id) in calls {
        let jobs = store.list_jobs_for_call(call_id).await.unwrap();
        let max = jobs[0].max_attempts;
        for _ in 0..100 {
            if job_status(store, call_id).await.0 == "dead" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, attempts) = job_status(store, call_id).await;
        assert_eq!(
            (status.as_str(), attempts),
            ("dead", max),
            "{path}: retried, then dead"
        );
        let call = store.get_call(call_id).await.unwrap().unwrap();
        let error = call.postcall_error.clone().unwrap();
        assert!(
            error.contains("404")
                || error.contains("corrupt")
                || error.contains("decode")
                || error.contains("fetch"),
            "{path}: {error}"
        );
        let hook = server
            .hits("/hook")
            .into_iter()
            .map(|r| verify(&r))
            .find(|p| p["call_id"] == call_id.to_string())
            .unwrap();
        assert_eq!(hook["transcript_source"], "realtime", "{path}");
        assert_eq!(
            hook["transcript"],
            "contact: my heating is broken in denver"
        );
        assert_eq!(hook["metadata"]["postcall_error"], error);
        assert_eq!(hook["city"], "Denver");
    }
    let (status, body) = common::http_request(
        app.port,
        "GET",
        "/api/v1/jobs?status=dead",
        Some(common::voice::TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let dead: Value = serde_json::from_str(&body).unwrap();
    let dead = dead["jobs"].as_array().unwrap();
    assert_eq!(dead.len(), 3, "dead jobs are visible through the API");
    assert!(dead.iter().all(|j| j["last_error"].is_string()));
    let max = store.list_jobs_for_call(calls_first).await.unwrap()[0].max_attempts as usize;
    assert_eq!(
        server.hits("/rec/missing.wav").len(),
        max,
        "the 404 was tried on every attempt"
    );
    app.stop().await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[actix_web::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[actix_web::test] async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

both_backends!(
    recording_to_signed_webhook,
    bad_recordings_end_dead_and_the_webhook_still_goes,
    racing_workers_do_each_job_once,
    an_expected_recording_holds_the_webhook_until_it_arrives,
    a_recording_after_the_webhook_is_sent_as_call_updated,
);

/// The carrier's recording callback for an ended call (what the Twilio/Vonage routes store).
async fn recording_arrives(store: &Store, call_id: Uuid, url: String) -> RecordingOutcome {
    let call = store.get_call(call_id).await.unwrap().unwrap();
    store
        .record_recording(&RecordingUpdate {
            external_id: call.external_id.clone().unwrap(),
            protocol: Protocol::Twilio,
            recording_id: format!("RE{}", Uuid::new_v4().simple()),
            recording_url: Some(url),
            status: "completed".into(),
            duration_secs: Some(20),
            tenant_id: call.tenant_id,
            phone_number: None,
        })
        .await
        .unwrap()
}

/// Finding 3, in the real order: the call ends → the webhook is held while the recording is
/// expected → the recording callback → the offline transcript → one `call.completed` with it.
async fn an_expected_recording_holds_the_webhook_until_it_arrives(backend: Backend) {
    let server = Server::start(vec![("/rec/late.wav".into(), speech_wav(SENTENCE))]);
    let app = app(
        backend,
        &[("CALLENGINE_POSTCALL__RECORDING_WAIT_SECS", "120")],
    )
    .await;
    let store = app.store();
    // The tenant's carrier records every call: its webhooks wait for the recording.
    let tenant_id = store
        .insert_tenant(&NewTenant {
            name: format!("postcall-{}", Uuid::new_v4()),
            webhook_url: Some(server.url("/hook")),
            webhook_secret: Some(Secret::new(SECRET)),
            postcall_config: Some(json!({ "agent_name": "Ava", "expect_recording": true })),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let call_id = ended_call(store, tenant_id, None).await;
    let call = store.get_call(call_id).await.unwrap().unwrap();
    assert_eq!(call.postcall_status.as_deref(), Some(POSTCALL_WAITING));
    // Workers poll every 50 ms: two seconds without a webhook means it is being held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.hits("/hook").is_empty(),
        "no webhook before the recording"
    );
    assert_eq!(job_status(store, call_id).await.0, "queued");
    let outcome = recording_arrives(store, call_id, server.url("/rec/late.wav")).await;
    assert!(outcome.job_enqueued, "the waiting job was woken");
    wait_for("the webhook", 90, || !server.hits("/hook").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hooks = server.hits("/hook");
    assert_eq!(hooks.len(), 1, "exactly one webhook");
    let payload = verify(&hooks[0]);
    assert_eq!(payload["event_type"], "call.completed");
    assert_eq!(payload["transcript_source"], "offline");
    let call = store.get_call(call_id).await.unwrap().unwrap();
    assert_eq!(
        payload["transcript"],
        call.offline_transcript.clone().unwrap()
    );
    assert!(call
        .offline_transcript
        .unwrap()
        .to_lowercase()
        .contains("tuesday"));
    assert_eq!(call.postcall_status.as_deref(), Some(POSTCALL_PROCESSED));
    assert!(call.processed_at.is_some());
    app.stop().await;
}

/// A recording that comes after `call.completed` went out: the pipeline runs again and sends
/// `call.updated` (a new event id, the same call id) with the offline transcript.
async fn a_recording_after_the_webhook_is_sent_as_call_updated(backend: Backend) {
    let server = Server::start(vec![("/rec/later.wav".into(), speech_wav(SENTENCE))]);
    let app = app(backend, &[]).await;
    let store = app.store();
    let tenant_id = tenant(store, Some(server.url("/hook"))).await;
    let call_id = ended_call(store, tenant_id, None).await;
    wait_for("call.completed", 60, || !server.hits("/hook").is_empty()).await;
    let completed = verify(&server.hits("/hook")[0]);
    assert_eq!(completed["event_type"], "call.completed");
    assert_eq!(completed["transcript_source"], "realtime");
    let outcome = recording_arrives(store, call_id, server.url("/rec/later.wav")).await;
    assert!(outcome.job_enqueued, "the finished job runs again");
    wait_for("call.updated", 90, || server.hits("/hook").len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hooks = server.hits("/hook");
    assert_eq!(
        hooks.len(),
        2,
        "call.completed once, then call.updated once"
    );
    let updated = verify(&hooks[1]);
    assert_eq!(updated["event_type"], "call.updated");
    assert_eq!(updated["call_id"], call_id.to_string());
    assert_eq!(updated["transcript_source"], "offline");
    let id = |r: &Received| {
        r.headers
            .iter()
            .find(|(k, _)| k == "webhook-id")
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(id(&hooks[0]), id(&hooks[1]), "a new event id");
    let deliveries = store.deliveries_for_call(call_id).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    app.stop().await;
}

#[actix_web::test]
async fn receiver_down_then_up_gets_it_once_after_retries_and_dead_can_be_resent() {
    let server = Server::start(Vec::new());
    server.statuses.lock().unwrap().extend([503, 500]);
    let app = app(Backend::Sqlite, &[]).await;
    let store = app.store();
    let tenant_id = tenant(store, Some(server.url("/hook"))).await;
    let call_id = ended_call(store, tenant_id, None).await;
    wait_for("delivery", 30, || {
        server.received.lock().unwrap().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let hits = server.hits("/hook");
    assert_eq!(
        hits.len(),
        3,
        "two failures, then success, then nothing more"
    );
    let ids: Vec<String> = hits
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "webhook-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "webhook-id stable across retries"
    );
    for hit in &hits {
        verify(hit);
    }
    let delivery = &store.deliveries_for_call(call_id).await.unwrap()[0];
    assert_eq!(
        (delivery.status.as_str(), delivery.attempts),
        ("delivered", 3)
    );

    // A receiver that stays down: dead after the schedule, then re-sent by hand.
    server.statuses.lock().unwrap().extend([500, 500, 500, 500]);
    let second = ended_call(store, tenant_id, None).await;
    wait_for("dead delivery", 30, || server.hits("/hook").len() >= 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivery = &store.deliveries_for_call(second).await.unwrap()[0];
    assert_eq!((delivery.status.as_str(), delivery.attempts), ("dead", 4));
    // Visible through the API and the metrics, and re-sent through the API.
    let token = common::voice::TOKEN;
    let (status, body) = common::http_request(
        app.port,
        "GET",
        &format!("/api/v1/calls/{second}/deliveries"),
        Some(token),
    )
    .await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["deliveries"][0]["status"], "dead");
    assert_eq!(listed["deliveries"][0]["last_response_status"], 500);
    let (_, metrics) = common::metrics(app.port).await;
    for line in [
        "callengine_webhook_deliveries_total{outcome=\"dead\"} 1",
        "callengine_webhook_deliveries_total{outcome=\"delivered\"} 1",
        "callengine_webhook_deliveries_total{outcome=\"retry\"} 5",
        "callengine_postcall_jobs_total{outcome=\"done\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let resend = format!("/api/v1/deliveries/{}/resend", delivery.id);
    let (status, _) = common::http_request(app.port, "POST", &resend, None).await;
    assert_eq!(status, 401, "the API needs the token");
    let (status, body) = common::http_request(app.port, "POST", &resend, Some(token)).await;
    assert_eq!(status, 202, "{body}");
    wait_for("resent delivery", 30, || server.hits("/hook").len() >= 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivery = &store.deliveries_for_call(second).await.unwrap()[0];
    assert_eq!(delivery.status, "delivered");
    app.stop().await;
}

async fn racing_workers_do_each_job_once(backend: Backend) {
    let app = app(
        backend,
        &[
            ("CALLENGINE_POSTCALL__WORKERS", "4"),
            ("CALLENGINE_POSTCALL__WEBHOOK_WORKERS", "0"),
            ("CALLENGINE_POSTCALL__POLL_MS", "10"),
        ],
    )
    .await;
    let store = app.store();
    let tenant_id = tenant(store, None).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        calls.push(ended_call(store, tenant_id, None).await);
    }
    for call_id in &calls {
        for _ in 0..400 {
            if job_status(store, *call_id).await.0 == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            job_status(store, *call_id).await,
            ("done".to_string(), 1),
            "claimed once, done once"
        );
        assert!(store
            .get_call(*call_id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .is_some());
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_dead_workers_job_is_rescued_when_its_lease_expires() {
    let app = app(
        Backend::Postgres,
        &[
            ("CALLENGINE_POSTCALL__WORKERS", "0"),
            ("CALLENGINE_POSTCALL__WEBHOOK_WORKERS", "0"),
        ],
    )
    .await;
    let store = app.store().clone();
    let tenant_id = tenant(&store, None).await;
    let call_id = ended_call(&store, tenant_id, None).await;
    // A worker claims the job with a short lease and dies.
    let job = store
        .claim_job(
            JOB_KIND_POSTCALL,
            "worker-that-dies",
            Duration::from_millis(300),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.call_id, Some(call_id));
    assert!(
        store
            .claim_job(JOB_KIND_POSTCALL, "other", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "leased: nobody else takes it"
    );
    // A live worker starts; once the lease lapses it takes the job over.
    let handle = start_workers(&store, "rescuer", (1, 0), 50);
    for _ in 0..200 {
        if job_status(&store, call_id).await.0 == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(job_status(&store, call_id).await, ("done".to_string(), 2));
    // The dead worker's late report changes nothing.
    let late = store
        .finish_job(
            job.id,
            "worker-that-dies",
            &callengine::store::JobResult::Done,
        )
        .await
        .unwrap();
    assert_eq!(late, "not_owned");
    handle.stop();
    app.stop().await;
}

/// A pipeline of `(job workers, webhook senders)` on `store`, polling every `poll_ms`.
fn start_workers(
    store: &callengine::store::Store,
    node: &str,
    (workers, webhook_workers): (usize, usize),
    poll_ms: u64,
) -> callengine::postcall::PostcallHandle {
    callengine::postcall::Pipeline::start(
        store.clone(),
        callengine::postcall::PostcallSettings {
            workers,
            webhook_workers,
            poll_ms,
            ..Default::default()
        },
        callengine::postcall::Workplace {
            node: node.into(),
            data_dir: tempfile::tempdir().unwrap().keep(),
            model_dir: None,
        },
        Default::default(),
        lenient_egress(),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap()
}

/// Idle workers wait `poll_ms` between claims; stopping must not wait that out: the one
/// cancellation token wakes them, and the join sees every worker return.
#[actix_web::test]
async fn stopping_the_workers_wakes_idle_ones_and_joins_them() {
    let db = common::TestDb::new(Backend::Sqlite).await;
    let handle = start_workers(&db.store, "idle-node", (2, 1), 600_000);
    // Let every worker reach its idle wait (nothing to claim).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        handle.stop_and_join(Duration::from_secs(30)).await,
        "idle workers must return once cancelled, not after their 10-minute poll"
    );
}

fn chat(content: &str) -> Vec<u8> {
    json!({"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    ]})
    .to_string()
    .into_bytes()
}

#[actix_web::test]
async fn openai_compatible_transcription_and_chat_with_a_malformed_answer_retried() {
    let spoken = "Hi, I need a plumber in Denver on Friday morning. My name is Ann Lee.";
    let server = Server::start(vec![
        ("/rec/a.wav".into(), speech_wav("hello")),
        (
            "/v1/audio/transcriptions".into(),
            json!({ "text": spoken }).to_string().into_bytes(),
        ),
    ]);
    let good = json!({"summary": "Ann needs a plumber in Denver on Friday morning.", "city": "Denver",
        "service_category": "plumbing", "preferred_time": "Friday morning", "customer_name": "Ann Lee",
        "confidence": 0.92}).to_string();
    server.reply_in_turn(
        "/v1/chat/completions",
        vec![chat("Sure! Here is the JSON you asked for"), chat(&good)],
    );
    let app = app(Backend::Sqlite, &[]).await;
    let store = app.store();
    let base = server.url("");
    let tenant_id = store
        .insert_tenant(&NewTenant {
            name: format!("openai-{}", Uuid::new_v4()),
            webhook_url: Some(server.url("/hook")),
            webhook_secret: Some(Secret::new(SECRET)),
            postcall_config: Some(json!({
                "offline_stt": {"url": format!("{base}/v1"), "model": "whisper-1", "api_key": "sk-test"},
                "llm": {"url": base, "model": "small-model", "api_key": "sk-test"}
            })),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let call_id = ended_call(store, tenant_id, Some(server.url("/rec/a.wav"))).await;
    wait_for("the webhook", 60, || !server.hits("/hook").is_empty()).await;
    let call = store.get_call(call_id).await.unwrap().unwrap();
    assert_eq!(call.offline_transcript.as_deref(), Some(spoken));
    let fields = call.extracted_fields.clone().unwrap();
    assert_eq!(fields["method"], "llm");
    assert_eq!(fields["city"]["value"], "Denver");
    assert_eq!(fields["customer_name"]["value"], "Ann Lee");
    assert_eq!(
        call.summary.as_deref(),
        Some("Ann needs a plumber in Denver on Friday morning.")
    );
    assert_eq!(
        server.hits("/v1/chat/completions").len(),
        2,
        "the malformed answer was asked again"
    );
    let upload = &server.hits("/v1/audio/transcriptions")[0];
    assert!(upload
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer sk-test"));
    let body = String::from_utf8_lossy(&upload.body);
    assert!(
        body.contains("name=\"model\"")
            && body.contains("whisper-1")
            && body.contains("filename=\"a.wav\"")
    );
    let chat_request: Value =
        serde_json::from_slice(&server.hits("/v1/chat/completions")[0].body).unwrap();
    assert_eq!(chat_request["response_format"]["type"], "json_schema");
    assert_eq!(chat_request["messages"][1]["content"], spoken);
    let payload = verify(&server.hits("/hook")[0]);
    assert_eq!(payload["city"], "Denver");
    assert_eq!(payload["preferred_time"], "Friday morning");
    assert_eq!(payload["transcript"], spoken);
    app.stop().await;
}

#[actix_web::test]
async fn a_failing_transcription_endpoint_ends_dead_with_the_realtime_transcript_sent() {
    let server = Server::start(vec![("/rec/b.wav".into(), speech_wav("hello"))]);
    let app = app(Backend::Postgres, &[]).await;
    let store = app.store();
    let tenant_id = store
        .insert_tenant(&NewTenant {
            name: format!("failing-{}", Uuid::new_v4()),
            webhook_url: Some(server.url("/hook")),
            webhook_secret: Some(Secret::new(SECRET)),
            postcall_config: Some(json!({"offline_stt": {"url": server.url("/fail")}})),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let call_id = ended_call(store, tenant_id, Some(server.url("/rec/b.wav"))).await;
    wait_for("the webhook", 60, || !server.hits("/hook").is_empty()).await;
    let payload = verify(&server.hits("/hook")[0]);
    assert_eq!(payload["transcript_source"], "realtime");
    assert!(payload["metadata"]["postcall_error"]
        .as_str()
        .unwrap()
        .contains("HTTP 500"));
    let jobs = store.list_jobs_for_call(call_id).await.unwrap();
    assert_eq!(jobs[0].status, "dead");
    assert_eq!(
        server.hits("/fail/v1/audio/transcriptions").len(),
        jobs[0].max_attempts as usize
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_engines_own_recording_is_transcribed_after_a_real_call() {
    use common::voice::{silence, speech_pcm_at, VoiceClient};
    let server = Server::start(Vec::new());
    let app = app(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__MODE", "energy")],
    )
    .await;
    let store = app.store();
    let tenant_id = store
        .insert_tenant(&NewTenant {
            name: format!("recorded-{}", Uuid::new_v4()),
            webhook_url: Some(server.url("/hook")),
            webhook_secret: Some(Secret::new(SECRET)),
            postcall_config: Some(json!({"record_calls": true, "cities": ["Boston"]})),
            media_open: true,
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let query = format!(
        "tenant_id={tenant_id}&campaign_id={}&lead_id={}",
        Uuid::new_v4(),
        Uuid::new_v4()
    );
    let mut audio = silence(300);
    audio.extend(speech_pcm_at(
        "I need a plumber in Boston on Tuesday afternoon.",
        140,
    ));
    audio.extend(silence(900));
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &query).await;
    let call_id = client.wait_started().await;
    client.send_pcm(&audio).await;
    client.wait_finals(1).await;
    client.close(1000).await;
    client.finished().await;
    wait_for("the webhook", 90, || !server.hits("/hook").is_empty()).await;
    let call = store.get_call(call_id).await.unwrap().unwrap();
    let url = call.recording_url.clone().unwrap();
    let path = url.strip_prefix("file://").expect("a local recording");
    let wav = callengine::audio::wav::parse(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!((wav.sample_rate, wav.channels), (16_000, 1));
    // The client pads its last frame to 20 ms; every frame it sent is in the file.
    assert_eq!(
        wav.samples.len() * 2,
        audio.len().div_ceil(640) * 640,
        "every frame recorded"
    );
    let offline = call.offline_transcript.clone().unwrap().to_lowercase();
    for word in ["plumber", "boston", "tuesday", "afternoon"] {
        assert!(offline.contains(word), "{word} in {offline:?}");
    }
    let payload = verify(&server.hits("/hook")[0]);
    assert_eq!(payload["transcript_source"], "offline");
    assert_eq!(payload["city"], "Boston");
    app.stop().await;
}

#[test]
fn mp3_and_mulaw_recordings_decode_and_transcribe() {
    use callengine::postcall::audio::decode_to_16k_mono;
    use callengine::stt::whisper::engine::WhisperEngine;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("s.wav");
    let text = "Could you send the invoice to my email address?";
    std::fs::write(&wav, speech_wav(text)).unwrap();
    let mp3 = dir.path().join("s.mp3");
    let status = std::process::Command::new("lame")
        .args(["--quiet", "-b", "32"])
        .arg(&wav)
        .arg(&mp3)
        .status()
        .expect("lame is installed (apt-get install lame)");
    assert!(status.success());
    let mut engine = WhisperEngine::load(&model_dir()).unwrap();
    let from_wav = decode_to_16k_mono(&std::fs::read(&wav).unwrap(), Some("wav")).unwrap();
    let from_mp3 = decode_to_16k_mono(&std::fs::read(&mp3).unwrap(), Some("mp3")).unwrap();
    // MP3 adds encoder delay and padding (a few tens of ms), nothing more.
    let diff = (from_mp3.len() as i64 - from_wav.len() as i64).abs();
    assert!(
        diff < 16_000 / 10,
        "{} vs {} samples",
        from_mp3.len(),
        from_wav.len()
    );
    let heard = engine.decode(&from_mp3, 5).unwrap().text.to_lowercase();
    for word in ["invoice", "email", "address"] {
        assert!(heard.contains(word), "{word} in {heard:?}");
    }
    // A μ-law WAV of the same speech (8 kHz, as telephony recorders write it).
    let samples: Vec<i16> = callengine::audio::resample::resample(&from_wav, 16_000, 8_000)
        .iter()
        .map(|s| (s * 32_767.0) as i16)
        .collect();
    let ulaw: Vec<u8> = samples
        .iter()
        .map(|s| {
            // G.711 μ-law encoder (the recorder's side).
            let mut v = i32::from(*s);
            let sign = if v < 0 {
                v = -v;
                0x80
            } else {
                0
            };
            v = v.min(32_635) + 0x84;
            let mut exponent = 7;
            while exponent > 0 && v & (0x4000 >> (7 - exponent)) == 0 {
                exponent -= 1;
            }
            !(sign | (exponent << 4) | ((v >> (exponent + 3)) & 0x0F)) as u8
        })
        .collect();
    let mut file = Vec::new();
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(38 + ulaw.len() as u32).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    file.extend_from_slice(&18u32.to_le_bytes());
    file.extend_from_slice(&7u16.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&8_000u32.to_le_bytes());
    file.extend_from_slice(&8_000u32.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&8u16.to_le_bytes());
    file.extend_from_slice(&0u16.to_le_bytes());
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(ulaw.len() as u32).to_le_bytes());
    file.extend_from_slice(&ulaw);
    let from_ulaw = decode_to_16k_mono(&file, Some("wav")).unwrap();
    let direct: Vec<f32> = callengine::audio::resample::resample(
        &samples
            .iter()
            .map(|s| f32::from(*s) / 32_768.0)
            .collect::<Vec<_>>(),
        8_000,
        16_000,
    );
    // μ-law keeps the 8 kHz PCM within its quantisation step (no decoder error); whether
    // tiny.en understands 8 kHz espeak is another matter (it mishears this sentence at 8 kHz,
    // μ-law or not, so that is not asserted here; see tests/telephony.rs for telephone speech).
    assert_eq!(from_ulaw.len(), direct.len());
    let worst = from_ulaw
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.05, "μ-law decode differs from PCM by {worst}");
}

/// The egress policy of tests whose stand-in servers listen on loopback over http.
fn lenient_egress() -> callengine::egress::EgressPolicy {
    callengine::egress::EgressPolicy::from_settings(&callengine::egress::EgressSettings {
        allow_http: true,
        allow_private: true,
        recording_hosts: "127.0.0.1,localhost".into(),
        ..Default::default()
    })
}
