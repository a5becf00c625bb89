//! Deepgram v1 and Flux end to end: real calls over the engine's WebSocket, streamed to a local
//! Deepgram-protocol server over a real WebSocket, with each connection fault the issue names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use callengine::store::CallStatus;
use common::fake_deepgram::{coded_audio, FakeDeepgram, Fault, KEY};
use common::voice::*;
use common::Backend;
use uuid::Uuid;

async fn app_with(fake: &FakeDeepgram, provider: &str, extra: &[(&str, &str)]) -> TestApp {
    let base = fake.base_url();
    let mut settings: Vec<(&str, &str)> = vec![
        ("CALLENGINE_STT__PROVIDER", provider),
        ("CALLENGINE_STT__DEEPGRAM__BASE_URL", &base),
        ("CALLENGINE_STT__DEEPGRAM__API_KEY", KEY),
        ("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000"),
    ];
    settings.extend_from_slice(extra);
    TestApp::start(Backend::Sqlite, &settings).await
}

fn texts(log: &ClientLog) -> Vec<String> {
    log.finals.iter().map(|(_, t)| t.clone()).collect()
}

fn expected(turns: i16) -> Vec<String> {
    (1..=turns).map(|n| format!("turn {n} words")).collect()
}

/// Streams `turns` coded turns through one call, closes it, and checks the durable result.
async fn run_call(app: &TestApp, turns: i16) -> ClientLog {
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    client.send_pcm(&coded_audio(turns)).await;
    client.wait_finals(turns as usize).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", turns as usize, 1000),
    )
    .await;
    assert_eq!(texts(&log), expected(turns), "each turn once, in order");
    log
}

#[actix_web::test]
async fn v1_streams_turns_with_auth_and_closes_the_stream_at_the_end() {
    let fake = FakeDeepgram::start().await;
    let app = app_with(&fake, "deepgram", &[]).await;
    let log = run_call(&app, 3).await;
    assert!(
        log.partials.iter().any(|(_, t)| t == "turn 2"),
        "interims arrive as partials"
    );
    let s = fake.state.lock().unwrap().clone();
    assert_eq!(s.connections, 1);
    assert_eq!(s.auth_headers, vec![format!("Token {KEY}")]);
    let path = &s.paths[0];
    assert!(
        path.starts_with("/v1/listen?encoding=linear16&sample_rate=16000&channels=1"),
        "{path}"
    );
    assert!(
        path.contains("interim_results=true") && path.contains("model=nova-3"),
        "{path}"
    );
    assert_eq!(
        (s.finalizes, s.close_streams),
        (1, 1),
        "Finalize and CloseStream at call end"
    );
    app.stop().await;
}

#[actix_web::test]
async fn v1_pending_utterance_is_finalized_at_hang_up() {
    let fake = FakeDeepgram::start().await;
    let app = app_with(&fake, "deepgram", &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    let mut audio = coded_audio(1);
    audio.extend(coded_audio(2)[coded_audio(1).len()..][..16_000].to_vec()); // half of turn 2, no silence
    client.send_pcm(&audio).await;
    client.wait_finals(1).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", 2, 1000),
    )
    .await;
    assert_eq!(
        texts(&log),
        expected(2),
        "Finalize delivered the last utterance before the flush"
    );
    app.stop().await;
}

#[actix_web::test]
async fn v1_socket_drop_mid_utterance_reconnects_and_replays_without_loss_or_duplicates() {
    let fake = FakeDeepgram::start().await;
    fake.faults(&[Fault::DropAfterMs(1_900)]);
    let app = app_with(&fake, "deepgram", &[]).await;
    run_call(&app, 4).await;
    let s = fake.state.lock().unwrap().clone();
    assert_eq!(s.connections, 2, "one reconnect");
    assert!(
        s.audio_ms[1] > 0,
        "the new stream received the replayed and the new audio"
    );
    app.stop().await;
}

#[actix_web::test]
async fn v1_close_1011_reconnects() {
    let fake = FakeDeepgram::start().await;
    fake.faults(&[Fault::Close1011AfterMs(700), Fault::Close1011AfterMs(900)]);
    let app = app_with(&fake, "deepgram", &[]).await;
    run_call(&app, 4).await;
    assert_eq!(fake.state.lock().unwrap().connections, 3);
    app.stop().await;
}

#[actix_web::test]
async fn v1_silent_stall_is_detected_and_the_stream_replaced() {
    let fake = FakeDeepgram::start().await;
    fake.faults(&[Fault::StallAfterMs(1_500)]);
    let app = app_with(
        &fake,
        "deepgram",
        &[("CALLENGINE_STT__DEEPGRAM__STALL_TIMEOUT_MS", "600")],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    // Real-time-ish pacing so that the stall is noticed while audio is still flowing.
    for chunk in coded_audio(4).chunks(3200) {
        client.send_pcm(chunk).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    client.wait_finals(4).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", 4, 1000),
    )
    .await;
    assert_eq!(texts(&log), expected(4));
    assert_eq!(
        fake.state.lock().unwrap().connections,
        2,
        "the stalled stream was replaced"
    );
    app.stop().await;
}

#[actix_web::test]
async fn rejected_auth_fails_the_call_cleanly_without_retrying() {
    let fake = FakeDeepgram::start().await;
    fake.state.lock().unwrap().reject_status = Some(401);
    let app = app_with(&fake, "deepgram", &[]).await;
    let client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    // The stream is refused when the call starts; the call ends without any audio sent.
    let log = client.finished().await;
    let expect = Expect {
        status: CallStatus::Failed,
        end_reason: "stt_failed",
        finals: 0,
        close: Some(1011),
        client_saw_all: true,
    };
    assert_durable(app.store(), &log, expect).await;
    assert!(
        log.closes[0].1.contains("401"),
        "the reason names the refusal: {:?}",
        log.closes
    );
    let s = fake.state.lock().unwrap().clone();
    assert_eq!((s.rejected, s.connections), (1, 0), "no retry after 401");
    assert!(app
        .store()
        .get_call(call_id)
        .await
        .unwrap()
        .unwrap()
        .ended_at
        .is_some());
    app.stop().await;
}

#[actix_web::test]
async fn wrong_key_is_refused_by_the_server_and_fails_the_call() {
    let fake = FakeDeepgram::start().await;
    let app = app_with(
        &fake,
        "deepgram",
        &[("CALLENGINE_STT__DEEPGRAM__API_KEY", "wrong")],
    )
    .await;
    let client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    let log = client.finished().await;
    assert_eq!(log.closes.first().map(|c| c.0), Some(1011));
    assert_eq!(
        fake.state.lock().unwrap().auth_headers,
        vec!["Token wrong".to_string()]
    );
    app.stop().await;
}

#[actix_web::test]
async fn v1_sends_keep_alive_while_no_audio_flows() {
    let fake = FakeDeepgram::start().await;
    let app = app_with(
        &fake,
        "deepgram",
        &[("CALLENGINE_STT__DEEPGRAM__KEEPALIVE_SECS", "1")],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    client.send_pcm(&coded_audio(1)).await;
    client.wait_finals(1).await;
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    assert!(
        fake.state.lock().unwrap().keepalives >= 2,
        "KeepAlive during the silence"
    );
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", 1, 1000),
    )
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn flux_turns_and_the_open_turn_at_close() {
    let fake = FakeDeepgram::start().await;
    let app = app_with(
        &fake,
        "flux",
        &[("CALLENGINE_STT__DEEPGRAM__EOT_THRESHOLD", "0.8")],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    let mut audio = coded_audio(2);
    audio.extend(std::iter::repeat_n(3i16 * 100, 16_000).flat_map(i16::to_le_bytes)); // turn 3, never ended
    client.send_pcm(&audio).await;
    client.wait_finals(2).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", 3, 1000),
    )
    .await;
    assert_eq!(
        texts(&log),
        vec![
            "turn 1 words".to_string(),
            "turn 2 words".into(),
            "turn 3".into()
        ],
        "Flux sends no EndOfTurn on CloseStream: the last Update of turn 3 stands as its final"
    );
    let s = fake.state.lock().unwrap().clone();
    assert!(
        s.paths[0]
            .starts_with("/v2/listen?encoding=linear16&sample_rate=16000&model=flux-general-en"),
        "{}",
        s.paths[0]
    );
    assert!(s.paths[0].contains("eot_threshold=0.8"));
    assert_eq!(
        (s.finalizes, s.close_streams),
        (0, 1),
        "Flux gets CloseStream only"
    );
    app.stop().await;
}

#[actix_web::test]
async fn flux_drop_reconnects_without_loss_or_duplicates() {
    let fake = FakeDeepgram::start().await;
    fake.faults(&[Fault::DropAfterMs(2_000)]);
    let app = app_with(&fake, "flux", &[]).await;
    run_call(&app, 4).await;
    assert_eq!(fake.state.lock().unwrap().connections, 2);
    app.stop().await;
}

#[actix_web::test]
async fn deepgram_without_a_key_is_a_start_up_error() {
    let db = common::TestDb::new(Backend::Sqlite).await;
    let env = [
        ("CALLENGINE_BIND", "127.0.0.1:0".to_string()),
        ("CALLENGINE_DATABASE__URL", db.url_string.clone()),
        ("CALLENGINE_STT__PROVIDER", "deepgram".to_string()),
    ];
    let settings =
        callengine::Settings::load_from(None, env.map(|(k, v)| (k.to_string(), v))).unwrap();
    let err = callengine::Application::build(settings)
        .await
        .err()
        .expect("refused at start-up");
    assert!(err.to_string().contains("stt.deepgram.api_key"), "{err}");
    db.cleanup().await;
}

#[actix_web::test]
async fn each_tenant_gets_its_own_provider_and_an_unavailable_one_fails_the_call_at_start() {
    use callengine::store::NewTenant;
    let fake = FakeDeepgram::start().await;
    let app = app_with(
        &fake,
        "deepgram",
        &[("CALLENGINE_STT__SCRIPTED__TURN_MS", "1300")],
    )
    .await;
    let tenant = |name: &str, provider: Option<&str>| NewTenant {
        id: None,
        name: format!("{name}-{}", Uuid::new_v4()),
        webhook_url: None,
        webhook_secret: None,
        cost_per_second_micros: 1_000,
        stt_provider: provider.map(String::from),
        stt_api_key: None,
        media_open: true,
        ..NewTenant::default()
    };
    let scripted = app
        .store()
        .insert_tenant(&tenant("scripted", Some("scripted")))
        .await
        .unwrap();
    let default = app
        .store()
        .insert_tenant(&tenant("default", None))
        .await
        .unwrap();
    let missing = app
        .store()
        .insert_tenant(&tenant("missing", Some("whisper")))
        .await
        .unwrap();
    let query = |t: Uuid| {
        format!(
            "tenant_id={t}&campaign_id={}&lead_id={}",
            Uuid::new_v4(),
            Uuid::new_v4()
        )
    };

    for (tenant_id, expected) in [
        (scripted.id, "hello this is a test call"),
        (default.id, "turn 1 words"),
    ] {
        let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &query(tenant_id)).await;
        client.wait_started().await;
        client.send_pcm(&coded_audio(1)).await;
        client.wait_finals(1).await;
        client.close(1000).await;
        let log = client.finished().await;
        assert_eq!(
            log.finals[0].1, expected,
            "tenant {tenant_id} used the wrong provider"
        );
    }
    assert_eq!(
        fake.state.lock().unwrap().connections,
        1,
        "only the default tenant's call reached Deepgram"
    );

    let client = VoiceClient::connect(app.port, Uuid::new_v4(), &query(missing.id)).await;
    let call_id = client.wait_started().await;
    let log = client.finished().await;
    assert!(
        log.errors.iter().any(|e| e.contains("\"whisper\"")),
        "{:?}",
        log.errors
    );
    let expect = Expect {
        status: CallStatus::Failed,
        end_reason: "stt_failed",
        finals: 0,
        close: Some(1011),
        client_saw_all: true,
    };
    assert_eq!(assert_durable(app.store(), &log, expect).await, call_id);
    app.stop().await;
}

#[actix_web::test]
async fn a_tenants_own_key_is_used_instead_of_the_nodes() {
    use callengine::store::{NewTenant, Secret};
    let fake = FakeDeepgram::start().await;
    // The node's key is one the server refuses; only the tenant's own key works.
    let app = app_with(
        &fake,
        "scripted",
        &[("CALLENGINE_STT__DEEPGRAM__API_KEY", "node-key")],
    )
    .await;
    let tenant = |name: &str, provider: &str, key: Option<&str>| NewTenant {
        id: None,
        name: format!("{name}-{}", Uuid::new_v4()),
        webhook_url: None,
        webhook_secret: None,
        cost_per_second_micros: 1_000,
        stt_provider: Some(provider.into()),
        stt_api_key: key.map(Secret::new),
        media_open: true,
        ..NewTenant::default()
    };
    let own = app
        .store()
        .insert_tenant(&tenant("own-key", "deepgram", Some(KEY)))
        .await
        .unwrap();
    let node = app
        .store()
        .insert_tenant(&tenant("node-key", "flux", None))
        .await
        .unwrap();
    let query = |t: Uuid| {
        format!(
            "tenant_id={t}&campaign_id={}&lead_id={}",
            Uuid::new_v4(),
            Uuid::new_v4()
        )
    };

    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &query(own.id)).await;
    client.wait_started().await;
    client.send_pcm(&coded_audio(2)).await;
    client.wait_finals(2).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_durable(
        app.store(),
        &log,
        Expect::completed("caller_hangup", 2, 1000),
    )
    .await;
    assert_eq!(texts(&log), expected(2));

    let client = VoiceClient::connect(app.port, Uuid::new_v4(), &query(node.id)).await;
    client.wait_started().await;
    let log = client.finished().await;
    let expect = Expect {
        status: CallStatus::Failed,
        end_reason: "stt_failed",
        finals: 0,
        close: Some(1011),
        client_saw_all: true,
    };
    assert_durable(app.store(), &log, expect).await;

    let s = fake.state.lock().unwrap().clone();
    assert_eq!(
        s.auth_headers,
        vec![format!("Token {KEY}"), "Token node-key".to_string()],
        "the tenant's key for its call, the node's for the tenant without one"
    );
    assert!(s.paths[0].starts_with("/v1/listen"), "{:?}", s.paths);
    app.stop().await;
}

/// `callengine_tcp_connections_total{socket=…,nodelay=…}` from `/metrics`.
async fn tcp_sockets(app: &TestApp, socket: &str, nodelay: bool) -> u64 {
    let (status, body) = common::metrics(app.port).await;
    assert_eq!(status, 200);
    let series =
        format!("callengine_tcp_connections_total{{socket=\"{socket}\",nodelay=\"{nodelay}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Issue 15: every socket the engine accepts (HTTP/WebSocket, AudioSocket) or opens (the STT
/// provider's) has TCP_NODELAY, as read back from the socket itself; none is counted without.
#[actix_web::test]
async fn every_socket_the_engine_opens_or_accepts_has_tcp_nodelay() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeDeepgram::start().await;
    let tenant = OPEN_TENANT.to_string();
    let app = app_with(
        &fake,
        "deepgram",
        &[
            ("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:0"),
            ("CALLENGINE_MEDIA__AUDIOSOCKET_TENANT_ID", tenant.as_str()),
        ],
    )
    .await;
    let before: Vec<u64> = futures_util::future::join_all(
        ["http", "audiosocket", "stt"].map(|kind| tcp_sockets(&app, kind, true)),
    )
    .await;
    // A WebSocket call (an accepted HTTP socket and an STT socket)…
    run_call(&app, 1).await;
    // …and an AudioSocket call (an accepted AudioSocket and another STT socket).
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.audiosocket_port.unwrap()))
        .await
        .unwrap();
    let uuid = Uuid::new_v4();
    let frame = callengine::media::audiosocket::encode;
    tcp.write_all(&frame(0x01, uuid.as_bytes())).await.unwrap();
    for _ in 0..10 {
        tcp.write_all(&frame(0x10, &[0u8; 320])).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.state.lock().unwrap().connections < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the AudioSocket call's STT stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tcp.write_all(&[0x00, 0x00, 0x00]).await.unwrap();
    drop(tcp);
    for (kind, before) in ["http", "audiosocket", "stt"].iter().zip(before) {
        let after = tcp_sockets(&app, kind, true).await;
        assert!(
            after > before,
            "{kind}: {before} → {after} sockets with TCP_NODELAY"
        );
        assert_eq!(
            tcp_sockets(&app, kind, false).await,
            0,
            "{kind} without TCP_NODELAY"
        );
    }
    app.stop().await;
}
