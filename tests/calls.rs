//! The realtime call path end to end: real WebSocket clients against the app on port 0, on
//! SQLite and on PostgreSQL. One test per termination path, each asserting per call that every
//! final is stored once and in order, the call row is ended with duration and cost, and the
//! client saw exactly one Close frame with the right code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use callengine::store::{CallStatus, Protocol};
use common::voice::*;
use common::{http_get, http_request, Backend};
use uuid::Uuid;

on_both_backends!(
    client_close_flushes_every_turn_and_the_pending_partial,
    stop_message_ends_the_call_normally,
    tcp_reset_without_close_still_flushes,
    idle_timeout_ends_a_silent_call,
    stt_restarts_replay_audio_without_loss_or_duplicates,
    stt_failure_past_budget_fails_the_call_cleanly,
    operator_hangup_goes_through_the_flush,
    shutdown_drains_every_call_with_1001,
    bad_parameters_get_4000_and_no_call_row,
    bad_frames_are_counted_and_skipped_without_harming_the_call,
    oversized_message_ends_only_its_own_call,
    many_concurrent_calls_ending_at_random_lose_nothing,
    a_stale_partial_is_promoted_to_a_turn,
    slow_stt_drops_audio_not_transcript,
    a_panicking_call_actor_is_finished_and_the_other_calls_carry_on,
);

async fn client_close_flushes_every_turn_and_the_pending_partial(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let external = Uuid::new_v4();
    let mut client = VoiceClient::connect(app.port, external, &call_query()).await;
    let call_id = client.wait_started().await;
    // 1100 ms: five whole turns of 200 ms, and a partial 100 ms into the sixth.
    client.send_audio(1_100, &tone()).await;
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 5, 1000);
    assert_eq!(assert_durable(app.store(), &log, expect).await, call_id);
    let turns = app.store().list_turns(call_id).await.unwrap();
    assert_eq!(turns.len(), 6, "the pending partial was stored");
    assert!(!turns[5].is_final);
    let call = app.store().get_call(call_id).await.unwrap().unwrap();
    assert_eq!(
        (call.protocol, call.external_id.as_deref()),
        (Protocol::Voice, Some(external.to_string().as_str()))
    );
    assert_eq!(call.phone_number, "+14155550100");
    assert!(!log.partials.is_empty(), "partials reached the client");
    app.stop().await;
}

async fn stop_message_ends_the_call_normally(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    client.send_audio(600, &tone()).await;
    client.send_text(r#"{"type":"stop"}"#).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_stop", 3, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn tcp_reset_without_close_still_flushes(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(1_000, &tone()).await;
    // Reset only once the server has read every frame (a RST discards unread data).
    let seen = wait_received(app.port, call_id, 10).await;
    assert_eq!(seen["frames_dropped"], 0);
    let log = client.log.lock().unwrap().clone();
    client.reset();
    let expect = Expect {
        status: CallStatus::Completed,
        end_reason: "connection_lost",
        finals: 5,
        close: None,
        client_saw_all: false,
    };
    assert_eq!(assert_durable(app.store(), &log, expect).await, call_id);
    app.stop().await;
}

async fn idle_timeout_ends_a_silent_call(backend: Backend) {
    let app = TestApp::start(backend, &[("CALLENGINE_CALLS__IDLE_TIMEOUT_SECS", "1")]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    client.send_audio(600, &tone()).await;
    // Then nothing: the socket stays open, no audio arrives.
    let log = client.finished().await;
    let expect = Expect::completed("idle_timeout", 3, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn stt_restarts_replay_audio_without_loss_or_duplicates(backend: Backend) {
    // The first two STT streams of the call break after 300 ms of their own audio; the third
    // holds. Replay from the last final must give exactly one turn per 200 ms of call audio.
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_STT__SCRIPTED__FAIL_SESSIONS", "2"),
            ("CALLENGINE_STT__SCRIPTED__FAIL_AFTER_MS", "300"),
        ],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(2_000, &tone()).await;
    client.wait_finals(10).await;
    let live = api_calls(app.port).await;
    let me = live
        .iter()
        .find(|c| c["call_id"] == call_id.to_string())
        .expect("call is live");
    assert_eq!(me["stt_restarts"], 2, "{me}");
    assert_eq!(me["stt_state"], "streaming");
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 10, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn stt_failure_past_budget_fails_the_call_cleanly(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_STT__SCRIPTED__FAIL_SESSIONS", "1000"),
            ("CALLENGINE_STT__SCRIPTED__FAIL_AFTER_MS", "300"),
        ],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    // Keep streaming until the server gives up (4 broken streams > budget of 3 in 10 s).
    for _ in 0..40 {
        if client.log.lock().unwrap().ended || !client.log.lock().unwrap().closes.is_empty() {
            break;
        }
        client.send_audio(100, &tone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = client.finished().await;
    let stored = app
        .store()
        .list_turns(log.call_id.unwrap())
        .await
        .unwrap()
        .iter()
        .filter(|t| t.is_final)
        .count();
    assert!(stored >= 1, "turns made before the failure are kept");
    let expect = Expect {
        status: CallStatus::Failed,
        end_reason: "stt_failed",
        finals: stored,
        close: Some(1011),
        client_saw_all: true,
    };
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn operator_hangup_goes_through_the_flush(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(800, &tone()).await;
    client.wait_finals(4).await;
    assert_eq!(
        post(app.port, &format!("/api/v1/calls/{call_id}/hangup"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        post(
            app.port,
            &format!("/api/v1/calls/{call_id}/hangup"),
            Some("wrong")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(
            app.port,
            &format!("/api/v1/calls/{}/hangup", Uuid::new_v4()),
            Some(TOKEN)
        )
        .await
        .0,
        404
    );
    let (status, body) = post(
        app.port,
        &format!("/api/v1/calls/{call_id}/hangup"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let log = client.finished().await;
    let expect = Expect::completed("operator_hangup", 4, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn shutdown_drains_every_call_with_1001(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
        client.wait_started().await;
        client.send_audio(600, &tone()).await;
        clients.push(client);
    }
    for client in &clients {
        client.wait_finals(3).await;
    }
    let shutdown = app.shutdown.clone();
    let drain = tokio::spawn(async move { shutdown.shutdown().await });
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.finished().await);
    }
    drain.await.unwrap();
    for log in &logs {
        let expect = Expect::completed("shutdown", 3, 1001);
        assert_durable(app.store(), log, expect).await;
    }
    app.stop().await;
}

async fn bad_parameters_get_4000_and_no_call_row(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let good = call_query();
    let t = Uuid::new_v4();
    let cases = [
        (
            format!("/ws/voice/{t}?campaign_id={t}&lead_id={t}"),
            "tenant_id",
        ),
        (
            format!("/ws/voice/{t}?tenant_id={t}&lead_id={t}"),
            "campaign_id",
        ),
        (
            format!("/ws/voice/{t}?tenant_id={t}&campaign_id={t}"),
            "lead_id",
        ),
        (
            format!("/ws/voice/{t}?tenant_id=nope&campaign_id={t}&lead_id={t}"),
            "tenant_id must be a UUID",
        ),
        (
            format!("/ws/voice/{}?{good}", "x".repeat(300)),
            "external_uuid",
        ),
        (format!("/ws/voice/a%20b?{good}"), "external_uuid"),
        (
            format!("/ws/voice/{t}?{good}&call_id=123"),
            "call_id must be a UUID",
        ),
    ];
    let mut ok_client = VoiceClient::connect(app.port, Uuid::new_v4(), &good).await;
    ok_client.wait_started().await;
    for (path, needle) in cases {
        let log = VoiceClient::connect_path(app.port, &path)
            .await
            .finished()
            .await;
        assert_eq!(log.errors.len(), 1, "{path}: {log:?}");
        assert!(log.errors[0].contains(needle), "{path}: {:?}", log.errors);
        assert_eq!(log.closes.len(), 1);
        assert_eq!(log.closes[0].0, 4000);
        assert_eq!(log.call_id, None);
    }
    // Linking to a call that does not exist as a live call of another id is refused the same way.
    let ended = Uuid::new_v4();
    let mut first =
        VoiceClient::connect(app.port, Uuid::new_v4(), &format!("{good}&call_id={ended}")).await;
    first.wait_started().await;
    first.close(1000).await;
    first.finished().await;
    let log = VoiceClient::connect(app.port, Uuid::new_v4(), &format!("{good}&call_id={ended}"))
        .await
        .finished()
        .await;
    assert_eq!(log.closes.first().map(|c| c.0), Some(4000), "{log:?}");
    assert!(log.errors[0].contains("not active"), "{:?}", log.errors);
    // The good call was never disturbed.
    ok_client.send_audio(400, &tone()).await;
    ok_client.close(1000).await;
    let log = ok_client.finished().await;
    let expect = Expect::completed("caller_hangup", 2, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn bad_frames_are_counted_and_skipped_without_harming_the_call(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(400, &tone()).await;
    for bad in [
        vec![],
        vec![0; 641],
        vec![0; 320],
        vec![0; 1000],
        vec![0; 3840],
    ] {
        client.send_binary(bad).await;
    }
    client.send_text("hello?").await;
    client.send_text(r#"{"type":"dance"}"#).await;
    client.send_audio(400, &tone()).await;
    client.wait_finals(4).await;
    let live = api_calls(app.port).await;
    let me = live
        .iter()
        .find(|c| c["call_id"] == call_id.to_string())
        .expect("call is live");
    assert_eq!(me["frames_invalid"], 5, "{me}");
    assert_eq!(me["text_ignored"], 2, "{me}");
    assert_eq!(me["frames_in"], 13, "{me}");
    assert_eq!(me["frames_dropped"], 0, "{me}");
    assert_eq!(me["turns"], 4, "{me}");
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 4, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn oversized_message_ends_only_its_own_call(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut bystander = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    bystander.wait_started().await;
    let mut offender = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    offender.wait_started().await;
    offender.send_audio(400, &tone()).await;
    offender.wait_finals(2).await;
    offender.send_binary(vec![0; 70 * 1024]).await;
    let log = offender.finished().await;
    let expect = Expect::completed("protocol_error", 2, 1009);
    assert_durable(app.store(), &log, expect).await;
    bystander.send_audio(400, &tone()).await;
    bystander.close(1000).await;
    let log = bystander.finished().await;
    let expect = Expect::completed("caller_hangup", 2, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn many_concurrent_calls_ending_at_random_lose_nothing(backend: Backend) {
    const CALLS: usize = 200;
    // Polling 200 calls takes a while: keep partials from being promoted meanwhile (promotion
    // has its own test), so each call's turn count is exactly known.
    let app = TestApp::start(
        backend,
        &[("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000")],
    )
    .await;
    let port = app.port;
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(i as u64);
            tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
            let mut client = VoiceClient::connect(port, Uuid::new_v4(), &call_query()).await;
            let call_id = client.wait_started().await;
            let millis = 100 * rng.u64(2..=12);
            client.send_audio(millis, &tone()).await;
            let finals = (millis / TURN_MS) as usize;
            // Every frame reached the server and none was dropped for backpressure, so the
            // number of turns is exactly known.
            let seen = wait_received(port, call_id, millis / 100).await;
            assert_eq!(seen["frames_dropped"], 0, "{seen}");
            match i % 3 {
                0 => {
                    client.close(1000).await;
                    (
                        client.finished().await,
                        finals,
                        "caller_hangup",
                        Some(1000),
                        true,
                    )
                }
                1 => {
                    client.send_text(r#"{"type":"stop"}"#).await;
                    (
                        client.finished().await,
                        finals,
                        "caller_stop",
                        Some(1000),
                        true,
                    )
                }
                _ => {
                    let log = client.log.lock().unwrap().clone();
                    client.reset();
                    (log, finals, "connection_lost", None, false)
                }
            }
        }));
    }
    for task in tasks {
        let (log, finals, end_reason, close, client_saw_all) = task.await.unwrap();
        let expect = Expect {
            status: CallStatus::Completed,
            end_reason,
            finals,
            close,
            client_saw_all,
        };
        assert_durable(app.store(), &log, expect).await;
    }
    let live = api_calls(port).await;
    assert!(live.is_empty(), "no call actor left: {live:?}");
    app.stop().await;
}

/// Supervision: a panic in one call's handler (the test-only fault hook) ends that call through
/// the backstop — committed turns kept, one Close 1011, row completed as `call_actor_stopped`
/// (actix drops the panicked actor's context, which runs `stopping`), the registry forgets it —
/// while 50 calls on the same node stream on and end normally.
async fn a_panicking_call_actor_is_finished_and_the_other_calls_carry_on(backend: Backend) {
    const OTHERS: usize = 50;
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000"),
            // The 50 others wait while the victim is checked; they must not idle out meanwhile.
            ("CALLENGINE_CALLS__IDLE_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    let mut others = Vec::new();
    for _ in 0..OTHERS {
        let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
        client.wait_started().await;
        client.send_audio(400, &tone()).await;
        others.push(client);
    }
    let mut victim = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let victim_id = victim.wait_started().await;
    victim.send_audio(600, &tone()).await;
    victim.wait_finals(3).await;
    let actor = app
        .state
        .registry
        .send(callengine::call::registry::Lookup(victim_id))
        .await
        .unwrap()
        .expect("the call is live");
    actor.do_send(callengine::call::actor::InjectPanic);
    let log = victim.finished().await;
    let expect = Expect {
        status: callengine::store::CallStatus::Completed,
        end_reason: "call_actor_stopped",
        finals: 3,
        close: Some(1011),
        client_saw_all: true,
    };
    assert_durable(app.store(), &log, expect).await;
    for client in &mut others {
        client.send_audio(400, &tone()).await;
    }
    for client in &mut others {
        client.wait_finals(4).await;
        client.close(1000).await;
    }
    for client in others {
        let log = client.finished().await;
        assert_durable(
            app.store(),
            &log,
            Expect::completed("caller_hangup", 4, 1000),
        )
        .await;
    }
    let live = api_calls(app.port).await;
    assert!(
        live.is_empty(),
        "the panicked call left the registry: {live:?}"
    );
    app.stop().await;
}

/// Waits until the live call has received `frames` frames; returns its snapshot.
async fn wait_received(port: u16, call_id: Uuid, frames: u64) -> serde_json::Value {
    for _ in 0..500 {
        let live = api_calls(port).await;
        if let Some(me) = live
            .into_iter()
            .find(|c| c["call_id"] == call_id.to_string())
        {
            if me["frames_in"].as_u64() >= Some(frames) {
                return me;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("call {call_id} never received {frames} frames");
}

async fn a_stale_partial_is_promoted_to_a_turn(backend: Backend) {
    let app = TestApp::start(backend, &[("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "300")]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    // 300 ms: turn 1 is final at 200 ms, turn 2's partial at 300 ms never gets its final.
    client.send_audio(300, &tone()).await;
    client.wait_finals(2).await;
    let log = client.log.lock().unwrap().clone();
    // A partial carries the number its turn is expected to get (the database gives the
    // final's); one writer here, so the hint is exact.
    let partial = log
        .partials
        .iter()
        .rev()
        .find(|(seq, _)| *seq == 2)
        .expect("partial of turn 2")
        .1
        .clone();
    assert_eq!(
        log.finals[1],
        (2, partial),
        "the partial was promoted as turn 2"
    );
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 2, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn slow_stt_drops_audio_not_transcript(backend: Backend) {
    // A provider that needs 30 ms per 100 ms message, fed 20x faster than real time, behind
    // small queues: audio must be dropped (and counted), transcript events never.
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_STT__SCRIPTED__CHUNK_DELAY_MS", "30"),
            ("CALLENGINE_STT__AUDIO_QUEUE_FRAMES", "4"),
            ("CALLENGINE_STT__REPLAY_BUFFER_MS", "200"),
            ("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000"),
        ],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(4_000, &tone()).await;
    wait_received(app.port, call_id, 40).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await; // drop counts are reported each second
    let seen = wait_received(app.port, call_id, 40).await;
    let dropped = seen["frames_dropped"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "a slow provider makes the call drop audio: {seen}"
    );
    assert!(dropped < 40, "{seen}");
    client.close(1000).await;
    let log = client.finished().await;
    let stored = app
        .store()
        .list_turns(call_id)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.is_final)
        .count();
    // Fixed mode places turns by call time, so dropped frames need not cost a turn; what
    // matters is that every turn the provider produced was stored once and acknowledged.
    assert!((1..=20).contains(&stored), "{stored}");
    let expect = Expect::completed("caller_hangup", stored, 1000);
    assert_durable(app.store(), &log, expect).await;
    app.stop().await;
}

async fn api_calls(port: u16) -> Vec<serde_json::Value> {
    let (status, body) = get_with_token(port, "/api/v1/calls").await;
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["calls"].as_array().cloned().unwrap_or_default()
}

async fn get_with_token(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, Some(TOKEN)).await
}

async fn post(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(port, "POST", path, token).await
}

#[actix_web::test]
async fn api_is_closed_without_a_token_and_disabled_without_configuration() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    assert_eq!(
        http_request(app.port, "GET", "/api/v1/calls", None).await.0,
        401
    );
    assert_eq!(
        http_get(app.port, "/healthz").await.0,
        200,
        "health stays open"
    );
    app.stop().await;
}
