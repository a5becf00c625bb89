//! Call states: registered calls, linking, expiry; provider ids kept verbatim.

use callengine::store::*;
use chrono::{Duration, Utc};
use uuid::Uuid;

use crate::common::voice::*;
use crate::common::{http_request, test_options, Backend, TestDb};

on_both_backends!(
    a_registered_call_is_not_interrupted_by_a_restart,
    a_registered_call_expires_without_a_job,
    linking_starts_a_registered_call_at_its_first_audio,
    a_sip_call_id_is_accepted_and_stored_verbatim,
    an_api_registered_call_is_registered_until_media_links,
    a_recording_announced_in_progress_holds_the_job_until_it_completes,
);

fn registration(tenant_id: Uuid, registered_at: chrono::DateTime<Utc>) -> NewCall {
    NewCall {
        id: None,
        tenant_id,
        campaign_id: Some(Uuid::new_v4()),
        lead_id: Some(Uuid::new_v4()),
        phone_number: Some("+14155550100".into()),
        external_id: Some(format!("conv_{}", Uuid::new_v4().simple())),
        protocol: Protocol::Api,
        direction: Direction::Outbound,
        started_at: registered_at,
        media_metadata: None,
    }
}

/// The caller hung up at `ended`.
fn hung_up_at(ended: chrono::DateTime<Utc>) -> CallCompletion {
    CallCompletion {
        status: CallStatus::Completed,
        ended_at: ended,
        end_reason: "caller_hangup".into(),
        pending_partial: None,
        dtmf: None,
        recording_url: None,
    }
}

/// Finding 4: a node restart sweeps its live calls, but a registered call never started: it
/// stays registered, with no post-call job and so no webhook.
async fn a_registered_call_is_not_interrupted_by_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (call, _) = db
        .store
        .create_or_link_call(&registration(Uuid::new_v4(), Utc::now()))
        .await
        .unwrap();
    assert_eq!(call.status, CallStatus::Registered);
    assert_eq!(call.node_id, "test-node");
    // What a restart of this node does first.
    let swept = db
        .store
        .sweep_orphaned_calls(Some(Utc::now()))
        .await
        .unwrap();
    assert!(swept.is_empty(), "nothing to sweep: {swept:?}");
    let after = db.store.get_call(call.id).await.unwrap().unwrap();
    assert_eq!(after.status, CallStatus::Registered);
    assert!(db
        .store
        .list_jobs_for_call(call.id)
        .await
        .unwrap()
        .is_empty());
    db.cleanup().await;
}

async fn a_registered_call_expires_without_a_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (call, _) = db
        .store
        .create_or_link_call(&registration(Uuid::new_v4(), Utc::now()))
        .await
        .unwrap();
    assert_eq!(
        db.store
            .expire_registered_calls(Utc::now() - Duration::hours(1))
            .await
            .unwrap(),
        0,
        "registered within the hour: kept"
    );
    let expired = db
        .store
        .expire_registered_calls(Utc::now() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let after = db.store.get_call(call.id).await.unwrap().unwrap();
    assert_eq!(after.status, CallStatus::Expired);
    assert_eq!(after.end_reason.as_deref(), Some("never_started"));
    assert!(db
        .store
        .list_jobs_for_call(call.id)
        .await
        .unwrap()
        .is_empty());
    // An expired call takes no media.
    let link = NewCall {
        id: Some(call.id),
        ..registration(call.tenant_id, Utc::now())
    };
    assert!(matches!(
        db.store.create_or_link_call(&link).await,
        Err(StoreError::CallNotActive {
            status: CallStatus::Expired,
            ..
        })
    ));
    db.cleanup().await;
}

/// Finding 7: the call is billed from its first audio, not from its registration.
async fn linking_starts_a_registered_call_at_its_first_audio(backend: Backend) {
    let db = TestDb::new(backend).await;
    let registered_at = Utc::now() - Duration::minutes(10);
    let (call, _) = db
        .store
        .create_or_link_call(&registration(Uuid::new_v4(), registered_at))
        .await
        .unwrap();
    let other_node = db.second_store(test_options("media-node"));
    let first_audio = Utc::now();
    let (linked, outcome) = other_node
        .create_or_link_call(&NewCall {
            id: Some(call.id),
            protocol: Protocol::Twilio,
            external_id: Some("CA0123".into()),
            started_at: first_audio,
            ..registration(call.tenant_id, first_audio)
        })
        .await
        .unwrap();
    assert_eq!(outcome, LinkOutcome::Linked);
    assert_eq!(linked.status, CallStatus::Active);
    assert_eq!(
        linked.started_at.timestamp_micros(),
        first_audio.timestamp_micros()
    );
    assert_eq!(
        linked.node_id, "media-node",
        "owned by the node with the media"
    );
    let done = other_node
        .complete_call(
            call.id,
            &hung_up_at(first_audio + Duration::milliseconds(4_500)),
        )
        .await
        .unwrap();
    let CompletionOutcome::Completed(done) = done else {
        panic!("completes")
    };
    assert_eq!(done.duration_seconds, Some(5), "not ten minutes");
    db.cleanup().await;
}

/// Finding 6: a SIP Call-ID is a provider id like any other; kept as given, case included.
async fn a_sip_call_id_is_accepted_and_stored_verbatim(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let sip = format!("a84b4c76e{}@pc33.Atlanta.com", Uuid::new_v4().simple());
    let path = format!("/ws/voice/{sip}?{}", call_query());
    let mut client = VoiceClient::connect_path(app.port, &path).await;
    let call_id = client.wait_started().await;
    client.send_audio(TURN_MS, &tone()).await;
    client.wait_finals(1).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert!(log.errors.is_empty(), "{:?}", log.errors);
    let call = app.store().get_call(call_id).await.unwrap().unwrap();
    assert_eq!(call.external_id.as_deref(), Some(sip.as_str()));
    assert_eq!(call.status, CallStatus::Completed);
    app.stop().await;
}

/// `POST /api/v1/calls` registers a call; a stream that links to it starts it.
async fn an_api_registered_call_is_registered_until_media_links(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let body = serde_json::json!({
        "tenant_id": OPEN_TENANT,
        "external_id": format!("conv_{}", Uuid::new_v4().simple()),
        "direction": "outbound",
    })
    .to_string();
    let (status, answer) = http_request_json(app.port, "/api/v1/calls", &body).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["call"]["status"], "registered");
    let call_id: Uuid = answer["call"]["id"].as_str().unwrap().parse().unwrap();
    let query = format!("{}&call_id={call_id}", call_query());
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &query).await;
    assert_eq!(client.wait_started().await, call_id);
    let live = app.store().get_call(call_id).await.unwrap().unwrap();
    assert_eq!(live.status, CallStatus::Active);
    client.send_audio(TURN_MS, &tone()).await;
    client.wait_finals(1).await;
    client.close(1000).await;
    client.finished().await;
    let ended = wait_call_ended(app.store(), call_id).await;
    assert_eq!(ended.status, CallStatus::Completed);
    app.stop().await;
}

async fn http_request_json(port: u16, path: &str, body: &str) -> (u16, serde_json::Value) {
    let _ = http_request;
    let (status, text) = crate::common::http_post(
        port,
        path,
        "application/json",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        body.as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A carrier that announces a recording in progress (Twilio's `in-progress` callback) makes the
/// call's post-call job wait after the call ends; the `completed` callback wakes it.
async fn a_recording_announced_in_progress_holds_the_job_until_it_completes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let tenant = db
        .store
        .insert_tenant(&NewTenant {
            name: format!("rec-{}", Uuid::new_v4()),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let sid = format!("CA{}", Uuid::new_v4().simple());
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            protocol: Protocol::Twilio,
            external_id: Some(sid.clone()),
            ..registration(tenant, Utc::now())
        })
        .await
        .unwrap();
    let callback = |status: &str, url: Option<&str>| RecordingUpdate {
        external_id: sid.clone(),
        protocol: Protocol::Twilio,
        recording_id: "RE1".into(),
        recording_url: url.map(str::to_string),
        status: status.into(),
        duration_secs: None,
        tenant_id: tenant,
        phone_number: None,
    };
    db.store
        .record_recording(&callback("in-progress", None))
        .await
        .unwrap();
    assert!(
        db.store
            .get_call(call.id)
            .await
            .unwrap()
            .unwrap()
            .recording_expected
    );
    let ended = Utc::now();
    db.store
        .complete_call(call.id, &hung_up_at(ended))
        .await
        .unwrap();
    let row = db.store.get_call(call.id).await.unwrap().unwrap();
    assert_eq!(row.postcall_status.as_deref(), Some(POSTCALL_WAITING));
    let job = &db.store.list_jobs_for_call(call.id).await.unwrap()[0];
    assert!(
        job.run_at > Utc::now() + Duration::seconds(60),
        "held for postcall.recording_wait_secs: due {}",
        job.run_at
    );
    let outcome = db
        .store
        .record_recording(&callback(
            "completed",
            Some("https://api.twilio.com/RE1.wav"),
        ))
        .await
        .unwrap();
    assert!(outcome.job_enqueued, "the waiting job was woken");
    let job = &db.store.list_jobs_for_call(call.id).await.unwrap()[0];
    assert!(job.run_at <= Utc::now(), "due now: {}", job.run_at);
    db.cleanup().await;
}
