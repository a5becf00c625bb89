//! Inbound webhooks over real HTTP against the app on port 0, on SQLite and PostgreSQL:
//! ElevenLabs turns (create, append, 50 concurrent posts, idempotent retry, every 400, 500 with
//! retries while PostgreSQL is cut, signatures), the post-call transcript, and recording
//! callbacks (save, enqueue once, signature). Signatures are computed here with the hmac crate
//! directly, from the documented algorithms — not with the engine's own functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use callengine::store::{CallStatus, NewTenant, Protocol, Secret, JOB_KIND_POSTCALL};
use common::voice::TestApp;
use common::{http_post, Backend, CutProxy, TestDb};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use uuid::Uuid;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

async fn app_with_default_tenant(backend: Backend) -> (TestApp, Uuid) {
    let tenant_id = Uuid::new_v4();
    let id = tenant_id.to_string();
    let app = TestApp::start(
        backend,
        &[("CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID", id.as_str())],
    )
    .await;
    app.store()
        .insert_tenant(&NewTenant {
            id: Some(tenant_id),
            name: format!("default-{tenant_id}"),
            // These tests are about bodies and storage; signatures have their own tests here
            // and in tests/security.
            webhooks_unsigned: true,
            ..NewTenant::default()
        })
        .await
        .unwrap();
    (app, tenant_id)
}

async fn post_json(
    app: &TestApp,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, text) =
        http_post(app.port, path, JSON, headers, body.to_string().as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn turn(conversation: &str, speaker: &str, message: &str, timestamp: Value) -> Value {
    json!({ "conversation_id": conversation, "speaker": speaker, "message": message, "timestamp": timestamp })
}

const TURNS: &str = "/webhooks/elevenlabs/transcription";

async fn elevenlabs_turns_create_append_and_retry(backend: Backend) {
    let (app, tenant_id) = app_with_default_tenant(backend).await;
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    let (status, first) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "agent",
            "Hi, how can I help?",
            json!("2026-11-21T10:00:00Z"),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["sequence_number"], 1);
    let (status, second) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "user",
            "I'd like to reschedule.",
            json!(1_795_255_203),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["sequence_number"], 2);
    // The same turn again (a retry): the original answer, nothing duplicated.
    let (status, again) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "user",
            "I'd like to reschedule.",
            json!("2026-11-21T10:00:03Z"),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["transcription_id"], second["transcription_id"]);
    assert_eq!(again["sequence_number"], 2);

    let calls = app
        .store()
        .calls_by_external_id(&conversation)
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.protocol, Protocol::ElevenLabs);
    assert_eq!(call.tenant_id, tenant_id);
    assert_eq!(call.status, CallStatus::Active);
    assert_eq!(call.started_at.to_rfc3339(), "2026-11-21T10:00:00+00:00");
    assert_eq!(call.lead_id, None, "no registered call: no contact");
    let turns = app.store().list_turns(call.id).await.unwrap();
    let shape: Vec<(i32, &str, Option<&str>, Option<i64>)> = turns
        .iter()
        .map(|t| {
            (
                t.seq,
                t.speaker.as_str(),
                t.speaker_label.as_deref(),
                t.start_ms,
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (1, "agent", Some("agent"), Some(0)),
            (2, "contact", Some("user"), Some(3_000))
        ]
    );
    app.stop().await;
}

async fn fifty_concurrent_turns_get_1_to_50(backend: Backend) {
    let (app, _) = app_with_default_tenant(backend).await;
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    let port = app.port;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let body = turn(
            &conversation,
            if i % 2 == 0 { "agent" } else { "user" },
            &format!("line {i}"),
            json!(1_795_255_200 + i),
        );
        tasks.push(tokio::spawn(async move {
            let (status, text) =
                http_post(port, TURNS, JSON, &[], body.to_string().as_bytes()).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 201, "{body}");
        numbers.push(body["sequence_number"].as_i64().unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=50).collect::<Vec<i64>>());
    let calls = app
        .store()
        .calls_by_external_id(&conversation)
        .await
        .unwrap();
    assert_eq!(calls.len(), 1, "one call for the conversation");
    let stored: Vec<i32> = app
        .store()
        .list_turns(calls[0].id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.seq)
        .collect();
    assert_eq!(stored, (1..=50).collect::<Vec<i32>>());
    app.stop().await;
}

async fn bad_requests_name_the_problem(backend: Backend) {
    let (app, _) = app_with_default_tenant(backend).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed JSON"),
        (json!({"speaker":"agent","message":"m","timestamp":1}).to_string().into_bytes(), "conversation_id"),
        (json!({"conversation_id":"c","message":"m","timestamp":1}).to_string().into_bytes(), "speaker"),
        (json!({"conversation_id":"c","speaker":"robot","message":"m","timestamp":1}).to_string().into_bytes(), "unknown speaker"),
        (json!({"conversation_id":"c","speaker":"agent","timestamp":1}).to_string().into_bytes(), "message"),
        (json!({"conversation_id":"c","speaker":"agent","message":"m"}).to_string().into_bytes(), "timestamp"),
        (json!({"conversation_id":"c","speaker":"agent","message":"m","timestamp":"next tuesday"}).to_string().into_bytes(), "timestamp"),
        (vec![b' '; 1024 * 1024 + 1], "larger than"),
    ];
    for (body, expected) in cases {
        let (status, text) = http_post(app.port, TURNS, JSON, &[], &body).await;
        assert_eq!(status, 400, "{expected}: {text}");
        assert!(text.contains(expected), "{expected}: {text}");
    }
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
    elevenlabs_turns_create_append_and_retry,
    fifty_concurrent_turns_get_1_to_50,
    bad_requests_name_the_problem,
    post_call_transcript_completes_the_call_without_duplicates,
    recording_callback_saves_and_enqueues_once,
);

fn elevenlabs_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v0={hex}")
}

#[actix_web::test]
async fn signed_tenant_route_accepts_good_signatures_only() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let route = format!("inbound-{}", Uuid::new_v4().simple());
    let tenant = app
        .store()
        .insert_tenant(&NewTenant {
            name: format!("signed-{route}"),
            inbound_token: Some(Secret::new(route.clone())),
            elevenlabs_webhook_secret: Some(Secret::new("whsec_test")),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let path = format!("/webhooks/{route}/elevenlabs/transcription");
    let body = turn("conv_signed", "agent", "hello", json!(1_795_255_200)).to_string();
    let now = chrono::Utc::now().timestamp();
    let cases = [
        (
            Some(elevenlabs_signature("whsec_test", now, body.as_bytes())),
            201,
        ),
        (
            Some(elevenlabs_signature("wrong", now, body.as_bytes())),
            401,
        ),
        (
            Some(elevenlabs_signature(
                "whsec_test",
                now - 31 * 60,
                body.as_bytes(),
            )),
            401,
        ),
        (None, 401),
    ];
    for (signature, expected) in cases {
        let headers: Vec<(&str, &str)> = signature
            .as_deref()
            .map(|s| vec![("ElevenLabs-Signature", s)])
            .unwrap_or_default();
        let (status, text) = http_post(app.port, &path, JSON, &headers, body.as_bytes()).await;
        assert_eq!(status, expected, "{signature:?}: {text}");
    }
    let calls = app
        .store()
        .calls_by_external_id("conv_signed")
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tenant_id, tenant.id, "the route names the tenant");
    let (status, _) = http_post(
        app.port,
        "/webhooks/nope/elevenlabs/transcription",
        JSON,
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    // No default tenant configured: the token-less route is refused.
    let (status, text) = http_post(app.port, TURNS, JSON, &[], body.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    app.stop().await;
}

#[actix_web::test]
async fn registered_call_is_linked_so_turns_find_their_contact() {
    let (app, tenant_id) = app_with_default_tenant(Backend::Sqlite).await;
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    let lead = Uuid::new_v4();
    // A call registered beforehand (what the API's registration writes).
    let (call, _) = app
        .store()
        .create_or_link_call(&callengine::store::NewCall {
            id: None,
            tenant_id,
            campaign_id: None,
            lead_id: Some(lead),
            phone_number: None,
            external_id: Some(conversation.clone()),
            protocol: Protocol::Api,
            direction: callengine::store::Direction::Outbound,
            started_at: chrono::Utc::now(),
            media_metadata: None,
        })
        .await
        .unwrap();
    let (status, body) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "user",
            "yes",
            json!(chrono::Utc::now().timestamp()),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["call_id"], call.id.to_string());
    assert_eq!(
        app.store()
            .calls_by_external_id(&conversation)
            .await
            .unwrap()[0]
            .lead_id,
        Some(lead)
    );
    app.stop().await;
}

async fn post_call_transcript_completes_the_call_without_duplicates(backend: Backend) {
    let (app, _) = app_with_default_tenant(backend).await;
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    // One turn arrived live, with a timestamp a little off the post-call offsets.
    let (status, _) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "agent",
            "Hi, how can I help?",
            json!(1_795_255_200.4),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let post_call = json!({
        "type": "post_call_transcription", "event_timestamp": 1_795_255_260,
        "data": {
            "agent_id": "agent_1", "conversation_id": conversation, "status": "done",
            "transcript": [
                {"role": "agent", "message": "Hi, how can I help?", "time_in_call_secs": 0},
                {"role": "user", "message": "I'd like to reschedule.", "time_in_call_secs": 3},
                {"role": "agent", "message": null, "time_in_call_secs": 5, "tool_calls": []},
                {"role": "agent", "message": "Sure, when?", "time_in_call_secs": 6}
            ],
            "metadata": {"start_time_unix_secs": 1_795_255_200, "call_duration_secs": 42},
            "analysis": {"transcript_summary": "…"},
            "has_audio": true
        }
    });
    let (status, body) = post_json(&app, TURNS, &post_call, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["turns_added"], 2);
    let call = &app
        .store()
        .calls_by_external_id(&conversation)
        .await
        .unwrap()[0];
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.duration_seconds, Some(42));
    let texts: Vec<String> = app
        .store()
        .list_turns(call.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.text)
        .collect();
    assert_eq!(
        texts,
        [
            "Hi, how can I help?",
            "I'd like to reschedule.",
            "Sure, when?"
        ]
    );
    // The platform retries the post-call webhook: nothing changes.
    let (status, body) = post_json(&app, TURNS, &post_call, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "already_completed");
    // A late turn for the ended conversation is refused, not turned into a second call.
    let (status, body) = post_json(
        &app,
        TURNS,
        &turn(
            &conversation,
            "user",
            "one more thing",
            json!(1_795_255_300),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        app.store()
            .calls_by_external_id(&conversation)
            .await
            .unwrap()
            .len(),
        1
    );
    // Other ElevenLabs events are not stored, so they are never answered 200.
    let (status, body) = post_json(
        &app,
        TURNS,
        &json!({"type":"post_call_audio","data":{"full_audio":""}}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("is not stored"), "{body}");
    app.stop().await;
}

#[actix_web::test]
async fn storage_failure_answers_500_after_three_attempts() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CutProxy::start(common::postgres_socket_addr()).await;
    let through_proxy = common::with_host(&db.url_string, proxy.addr);
    let tenant_id = Uuid::new_v4();
    let id = tenant_id.to_string();
    let app = TestApp::start_with_db(
        db,
        Some(through_proxy),
        &[
            ("CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID", id.as_str()),
            ("CALLENGINE_DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
            ("CALLENGINE_DATABASE__CONNECT_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    app.store()
        .insert_tenant(&NewTenant {
            id: Some(tenant_id),
            name: format!("t-{tenant_id}"),
            webhooks_unsigned: true,
            ..NewTenant::default()
        })
        .await
        .unwrap();
    proxy.cut();
    let body = turn("conv_down", "agent", "hello", json!(1_795_255_200));
    let (status, answer) = post_json(&app, TURNS, &body, &[]).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(
        answer["attempts"], 3,
        "three attempts before giving up: {answer}"
    );
    proxy.restore();
    // Nothing was stored and the sender was told to retry; once the database is back the
    // retry lands.
    let (status, answer) = post_json(&app, TURNS, &body, &[]).await;
    assert_eq!(status, 201, "{answer}");
    app.stop().await;
}

fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn form(params: &[(&str, &str)]) -> Vec<u8> {
    serde_urlencoded::to_string(params).unwrap().into_bytes()
}

async fn recording_callback_saves_and_enqueues_once(backend: Backend) {
    let (app, tenant_id) = app_with_default_tenant(backend).await;
    app.store()
        .add_tenant_phone_number(tenant_id, "+18005551212")
        .await
        .unwrap();
    let call_sid = format!("CA{}", Uuid::new_v4().simple());
    let params = [
        ("AccountSid", "AC00"),
        ("CallSid", call_sid.as_str()),
        ("RecordingSid", "RE0001"),
        (
            "RecordingUrl",
            "https://api.twilio.com/2010-04-01/Accounts/AC00/Recordings/RE0001",
        ),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "42"),
        ("RecordingChannels", "1"),
        ("To", "+18005551212"),
        ("From", "+14155550100"),
    ];
    let (status, text) = http_post(
        app.port,
        "/webhooks/twilio/recording",
        FORM,
        &[],
        &form(&params),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            answer["call_created"].as_bool(),
            answer["job_enqueued"].as_bool()
        ),
        (Some(true), Some(true))
    );
    // Twilio retries the callback: saved again, not enqueued again.
    let (status, text) = http_post(
        app.port,
        "/webhooks/twilio/recording",
        FORM,
        &[],
        &form(&params),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let again: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["job_enqueued"], false);
    let call = &app.store().calls_by_external_id(&call_sid).await.unwrap()[0];
    assert_eq!(
        call.tenant_id, tenant_id,
        "tenant found by the called number"
    );
    assert_eq!(call.recording_id.as_deref(), Some("RE0001"));
    assert_eq!(call.recording_status.as_deref(), Some("completed"));
    assert!(call.recording_url.as_deref().unwrap().ends_with("RE0001"));
    let jobs = app.store().list_jobs_for_call(call.id).await.unwrap();
    assert_eq!(
        jobs.iter().filter(|j| j.kind == JOB_KIND_POSTCALL).count(),
        1
    );
    // `absent` is recorded, nothing queued; missing fields are named.
    let absent_sid = format!("CA{}", Uuid::new_v4().simple());
    let absent = [
        ("CallSid", absent_sid.as_str()),
        ("RecordingSid", "RE0002"),
        ("RecordingStatus", "absent"),
        ("To", "+18005551212"),
    ];
    let (status, text) = http_post(
        app.port,
        "/webhooks/twilio/recording",
        FORM,
        &[],
        &form(&absent),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let call = &app.store().calls_by_external_id(&absent_sid).await.unwrap()[0];
    assert_eq!(call.recording_status.as_deref(), Some("absent"));
    assert!(app
        .store()
        .list_jobs_for_call(call.id)
        .await
        .unwrap()
        .is_empty());
    let (status, text) = http_post(
        app.port,
        "/webhooks/twilio/recording",
        FORM,
        &[],
        &form(&[("CallSid", "CA1")]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("RecordingSid"), "{text}");
    // Vonage-style JSON callback for a call that ran here.
    let conversation = format!("CON-{}", Uuid::new_v4());
    let (call, _) = app
        .store()
        .create_or_link_call(&callengine::store::NewCall {
            id: None,
            tenant_id,
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: Some(conversation.clone()),
            protocol: Protocol::Vonage,
            direction: callengine::store::Direction::Inbound,
            started_at: chrono::Utc::now(),
            media_metadata: None,
        })
        .await
        .unwrap();
    let vonage = json!({
        "start_time": "2026-11-21T10:00:00Z", "end_time": "2026-11-21T10:00:42Z",
        "recording_url": "https://api.nexmo.com/v1/files/aaaaaaaa", "size": 1234,
        "recording_uuid": "rec-1", "conversation_uuid": conversation, "timestamp": "2026-11-21T10:00:43Z"
    });
    let (status, body) = post_json(&app, "/webhooks/vonage/recording", &vonage, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call_id"], call.id.to_string());
    assert_eq!(
        body["job_enqueued"], false,
        "the call is still live: its completion queues the job"
    );
    let saved = app.store().get_call(call.id).await.unwrap().unwrap();
    assert_eq!(saved.recording_id.as_deref(), Some("rec-1"));
    app.stop().await;
}

#[actix_web::test]
async fn twilio_recording_signature_is_verified_with_the_public_url() {
    let tenant_id = Uuid::new_v4();
    let id = tenant_id.to_string();
    let app = TestApp::start(
        Backend::Sqlite,
        &[
            ("CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID", id.as_str()),
            (
                "CALLENGINE_WEBHOOKS__PUBLIC_BASE_URL",
                "https://calls.example.com",
            ),
        ],
    )
    .await;
    app.store()
        .insert_tenant(&NewTenant {
            id: Some(tenant_id),
            name: format!("twilio-{tenant_id}"),
            twilio_auth_token: Some(Secret::new("auth-token-1")),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let sid = format!("CA{}", Uuid::new_v4().simple());
    let params = [
        ("CallSid", sid.as_str()),
        ("RecordingSid", "RE9"),
        ("RecordingStatus", "completed"),
        ("RecordingUrl", "https://api.twilio.com/rec/RE9"),
    ];
    let url = "https://calls.example.com/webhooks/twilio/recording?x=1";
    let good = twilio_signature("auth-token-1", url, &params);
    let bad = twilio_signature("auth-token-2", url, &params);
    let path = "/webhooks/twilio/recording?x=1";
    let (status, text) = http_post(
        app.port,
        path,
        FORM,
        &[("X-Twilio-Signature", &bad)],
        &form(&params),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(app
        .store()
        .calls_by_external_id(&sid)
        .await
        .unwrap()
        .is_empty());
    let (status, text) = http_post(
        app.port,
        path,
        FORM,
        &[("X-Twilio-Signature", &good)],
        &form(&params),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        app.store().calls_by_external_id(&sid).await.unwrap().len(),
        1
    );
    app.stop().await;
}
