//! The operator API with admin and per-tenant tokens over real HTTP: scoping (a tenant's token
//! sees and acts on its own calls only), the call row with live figures, transcripts as JSON and
//! text, filters, and registering an expected call that a webhook conversation then links to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use callengine::store::{NewTenant, Secret};
use common::voice::{silence, tone, TestApp, VoiceClient, TOKEN};
use common::{http_post, http_request, Backend};
use serde_json::{json, Value};
use uuid::Uuid;

async fn tenant(app: &TestApp, token: &str) -> Uuid {
    app.store()
        .insert_tenant(&NewTenant {
            name: format!("api-{}", Uuid::new_v4()),
            api_token: Some(Secret::new(token)),
            media_open: true,
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id
}

fn query(tenant_id: Uuid) -> String {
    format!(
        "tenant_id={tenant_id}&campaign_id={}&lead_id={}",
        Uuid::new_v4(),
        Uuid::new_v4()
    )
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = http_request(app.port, "GET", path, token).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[actix_web::test]
async fn tenant_tokens_see_and_act_on_their_own_calls_only() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let a = tenant(&app, "token-a-0123456789").await;
    let b = tenant(&app, "token-b-0123456789").await;
    let mut call_a = VoiceClient::connect(app.port, Uuid::new_v4(), &query(a)).await;
    let id_a = call_a.wait_started().await;
    let mut call_b = VoiceClient::connect(app.port, Uuid::new_v4(), &query(b)).await;
    let id_b = call_b.wait_started().await;
    call_a.send_audio(400, &tone()).await;
    call_a.wait_finals(2).await;

    // The admin sees both; each tenant only its own.
    let (status, all) = get(&app, "/api/v1/calls", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(all["calls"].as_array().unwrap().len(), 2);
    let (_, only_a) = get(&app, "/api/v1/calls", Some("token-a-0123456789")).await;
    let ids: Vec<&str> = only_a["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id_a.to_string()]);
    let (_, filtered) = get(
        &app,
        &format!("/api/v1/calls?tenant_id={b}&state=live"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(filtered["calls"][0]["call_id"], id_b.to_string());
    assert_eq!(filtered["calls"].as_array().unwrap().len(), 1);

    // The row with its live figures; another tenant's call is not found; no token, no data.
    let (status, one) = get(
        &app,
        &format!("/api/v1/calls/{id_a}"),
        Some("token-a-0123456789"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["call"]["id"], id_a.to_string());
    assert_eq!(one["live"]["state"], "live");
    assert!(one["live"]["frames_in"].as_u64().unwrap() > 0);
    assert_eq!(
        get(
            &app,
            &format!("/api/v1/calls/{id_b}"),
            Some("token-a-0123456789")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(&app, &format!("/api/v1/calls/{id_a}"), None).await.0,
        401
    );
    assert_eq!(
        get(&app, &format!("/api/v1/calls/{id_a}"), Some("nope"))
            .await
            .0,
        401
    );
    assert_eq!(
        get(&app, "/api/v1/jobs", Some("token-a-0123456789"))
            .await
            .0,
        403,
        "admin only"
    );

    // Hang-up: not another tenant's call; one's own through the normal flush.
    let hang = |id: Uuid| format!("/api/v1/calls/{id}/hangup");
    assert_eq!(
        http_request(app.port, "POST", &hang(id_b), Some("token-a-0123456789"))
            .await
            .0,
        404
    );
    assert_eq!(
        http_request(app.port, "POST", &hang(id_a), Some("token-a-0123456789"))
            .await
            .0,
        202
    );
    let log = call_a.finished().await;
    assert_eq!(log.closes[0].0, 1000);

    // The transcript, as JSON and as text.
    let (status, transcript) = get(
        &app,
        &format!("/api/v1/calls/{id_a}/transcript"),
        Some("token-a-0123456789"),
    )
    .await;
    assert_eq!(status, 200);
    let turns = transcript["turns"].as_array().unwrap();
    assert!(turns.len() >= 2);
    assert_eq!(turns[0]["seq"], 1);
    let (status, text) = http_request(
        app.port,
        "GET",
        &format!("/api/v1/calls/{id_a}/transcript?format=text"),
        Some("token-a-0123456789"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), turns.len());
    assert!(text.starts_with("contact: "), "{text}");
    call_b.send_pcm(&silence(100)).await;
    call_b.close(1000).await;
    call_b.finished().await;
    app.stop().await;
}

#[actix_web::test]
async fn a_registered_call_is_linked_by_the_platforms_conversation() {
    let tenant_id = Uuid::new_v4();
    let id = tenant_id.to_string();
    let app = TestApp::start(
        Backend::Postgres,
        &[("CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID", id.as_str())],
    )
    .await;
    app.store()
        .insert_tenant(&NewTenant {
            id: Some(tenant_id),
            name: format!("reg-{tenant_id}"),
            api_token: Some(Secret::new("token-reg-0123456789")),
            webhooks_unsigned: true,
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let lead = Uuid::new_v4();
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    let body = json!({ "conversation_id": conversation, "lead_id": lead, "direction": "outbound" });
    let auth = "Bearer token-reg-0123456789".to_string();
    let (status, text) = http_post(
        app.port,
        "/api/v1/calls",
        "application/json",
        &[("Authorization", auth.as_str())],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let registered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(registered["call"]["tenant_id"], tenant_id.to_string());
    let call_id = registered["call"]["id"].as_str().unwrap().to_string();

    // The platform's first turn finds the registered call, and with it the lead.
    let turn = json!({ "conversation_id": conversation, "speaker": "user", "message": "hello", "timestamp": chrono::Utc::now().timestamp() });
    let (status, text) = http_post(
        app.port,
        "/webhooks/elevenlabs/transcription",
        "application/json",
        &[],
        turn.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let stored: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["call_id"], call_id);
    let (_, row) = get(
        &app,
        &format!("/api/v1/calls/{call_id}"),
        Some("token-reg-0123456789"),
    )
    .await;
    assert_eq!(row["call"]["lead_id"], lead.to_string());
    assert_eq!(row["call"]["direction"], "outbound");

    // The admin must name the tenant; a tenant cannot register for another one.
    let (status, text) = http_post(
        app.port,
        "/api/v1/calls",
        "application/json",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"{}",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("tenant_id"));
    let other = json!({ "tenant_id": Uuid::new_v4() });
    let (status, _) = http_post(
        app.port,
        "/api/v1/calls",
        "application/json",
        &[("Authorization", auth.as_str())],
        other.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[actix_web::test]
async fn call_metrics_follow_a_call_without_call_ids_as_labels() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let tenant_id = common::voice::OPEN_TENANT;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &query(tenant_id)).await;
    let call_id = client.wait_started().await;
    client.send_audio(400, &tone()).await;
    client.send_binary(vec![0u8; 641]).await;
    client.wait_finals(2).await;
    // No tenant label: label values never come from callers (docs/operations.md).
    let active = "callengine_calls_active{protocol=\"voice\"}".to_string();
    let (_, during) = common::metrics(app.port).await;
    assert_eq!(metric(&during, &active), Some(1.0), "{during}");
    client.close(1000).await;
    let log = client.finished().await;
    let (_, after) = common::metrics(app.port).await;
    assert_eq!(metric(&after, &active), Some(0.0));
    assert_eq!(
        metric(&after, "callengine_calls_started_total{protocol=\"voice\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after,
            "callengine_calls_ended_total{protocol=\"voice\",reason=\"caller_hangup\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after,
            "callengine_audio_frames_total{protocol=\"voice\",result=\"ok\"}"
        ),
        Some(4.0),
        "four 100 ms messages"
    );
    assert_eq!(
        metric(
            &after,
            "callengine_audio_frames_total{protocol=\"voice\",result=\"invalid\"}"
        ),
        Some(1.0)
    );
    // Every acknowledged final was a committed turn (the flushed partial is written by the
    // completion, not counted here).
    assert_eq!(
        metric(&after, "callengine_turns_persisted_total"),
        Some(log.finals.len() as f64)
    );
    assert!(metric(&after, "callengine_persist_lag_seconds_count").unwrap() >= 1.0);
    assert_eq!(
        metric(
            &after,
            "callengine_call_duration_seconds_count{protocol=\"voice\"}"
        ),
        Some(1.0)
    );
    assert!(
        !after.contains(&call_id.to_string()),
        "no call ids as labels"
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_dashboard_is_one_self_contained_page_reading_the_api() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let (status, page) = common::http_get(app.port, "/ops").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>callengine"));
    for used in [
        "/api/v1/calls",
        "/transcript",
        "/hangup",
        "/readyz",
        "Authorization",
    ] {
        assert!(page.contains(used), "the page uses {used}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("<script src"),
        "no CDN, no external resource"
    );
    app.stop().await;
}

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the OpenMetrics text format this engine writes: `# HELP`, `# TYPE` and
/// `# EOF` lines, and samples `name{label="value",…} number`. Returns the samples.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(valid_name(rest.split(' ').next().unwrap()), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("number in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        assert!(valid_name(k), "{line}");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(valid_name(&name), "{line}");
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            typed.contains(family) || typed.contains(&name),
            "untyped sample {line}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map_or(0.0, |s| s.2)
}

#[actix_web::test]
async fn metrics_parse_as_exposition_move_with_a_call_and_can_require_a_token() {
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_API__METRICS_TOKEN", "scrape-token")],
    )
    .await;
    let scrape = |token: Option<&'static str>| {
        let port = app.port;
        async move { http_request(port, "GET", "/metrics", token).await }
    };
    assert_eq!(scrape(None).await.0, 401);
    assert_eq!(scrape(Some("wrong")).await.0, 401);
    assert_eq!(
        scrape(Some(TOKEN)).await.0,
        200,
        "the admin token works too"
    );
    let (status, before) = scrape(Some("scrape-token")).await;
    assert_eq!(status, 200);
    let before = parse_exposition(&before);

    let mut client =
        VoiceClient::connect(app.port, Uuid::new_v4(), &query(common::voice::OPEN_TENANT)).await;
    client.wait_started().await;
    client.send_audio(400, &tone()).await;
    client.wait_finals(2).await;
    let during = parse_exposition(&scrape(Some("scrape-token")).await.1);
    client.close(1000).await;
    client.finished().await;
    let after = parse_exposition(&scrape(Some("scrape-token")).await.1);

    let ok = |s: &_| {
        sample(
            s,
            "callengine_audio_frames_total",
            &[("protocol", "voice"), ("result", "ok")],
        )
    };
    assert_eq!(ok(&before), 0.0);
    assert_eq!(ok(&during), 4.0);
    let active = |s: &_| sample(s, "callengine_calls_active", &[("protocol", "voice")]);
    assert_eq!(
        (active(&before), active(&during), active(&after)),
        (0.0, 1.0, 0.0)
    );
    let persisted = |s: &_| sample(s, "callengine_turns_persisted_total", &[]);
    assert!(persisted(&during) >= 2.0 && persisted(&after) >= persisted(&during));
    assert_eq!(
        sample(
            &after,
            "callengine_calls_ended_total",
            &[("reason", "caller_hangup")]
        ),
        1.0
    );
    app.stop().await;
}

/// Reads `/api/v1/events` on a thread: each `data:` line's JSON, in arrival order.
fn open_feed(port: u16, token: Option<&str>) -> Result<std::sync::mpsc::Receiver<Value>, u16> {
    let mut request = ureq::get(format!("http://127.0.0.1:{port}/api/v1/events"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::StatusCode(code)) => return Err(code),
        Err(err) => panic!("{err}"),
    };
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ") {
                if tx.send(serde_json::from_str(data).unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Events until `n` calls have ended.
fn events_until_ended(feed: &std::sync::mpsc::Receiver<Value>, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e: &&Value| e["type"] == "call.ended")
        .count()
        < n
    {
        let event = feed
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("feed went quiet after {events:?}"));
        events.push(event);
    }
    events
}

#[actix_web::test]
async fn the_event_feed_streams_each_tenants_calls_with_durable_finals() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let a = tenant(&app, "token-a-0123456789").await;
    let b = tenant(&app, "token-b-0123456789").await;
    let port = app.port;
    let (admin_feed, a_feed, anonymous) = tokio::task::spawn_blocking(move || {
        (
            open_feed(port, Some(TOKEN)),
            open_feed(port, Some("token-a-0123456789")),
            open_feed(port, None).map(|_| ()),
        )
    })
    .await
    .unwrap();
    assert_eq!(anonymous, Err(401));
    let (admin_feed, a_feed) = (admin_feed.unwrap(), a_feed.unwrap());

    let external_a = Uuid::new_v4();
    let mut call_a = VoiceClient::connect(app.port, external_a, &query(a)).await;
    let id_a = call_a.wait_started().await;
    let mut call_b = VoiceClient::connect(app.port, Uuid::new_v4(), &query(b)).await;
    let id_b = call_b.wait_started().await;
    call_a.send_audio(400, &tone()).await;
    call_a.send_audio(100, &silence(100)).await;
    call_b.send_audio(200, &tone()).await;
    call_a.close(1000).await;
    call_b.close(1000).await;
    let log_a = call_a.finished().await;
    call_b.finished().await;

    let events = tokio::task::spawn_blocking(move || events_until_ended(&admin_feed, 2))
        .await
        .unwrap();
    let of = |id: Uuid| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["call_id"] == id.to_string())
            .collect()
    };
    // Per call: started, the finals in order (each one the client also got as durable), ended.
    let a_events = of(id_a);
    assert_eq!(a_events[0]["type"], "call.started");
    assert_eq!(a_events[0]["protocol"], "voice");
    assert_eq!(a_events[0]["external_id"], external_a.to_string());
    let finals: Vec<(i64, String)> = a_events
        .iter()
        .filter(|e| e["type"] == "turn.final")
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let seqs: Vec<i64> = finals.iter().map(|f| f.0).collect();
    assert_eq!(seqs, (1..=log_a.finals.len() as i64).collect::<Vec<_>>());
    assert!(seqs.len() >= 2, "{a_events:?}");
    let texts: Vec<String> = finals.into_iter().map(|f| f.1).collect();
    let client_texts: Vec<String> = log_a.finals.iter().map(|f| f.1.clone()).collect();
    assert_eq!(texts, client_texts);
    let ended = a_events.last().unwrap();
    assert_eq!(ended["type"], "call.ended");
    assert_eq!(ended["turns"], seqs.len());
    // Every final on the feed is a stored final (the hang-up also stored the pending partial,
    // which is not a final and is not announced as one).
    let stored = app.store().list_turns(id_a).await.unwrap();
    let stored_finals: Vec<i64> = stored
        .iter()
        .filter(|t| t.is_final)
        .map(|t| i64::from(t.seq))
        .collect();
    assert_eq!(stored_finals, seqs);
    assert_eq!(of(id_b).last().unwrap()["type"], "call.ended");

    // Tenant a's feed carries its call only.
    let mine = tokio::task::spawn_blocking(move || events_until_ended(&a_feed, 1))
        .await
        .unwrap();
    assert!(
        mine.iter().all(|e| e["tenant_id"] == a.to_string()),
        "{mine:?}"
    );
    assert_eq!(mine.len(), a_events.len());
    app.stop().await;
}

#[actix_web::test]
async fn mailbox_depths_and_process_figures_are_reported() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let a = tenant(&app, "token-a-0123456789").await;
    let mut call = VoiceClient::connect(app.port, Uuid::new_v4(), &query(a)).await;
    call.wait_started().await;
    call.send_audio(400, &tone()).await;
    call.wait_finals(2).await;
    let (_, live) = get(&app, "/api/v1/calls", Some(TOKEN)).await;
    let mailbox = &live["calls"][0]["mailbox"];
    // Every frame sent was taken by the STT actor by now (finals came after them); at least
    // one frame waited at some point.
    assert_eq!(mailbox["stt_audio"], 0, "{live}");
    assert!(mailbox["stt_audio_peak"].as_i64().unwrap() >= 1, "{live}");
    assert_eq!(mailbox["persister"], 0);
    assert!(mailbox["outbound"].as_i64().is_some());
    let (status, metrics) = common::metrics(app.port).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("callengine_mailbox_depth{mailbox=\"stt_audio\"} 0"),
        "{metrics}"
    );
    for family in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    assert!(
        metrics.contains("callengine_actors{kind=\"stt\"} 1")
            && metrics.contains("callengine_actors{kind=\"call\"} 1"),
        "{metrics}"
    );
    // Audio not yet covered by a final is held for a replay after a reconnect, and shown: 100 ms
    // more (half a scripted turn, no final) is 5 frames of 640 bytes.
    call.send_audio(100, &tone()).await;
    let mut held = None;
    for _ in 0..100 {
        let (_, live) = get(&app, "/api/v1/calls", Some(TOKEN)).await;
        held = live["calls"][0]["replay_bytes"].as_i64();
        if held == Some(3_200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        held,
        Some(3_200),
        "replay buffer of the unacknowledged 100 ms"
    );
    let (_, metrics) = common::metrics(app.port).await;
    assert!(
        metrics.contains("callengine_replay_buffer_bytes 3200"),
        "{metrics}"
    );
    call.close(1000).await;
    call.finished().await;
    // Once the call is over, its actors are gone: none lingers holding its audio (the STT
    // actor's timer used to keep every finished call's STT actor alive).
    let mut gone = false;
    for _ in 0..100 {
        let (_, metrics) = common::metrics(app.port).await;
        if metrics.contains("callengine_actors{kind=\"stt\"} 0")
            && metrics.contains("callengine_actors{kind=\"call\"} 0")
            && metrics.contains("callengine_replay_buffer_bytes 0")
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, metrics) = common::metrics(app.port).await;
    assert!(
        gone,
        "call or STT actors or their replay audio still alive after the call ended: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("callengine_actors") || l.starts_with("callengine_replay"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    app.stop().await;
}
