//! The operator surface (issue 13, findings 7, 11 and 12): `/metrics` needs a token once one is
//! configured and its label sets do not grow with what clients send; the event feed is
//! delivered per tenant, so one tenant's burst does not make another tenant's reader lose its
//! own `turn.final`; each API token holds a bounded number of event streams.

use std::time::Duration;

use callengine::store::{NewTenant, Secret};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::common::voice::{tone, TestApp, VoiceClient, TOKEN};
use crate::common::{http_request, Backend};

on_both_backends!(
    a_tenants_burst_does_not_make_another_tenants_reader_lose_its_finals,
    each_token_holds_a_bounded_number_of_event_streams,
    metric_label_sets_do_not_grow_with_tenant_ids,
);

/// A tenant whose media needs no token (so calls are admitted) with its own API token.
async fn open_tenant(app: &TestApp, api_token: &str) -> Uuid {
    app.store()
        .insert_tenant(&NewTenant {
            name: format!("ops-{}", Uuid::new_v4()),
            media_open: true,
            api_token: Some(Secret::new(api_token)),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id
}

fn api_token(name: &str) -> String {
    format!("{name}-api-token-{}", Uuid::new_v4().simple())
}

fn call_query(tenant_id: Uuid) -> String {
    format!(
        "tenant_id={tenant_id}&campaign_id={}&lead_id={}",
        Uuid::new_v4(),
        Uuid::new_v4()
    )
}

/// One `GET /api/v1/events` over a raw socket: while the test does not read it, the server can
/// write only as much as the socket buffers hold, which is what a slow reader looks like.
struct Feed {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What opening a feed answered.
enum Opened {
    Stream(Feed),
    Refused(u16, String),
}

impl Opened {
    fn stream(self) -> Feed {
        match self {
            Self::Stream(feed) => feed,
            Self::Refused(status, body) => panic!("feed refused: {status} {body}"),
        }
    }
}

async fn open_feed(port: u16, token: &str) -> Opened {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let rest = buf[head_end..].to_vec();
    if status != 200 {
        // A refusal carries a short JSON body with a length.
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = rest;
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        return Opened::Refused(status, String::from_utf8_lossy(&body).to_string());
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    Opened::Stream(Feed { stream, buf: rest })
}

impl Feed {
    /// Reads events (each `data:` line's JSON, `lagged` notices included) until `done` holds
    /// for the events so far, or panics after `limit`.
    async fn read_until(&mut self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            // Whole lines only; chunk-size lines of the chunked encoding are skipped.
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if let Some(data) = line.strip_prefix(b"data: ") {
                    let data = data.strip_suffix(b"\n").unwrap_or(data);
                    events.push(serde_json::from_slice(data).unwrap());
                }
            }
            if done(&events) {
                return events;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "feed went quiet; got {:?}",
                        events.iter().map(summary).collect::<Vec<_>>()
                    )
                })
                .unwrap();
            assert!(n > 0, "feed closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An event without its (long) text, for messages.
fn summary(event: &Value) -> String {
    format!(
        "{} {} seq={}",
        event["type"].as_str().unwrap_or_default(),
        event["tenant_id"].as_str().unwrap_or_default(),
        event["seq"]
    )
}

/// Turns of tenant B's call: fewer than the feed capacity (its own events never overflow its
/// channel), but far more bytes than the socket buffers between the engine and B's idle reader
/// hold, so B's stream is stalled on a write while tenant A bursts.
const B_TURNS: usize = 24;
/// Events a feed reader may fall behind by in this test (`api.event_feed_capacity`).
const FEED_CAPACITY: &str = "32";
/// Turn text: 512 KiB, so 24 turns are ~12 MB for B's reader, about three times what the kernel
/// and actix buffer for one idle loopback connection (~4 MB measured: B's stream stalls after
/// ~16 events of 256 KiB).
const TURN_TEXT_BYTES: usize = 512 * 1024;
/// Tenant A's burst: more events than the capacity.
const A_CALLS: usize = 24;

async fn a_tenants_burst_does_not_make_another_tenants_reader_lose_its_finals(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.txt");
    // Distinct lines: a final repeating the previous one is dropped as a replay.
    let lines: String = (0..4)
        .map(|i| format!("line {i} {}\n", "word ".repeat(TURN_TEXT_BYTES / 5)))
        .collect();
    std::fs::write(&script, lines).unwrap();
    let script = script.display().to_string();
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_API__EVENT_FEED_CAPACITY", FEED_CAPACITY),
            ("CALLENGINE_STT__SCRIPTED__SCRIPT_FILE", &script),
            ("CALLENGINE_STT__SCRIPTED__TURN_MS", "100"),
        ],
    )
    .await;
    let (token_a, token_b) = (api_token("a"), api_token("b"));
    let a = open_tenant(&app, &token_a).await;
    let b = open_tenant(&app, &token_b).await;

    // B's reader subscribes and then does not read for a while.
    let mut b_feed = open_feed(app.port, &token_b).await.stream();

    // B's call: every turn is committed (the client has its `final`, so the feed event was
    // published), far more than B's idle socket can take, so B's stream is stalled.
    let mut call_b = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query(b)).await;
    let id_b = call_b.wait_started().await;
    call_b.send_audio(B_TURNS as u64 * 100, &tone()).await;
    call_b.wait_finals(B_TURNS).await;

    // Tenant A bursts: many calls at once, each started and ended (two events each), while
    // B's reader is behind.
    let port = app.port;
    futures_util::future::join_all((0..A_CALLS).map(|_| async move {
        let mut call_a = VoiceClient::connect(port, Uuid::new_v4(), &call_query(a)).await;
        call_a.wait_started().await;
        call_a.close(1000).await;
        call_a.finished().await;
    }))
    .await;

    // B reads now: every one of its finals, in order, then its end; nothing lagged.
    call_b.close(1000).await;
    let log_b = call_b.finished().await;
    assert_eq!(log_b.finals.len(), B_TURNS);
    let id = id_b.to_string();
    let events = b_feed
        .read_until(Duration::from_secs(60), |events| {
            events
                .iter()
                .any(|e| e["type"] == "lagged" || (e["type"] == "call.ended" && e["call_id"] == id))
        })
        .await;
    let kinds: Vec<String> = events.iter().map(summary).collect();
    assert!(
        events.iter().all(|e| e["type"] != "lagged"),
        "B's reader lagged behind A's burst: {kinds:?}"
    );
    assert!(
        events.iter().all(|e| e["tenant_id"] == b.to_string()),
        "{kinds:?}"
    );
    let seqs: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "turn.final")
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=B_TURNS as i64).collect::<Vec<_>>(), "{kinds:?}");
    assert_eq!(events[0]["type"], "call.started");
    app.stop().await;
}

async fn each_token_holds_a_bounded_number_of_event_streams(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[("CALLENGINE_API__MAX_EVENT_SUBSCRIBERS_PER_TOKEN", "2")],
    )
    .await;
    let (token_a, token_b) = (api_token("a"), api_token("b"));
    open_tenant(&app, &token_a).await;
    open_tenant(&app, &token_b).await;

    let first = open_feed(app.port, &token_a).await.stream();
    let _second = open_feed(app.port, &token_a).await.stream();
    match open_feed(app.port, &token_a).await {
        Opened::Refused(429, body) => {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["limit"], 2, "{body}");
            let error = body["error"].as_str().unwrap();
            assert!(
                error.contains("api.max_event_subscribers_per_token") && error.contains('2'),
                "{error}"
            );
        }
        Opened::Refused(status, body) => panic!("expected 429, got {status} {body}"),
        Opened::Stream(_) => panic!("a third stream for one token was accepted"),
    }
    // The limit is per token: another tenant's token and the admin token have their own.
    let _b = open_feed(app.port, &token_b).await.stream();
    let _admin_1 = open_feed(app.port, TOKEN).await.stream();
    let _admin_2 = open_feed(app.port, TOKEN).await.stream();
    assert!(matches!(
        open_feed(app.port, TOKEN).await,
        Opened::Refused(429, _)
    ));

    // A closed stream frees its slot (promptly: the server must notice the client's close,
    // not wait for a keep-alive write to fail).
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        match open_feed(app.port, &token_a).await {
            Opened::Stream(feed) => {
                reopened = Some(feed);
                break;
            }
            Opened::Refused(429, _) => tokio::time::sleep(Duration::from_millis(100)).await,
            Opened::Refused(status, body) => panic!("{status} {body}"),
        }
    }
    assert!(reopened.is_some(), "the closed stream's slot was not freed");
    app.stop().await;
}

#[actix_web::test]
async fn metrics_need_a_token_once_an_admin_token_is_set() {
    // TestApp sets an admin token.
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let scrape = |token: Option<&'static str>| http_request(app.port, "GET", "/metrics", token);
    let (status, body) = scrape(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("callengine_"), "{body}");
    assert_eq!(scrape(Some("wrong-token")).await.0, 401);
    assert_eq!(scrape(Some("")).await.0, 401);
    let (status, body) = scrape(Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body.contains("callengine_turns_persisted_total"), "{body}");
    app.stop().await;

    // A dedicated scrape token works besides the admin token.
    let app = TestApp::start(
        Backend::Sqlite,
        &[(
            "CALLENGINE_API__METRICS_TOKEN",
            "scrape-token-0123456789abcdef",
        )],
    )
    .await;
    let scrape = |token: Option<&'static str>| http_request(app.port, "GET", "/metrics", token);
    assert_eq!(scrape(None).await.0, 401);
    assert_eq!(scrape(Some("scrape-token-0123456789abcdef")).await.0, 200);
    assert_eq!(scrape(Some(TOKEN)).await.0, 200);
    app.stop().await;
}

#[actix_web::test]
async fn metrics_stay_open_without_any_token_configured() {
    // The README's zero-config run: no admin token, no metrics token.
    let db = crate::common::TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("CALLENGINE_BIND", "127.0.0.1:0".to_string()),
        ("CALLENGINE_DATA_DIR", dir.path().display().to_string()),
        ("CALLENGINE_HTTP_WORKERS", "1".into()),
        ("CALLENGINE_DATABASE__URL", db.url_string.clone()),
        ("CALLENGINE_STT__PROVIDER", "scripted".into()),
        ("CALLENGINE_POSTCALL__WORKERS", "0".into()),
        ("CALLENGINE_POSTCALL__WEBHOOK_WORKERS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = callengine::Settings::load_from(None, env).unwrap();
    assert!(settings.api.admin_token.is_none());
    let app = callengine::Application::build(settings).await.unwrap();
    let (port, shutdown) = (app.port(), app.shutdown_handle());
    let server = actix_web::rt::spawn(app.run_until_stopped());
    let (status, body) = http_request(port, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("callengine_turns_persisted_total"), "{body}");
    shutdown.shutdown().await;
    server.await.unwrap().unwrap();
    db.cleanup().await;
}

/// Tries one `/ws/voice` call for `tenant_id`: connects (admission may refuse the upgrade or
/// close at once), sends audio, hangs up, and waits for the server's Close.
async fn attempt_call(port: u16, tenant_id: Uuid) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "ws://127.0.0.1:{port}/ws/voice/{}?{}",
        Uuid::new_v4(),
        call_query(tenant_id)
    );
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return; // refused before the upgrade
    };
    let _ = ws
        .send(Message::Binary(tone()[..3200].to_vec().into()))
        .await;
    let _ = ws.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        // The server's Close comes after the call is finished and counted.
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Every `callengine_*` series of a scrape, as `name{labels}` without the value.
fn series(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("callengine_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

async fn metric_label_sets_do_not_grow_with_tenant_ids(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let scrape = || async {
        let (status, text) = http_request(app.port, "GET", "/metrics", Some(TOKEN)).await;
        assert_eq!(status, 200);
        text
    };
    // One call of a real (open) tenant and one of an unknown tenant put every call family's
    // series in place.
    let known = open_tenant(&app, &api_token("known")).await;
    let mut warm = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query(known)).await;
    warm.wait_started().await;
    warm.send_audio(400, &tone()).await;
    warm.wait_finals(2).await;
    warm.close(1000).await;
    warm.finished().await;
    attempt_call(app.port, Uuid::new_v4()).await;
    let before = series(&scrape().await);

    // Many more: unknown tenant ids (what anyone can put in a URL) and registered tenants.
    let mut tenant_ids = Vec::new();
    for _ in 0..20 {
        let unknown = Uuid::new_v4();
        attempt_call(app.port, unknown).await;
        tenant_ids.push(unknown);
    }
    for _ in 0..5 {
        let tenant = open_tenant(&app, &api_token("many")).await;
        attempt_call(app.port, tenant).await;
        tenant_ids.push(tenant);
    }
    let text = scrape().await;
    let after = series(&text);
    let grown: Vec<&String> = after.difference(&before).collect();
    assert!(grown.is_empty(), "new series: {grown:?}");
    for id in tenant_ids.iter().chain([&known]) {
        assert!(!text.contains(&id.to_string()), "{id} is a label value");
    }
    assert!(!text.contains("tenant=\""), "{text}");
    app.stop().await;
}
