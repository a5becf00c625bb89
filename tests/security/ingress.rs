//! Findings 1, 3, 9 and 13: every media ingress admits only a known tenant that proves itself,
//! caps apply on every ingress, links never cross tenants nor join a live call, and tenant
//! secrets are not stored in the clear.

use std::time::Duration;

use callengine::store::{NewCall, NewTenant, Protocol, Secret, StoreError};
use uuid::Uuid;

use crate::common::voice::{call_query, wait_until, TestApp, VoiceClient};
use crate::common::Backend;

const MEDIA_TOKEN: &str = "media-token-0123456789";

async fn tenant(app: &TestApp, token: Option<&str>, cap: Option<i32>) -> Uuid {
    app.store()
        .insert_tenant(&NewTenant {
            name: format!("t-{}", Uuid::new_v4()),
            media_token: token.map(Secret::new),
            max_concurrent_calls: cap,
            ..Default::default()
        })
        .await
        .unwrap()
        .id
}

fn query(tenant: Uuid, extra: &str) -> String {
    format!(
        "tenant_id={tenant}&campaign_id={}&lead_id={}{extra}",
        Uuid::new_v4(),
        Uuid::new_v4()
    )
}

/// Waits until the server closed the socket; returns the close code and the error events.
async fn refused(client: VoiceClient) -> (u16, Vec<String>) {
    let log = client.finished().await;
    let code = log.closes.first().map_or(0, |c| c.0);
    (code, log.errors)
}

async fn voice_admission(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let secured = tenant(&app, Some(MEDIA_TOKEN), None).await;
    let cases = [
        // A tenant id with no tenant row.
        (query(Uuid::new_v4(), ""), 1008),
        // Known tenant, no token.
        (query(secured, ""), 1008),
        // Known tenant, wrong token.
        (query(secured, "&token=wrong-token-0123456789"), 1008),
    ];
    for (q, code) in cases {
        let client = VoiceClient::connect(app.port, Uuid::new_v4(), &q).await;
        let (got, errors) = refused(client).await;
        assert_eq!(got, code, "{q}: {errors:?}");
        assert!(!errors.is_empty(), "a refusal names its reason");
        assert!(errors.iter().all(|e| !e.contains(&secured.to_string())));
    }
    assert_eq!(
        app.store().count_tenant_calls(secured).await.unwrap(),
        0,
        "a refused stream leaves no row"
    );
    // The right token, as a query parameter: admitted.
    let mut ok = VoiceClient::connect(
        app.port,
        Uuid::new_v4(),
        &query(secured, &format!("&token={MEDIA_TOKEN}")),
    )
    .await;
    ok.wait_started().await;
    ok.send_text(r#"{"type":"stop"}"#).await;
    let log = ok.finished().await;
    assert_eq!(log.closes.first().map(|c| c.0), Some(1000));
    // The seed's contract for an open tenant is unchanged.
    let mut open = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    open.wait_started().await;
    open.send_text(r#"{"type":"stop"}"#).await;
    assert_eq!(
        open.finished().await.closes.first().map(|c| c.0),
        Some(1000)
    );
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_voice_admits_only_known_tenants_with_their_token() {
    voice_admission(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_voice_admits_only_known_tenants_with_their_token() {
    voice_admission(Backend::Postgres).await;
}

async fn tenant_cap_on_voice(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let capped = tenant(&app, Some(MEDIA_TOKEN), Some(1)).await;
    let auth = format!("&token={MEDIA_TOKEN}");
    let mut first = VoiceClient::connect(app.port, Uuid::new_v4(), &query(capped, &auth)).await;
    first.wait_started().await;
    let second = VoiceClient::connect(app.port, Uuid::new_v4(), &query(capped, &auth)).await;
    let (code, errors) = refused(second).await;
    assert_eq!(code, 1013, "{errors:?}");
    first.send_text(r#"{"type":"stop"}"#).await;
    first.finished().await;
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_tenant_call_cap_applies_on_voice() {
    tenant_cap_on_voice(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_tenant_call_cap_applies_on_voice() {
    tenant_cap_on_voice(Backend::Postgres).await;
}

async fn no_cross_tenant_link(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let victim = tenant(&app, Some(MEDIA_TOKEN), None).await;
    let attacker_token = "attacker-token-0123456789";
    let attacker = tenant(&app, Some(attacker_token), None).await;
    // The victim's live call.
    let mut live = VoiceClient::connect(
        app.port,
        Uuid::new_v4(),
        &query(victim, &format!("&token={MEDIA_TOKEN}")),
    )
    .await;
    let victim_call = live.wait_started().await;
    // The attacker links with its own valid credentials to the victim's call id.
    let intruder = VoiceClient::connect(
        app.port,
        Uuid::new_v4(),
        &query(
            attacker,
            &format!("&token={attacker_token}&call_id={victim_call}"),
        ),
    )
    .await;
    let (code, errors) = refused(intruder).await;
    assert_eq!(code, 1008, "{errors:?}");
    assert!(errors.iter().all(|e| !e.contains("active")), "{errors:?}");
    // A second stream of the same tenant cannot silently join the live call either.
    let twin = VoiceClient::connect(
        app.port,
        Uuid::new_v4(),
        &query(
            victim,
            &format!("&token={MEDIA_TOKEN}&call_id={victim_call}"),
        ),
    )
    .await;
    let (code, errors) = refused(twin).await;
    assert_eq!(code, 1008, "{errors:?}");
    live.send_pcm(&crate::common::voice::tone()).await;
    live.send_text(r#"{"type":"stop"}"#).await;
    let log = live.finished().await;
    let call = app.store().get_call(victim_call).await.unwrap().unwrap();
    assert_eq!(call.tenant_id, victim);
    let turns = app.store().list_turns(victim_call).await.unwrap();
    let finals = turns.iter().filter(|t| t.is_final).count();
    assert_eq!(finals, log.finals.len(), "only the victim's own turns");
    // The store refuses the same link directly, and by a colliding external id.
    let foreign = NewCall {
        id: Some(victim_call),
        tenant_id: attacker,
        campaign_id: None,
        lead_id: None,
        phone_number: None,
        external_id: None,
        protocol: Protocol::Voice,
        direction: callengine::store::Direction::Inbound,
        started_at: chrono::Utc::now(),
        media_metadata: None,
    };
    assert!(matches!(
        app.store().create_or_link_call(&foreign).await,
        Err(StoreError::CallUnavailable)
    ));
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_no_link_into_another_tenants_or_a_live_call() {
    no_cross_tenant_link(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_no_link_into_another_tenants_or_a_live_call() {
    no_cross_tenant_link(Backend::Postgres).await;
}

async fn registration_does_not_leak(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let a_token = "tenant-a-api-token-0123";
    let b_token = "tenant-b-api-token-0123";
    for token in [a_token, b_token] {
        app.store()
            .insert_tenant(&NewTenant {
                name: format!("api-{token}"),
                api_token: Some(Secret::new(token)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let body = br#"{"external_id":"CA-shared-0001","phone_number":"+14155550100"}"#;
    let post = |token: &'static str| {
        let port = app.port;
        async move {
            let auth = format!("Bearer {token}");
            crate::common::http_post(
                port,
                "/api/v1/calls",
                "application/json",
                &[("Authorization", auth.as_str())],
                body,
            )
            .await
        }
    };
    let (status, first) = post(a_token).await;
    assert_eq!(status, 201, "{first}");
    let a_call: serde_json::Value = serde_json::from_str(&first).unwrap();
    let a_id = a_call["call"]["id"].as_str().unwrap().to_string();
    // Transport ids are a per-tenant namespace: B gets a call of its own, learns nothing of
    // A's, and cannot block A's id either.
    let (status, second) = post(b_token).await;
    assert_eq!(status, 201, "{second}");
    assert!(
        !second.contains(&a_id),
        "tenant B must not see A's call: {second}"
    );
    let (status, again) = post(a_token).await;
    assert_eq!(status, 201, "{again}");
    assert!(
        again.contains(&a_id),
        "A still links to its own call: {again}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_registering_a_colliding_external_id_reveals_nothing() {
    registration_does_not_leak(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_registering_a_colliding_external_id_reveals_nothing() {
    registration_does_not_leak(Backend::Postgres).await;
}

async fn secrets_at_rest(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let tenant = app
        .store()
        .insert_tenant(&NewTenant {
            name: "sealed".into(),
            webhook_url: Some("https://hooks.example.com/x".into()),
            webhook_secret: Some(Secret::new("whsec-plain-text-secret")),
            twilio_auth_token: Some(Secret::new("twilio-plain-auth-token")),
            media_token: Some(Secret::new("media-plain-token-0123")),
            inbound_token: Some(Secret::new("inbound-plain-token-0123")),
            postcall_config: Some(serde_json::json!({
                "recording_auth": {"username": "AC1", "password": "recording-plain-password"}
            })),
            ..Default::default()
        })
        .await
        .unwrap();
    let raw = app.store().raw_tenant_row_text(tenant.id).await.unwrap();
    for plain in [
        "whsec-plain-text-secret",
        "twilio-plain-auth-token",
        "media-plain-token-0123",
        "inbound-plain-token-0123",
        "recording-plain-password",
    ] {
        assert!(!raw.contains(plain), "{plain} stored in the clear: {raw}");
    }
    // The engine still uses them.
    let read = app.store().get_tenant(tenant.id).await.unwrap().unwrap();
    assert_eq!(
        read.twilio_auth_token.as_ref().map(Secret::expose),
        Some("twilio-plain-auth-token")
    );
    assert_eq!(
        read.postcall_config.unwrap()["recording_auth"]["password"],
        "recording-plain-password"
    );
    assert!(app
        .store()
        .tenant_by_inbound_token("inbound-plain-token-0123")
        .await
        .unwrap()
        .is_some());
    // A webhook URL without a secret would mean unsigned webhooks: refused.
    let unsigned = app
        .store()
        .insert_tenant(&NewTenant {
            name: "unsigned-hooks".into(),
            webhook_url: Some("https://hooks.example.com/x".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(unsigned, Err(StoreError::InvalidInput(_))));
    // Short tokens are refused.
    let short = app
        .store()
        .insert_tenant(&NewTenant {
            name: "short".into(),
            media_token: Some(Secret::new("abc")),
            ..Default::default()
        })
        .await;
    assert!(matches!(short, Err(StoreError::InvalidInput(_))));
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_tenant_secrets_are_sealed_at_rest() {
    secrets_at_rest(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_tenant_secrets_are_sealed_at_rest() {
    secrets_at_rest(Backend::Postgres).await;
}

/// AudioSocket: an unknown listener tenant is refused and the tenant's cap applies.
async fn audiosocket_admission(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = crate::common::TestDb::new(backend).await;
    let capped = db
        .store
        .insert_tenant(&NewTenant {
            name: "as".into(),
            max_concurrent_calls: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let tenant = capped.to_string();
    let app = TestApp::start_with_db(
        db,
        None,
        &[
            ("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:0"),
            ("CALLENGINE_MEDIA__AUDIOSOCKET_TENANT_ID", tenant.as_str()),
        ],
    )
    .await;
    let port = app.audiosocket_port.unwrap();
    let open_session = || async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut uuid = vec![0x01, 0x00, 0x10];
        uuid.extend_from_slice(Uuid::new_v4().as_bytes());
        tcp.write_all(&uuid).await.unwrap();
        tcp
    };
    let mut first = open_session().await;
    let audio = vec![0u8; 320];
    let mut frame = vec![0x10, 0x01, 0x40];
    frame.extend_from_slice(&audio);
    first.write_all(&frame).await.unwrap();
    let live = wait_until(Duration::from_secs(5), || Some(())).await;
    assert!(live.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second is over the tenant's cap: an AudioSocket error frame, then the socket ends.
    let mut second = open_session().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the refused session must be closed");
    assert_eq!(answer.first(), Some(&0xff), "error frame, got {answer:?}");
    first.write_all(&[0x00, 0x00, 0x00]).await.unwrap();
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_audiosocket_tenant_cap_applies() {
    audiosocket_admission(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_audiosocket_tenant_cap_applies() {
    audiosocket_admission(Backend::Postgres).await;
}

/// AudioSocket whose listener tenant has no row: every session refused with an error frame.
async fn audiosocket_unknown_tenant(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let missing = Uuid::new_v4().to_string();
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:0"),
            ("CALLENGINE_MEDIA__AUDIOSOCKET_TENANT_ID", missing.as_str()),
        ],
    )
    .await;
    let port = app.audiosocket_port.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut uuid = vec![0x01, 0x00, 0x10];
    let external = Uuid::new_v4();
    uuid.extend_from_slice(external.as_bytes());
    tcp.write_all(&uuid).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the refused session must be closed");
    assert_eq!(answer.first(), Some(&0xff), "error frame, got {answer:?}");
    assert!(app
        .store()
        .calls_by_external_id(&external.to_string())
        .await
        .unwrap()
        .is_empty());
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_audiosocket_refuses_an_unknown_listener_tenant() {
    audiosocket_unknown_tenant(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_audiosocket_refuses_an_unknown_listener_tenant() {
    audiosocket_unknown_tenant(Backend::Postgres).await;
}
