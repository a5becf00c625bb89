//! Finding 3 on the webhook side: a conversation id or CallSid another tenant uses is matched
//! only among the poster's own calls — turns, post-call imports and recordings never land in
//! another tenant's call.

use callengine::store::{CallStatus, NewTenant, Secret};
use serde_json::json;
use uuid::Uuid;

use crate::common::voice::TestApp;
use crate::common::{http_post, Backend};

async fn tenant(app: &TestApp, route: &str, secret: &str, twilio: &str) -> Uuid {
    app.store()
        .insert_tenant(&NewTenant {
            name: format!("x-{route}"),
            inbound_token: Some(Secret::new(route)),
            elevenlabs_webhook_secret: Some(Secret::new(secret)),
            twilio_auth_token: Some(Secret::new(twilio)),
            ..Default::default()
        })
        .await
        .unwrap()
        .id
}

async fn eleven(app: &TestApp, route: &str, secret: &str, body: &serde_json::Value) -> u16 {
    let body = body.to_string();
    let t = chrono::Utc::now().timestamp();
    let v0 =
        callengine::webhooks::signature::elevenlabs_v0(secret, &t.to_string(), body.as_bytes());
    let header = format!("t={t},v0={v0}");
    let path = format!("/webhooks/{route}/elevenlabs/transcription");
    let answer = http_post(
        app.port,
        &path,
        "application/json",
        &[("ElevenLabs-Signature", header.as_str())],
        body.as_bytes(),
    )
    .await;
    let (status, text) = answer;
    assert!(status < 300, "{status}: {text}");
    status
}

async fn webhooks_stay_in_their_tenant(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[(
            "CALLENGINE_WEBHOOKS__PUBLIC_BASE_URL",
            "https://engine.example.com",
        )],
    )
    .await;
    let a = tenant(&app, "route-a-0123456789", "secret-a", "twilio-a").await;
    let b = tenant(&app, "route-b-0123456789", "secret-b", "twilio-b").await;
    let conversation = "conv-shared-1";
    let turn = |text: &str| {
        json!({"conversation_id": conversation, "speaker": "user", "message": text,
               "timestamp": 1_795_255_200})
    };
    // A's live conversation.
    assert_eq!(
        eleven(&app, "route-a-0123456789", "secret-a", &turn("A speaks")).await,
        201
    );
    // B posts a turn and then a whole post-call transcript for the same conversation id.
    assert_eq!(
        eleven(&app, "route-b-0123456789", "secret-b", &turn("B speaks")).await,
        201
    );
    let post_call = json!({
        "type": "post_call_transcription",
        "data": {"conversation_id": conversation, "transcript": [
            {"role": "user", "message": "B's import", "time_in_call_secs": 1}],
            "metadata": {"start_time_unix_secs": 1_795_255_200, "call_duration_secs": 5}}
    });
    assert_eq!(
        eleven(&app, "route-b-0123456789", "secret-b", &post_call).await,
        200
    );
    let a_calls = app
        .store()
        .tenant_calls_by_external_id(a, conversation)
        .await
        .unwrap();
    assert_eq!(a_calls.len(), 1);
    assert_eq!(
        a_calls[0].status,
        CallStatus::Active,
        "B's import must not end A's call"
    );
    let a_turns = app.store().list_turns(a_calls[0].id).await.unwrap();
    let texts: Vec<&str> = a_turns.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["A speaks"], "only A's own turn in A's call");
    let b_calls = app
        .store()
        .tenant_calls_by_external_id(b, conversation)
        .await
        .unwrap();
    assert_eq!(b_calls.len(), 1);
    assert_ne!(b_calls[0].id, a_calls[0].id);
    // A recording callback signed by B for the same id lands on B's call, never A's.
    let path = "/webhooks/route-b-0123456789/twilio/recording";
    let form: Vec<(String, String)> = [
        ("CallSid", conversation),
        ("RecordingSid", "RE1"),
        ("RecordingStatus", "completed"),
        ("RecordingUrl", "https://api.twilio.com/r/RE1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let url = format!("https://engine.example.com{path}");
    let signature = callengine::webhooks::signature::twilio("twilio-b", &url, &form);
    let body = serde_urlencoded::to_string(&form).unwrap();
    let (status, text) = http_post(
        app.port,
        path,
        "application/x-www-form-urlencoded",
        &[("X-Twilio-Signature", signature.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(&a_calls[0].id.to_string()), "{text}");
    let a_call = app.store().get_call(a_calls[0].id).await.unwrap().unwrap();
    assert_eq!(a_call.recording_url, None, "A's call untouched");
    app.stop().await;
}

on_both_backends!(webhooks_stay_in_their_tenant);
