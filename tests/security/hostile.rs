//! The hostile-input catalogue of docs/security.md: every input is answered with a clear error
//! (a close code with a reason, or an HTTP status with a JSON error) and nothing is stored —
//! checked against the database after each surface's run. Numbers match the table in the doc.

use std::time::Duration;

use callengine::store::{NewTenant, Secret};
use uuid::Uuid;

use crate::common::voice::{call_query, TestApp, VoiceClient, OPEN_TENANT};
use crate::common::{http_post, http_request, Backend};

const MEDIA: &str = "hostile-media-token-0123";
const INBOUND: &str = "hostile-inbound-token-0123";
const API_A: &str = "hostile-api-token-a-0123";
const API_B: &str = "hostile-api-token-b-0123";

struct World {
    app: TestApp,
    secured: Uuid,
    other: Uuid,
}

async fn world(backend: Backend) -> World {
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_EGRESS__ALLOW_HTTP", "false"),
            ("CALLENGINE_EGRESS__ALLOW_PRIVATE", "false"),
            ("CALLENGINE_EGRESS__RECORDING_HOSTS", ""),
            ("CALLENGINE_MEDIA__HANDSHAKE_TIMEOUT_MS", "400"),
            (
                "CALLENGINE_WEBHOOKS__PUBLIC_BASE_URL",
                "https://engine.example.com",
            ),
            ("CALLENGINE_WEBHOOKS__MAX_BODY_BYTES", "4096"),
        ],
    )
    .await;
    let secured = app
        .store()
        .insert_tenant(&NewTenant {
            name: "secured".into(),
            media_token: Some(Secret::new(MEDIA)),
            twilio_auth_token: Some(Secret::new("twilio-auth-token")),
            vonage_signature_secret: Some(Secret::new("vonage-signature-secret")),
            elevenlabs_webhook_secret: Some(Secret::new("elevenlabs-secret")),
            inbound_token: Some(Secret::new(INBOUND)),
            api_token: Some(Secret::new(API_A)),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let other = app
        .store()
        .insert_tenant(&NewTenant {
            name: "other".into(),
            media_token: Some(Secret::new("other-media-token-0123")),
            inbound_token: Some(Secret::new("other-inbound-token-01")),
            api_token: Some(Secret::new(API_B)),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    World {
        app,
        secured,
        other,
    }
}

async fn total_calls(w: &World) -> i64 {
    let mut n = 0;
    for t in [w.secured, w.other, OPEN_TENANT] {
        n += w.app.store().count_tenant_calls(t).await.unwrap();
    }
    n
}

/// Opens a WebSocket on `path`, sends `messages` (text) and returns the close code and reason.
async fn ws_case(port: u16, path: &str, messages: &[&str], binary_first: bool) -> (u16, String) {
    let mut client = VoiceClient::connect_path(port, path).await;
    // The server may close as soon as it has seen enough: later sends may find it closed.
    if binary_first {
        client.try_send_binary(vec![0u8; 640]).await;
    }
    for m in messages {
        client.try_send_text(m).await;
    }
    let log = client.finished().await;
    log.closes
        .first()
        .cloned()
        .unwrap_or((0, format!("no close; errors {:?}", log.errors)))
}

async fn media_catalogue(backend: Backend) {
    let w = world(backend).await;
    let port = w.app.port;
    let t = w.secured;
    let u = || Uuid::new_v4();
    let q = |extra: &str| format!("campaign_id={}&lead_id={}{extra}", u(), u());
    let live = {
        let c = VoiceClient::connect(port, u(), &call_query()).await;
        let id = c.wait_started().await;
        (c, id)
    };
    let foreign_call = live.1;
    let vonage_ok = |tenant: &str| {
        format!(
            r#"{{"event":"websocket:connected","content-type":"audio/l16;rate=16000","tenant_id":"{tenant}","token":"{MEDIA}"}}"#
        )
    };
    let cases: Vec<(u32, String, Vec<String>, bool, u16)> = vec![
        (
            1,
            format!("/ws/voice/{}?{}", u(), q("")),
            vec![],
            false,
            4000,
        ),
        (
            2,
            format!("/ws/voice/{}?tenant_id=nope&{}", u(), q("")),
            vec![],
            false,
            4000,
        ),
        (
            3,
            // A provider id with a control character (any printable id up to 255 is accepted).
            format!("/ws/voice/bad%01id?tenant_id={t}&{}", q("")),
            vec![],
            false,
            4000,
        ),
        (
            4,
            format!("/ws/voice/{}?tenant_id={t}&{}", u(), q("&call_id=42")),
            vec![],
            false,
            4000,
        ),
        (
            5,
            format!(
                "/ws/voice/{}?tenant_id={t}&{}",
                u(),
                q(&format!("&phone_number={}", "9".repeat(65)))
            ),
            vec![],
            false,
            4000,
        ),
        (
            6,
            format!("/ws/voice/{}?tenant_id={t}&campaign_id=%zz", u()),
            vec![],
            false,
            4000,
        ),
        (
            7,
            format!("/ws/voice/{}?tenant_id={}&{}", u(), u(), q("")),
            vec![],
            false,
            1008,
        ),
        (
            8,
            format!(
                "/ws/voice/{}?tenant_id={t}&{}",
                u(),
                q("&token=wrong-wrong-wrong-wrong")
            ),
            vec![],
            false,
            1008,
        ),
        (
            9,
            format!(
                "/ws/voice/{}?tenant_id={t}&{}",
                u(),
                q("&token=other-media-token-0123")
            ),
            vec![],
            false,
            1008,
        ),
        (
            10,
            format!(
                "/ws/voice/{}?tenant_id={t}&{}",
                u(),
                q(&format!("&token={MEDIA}&call_id={foreign_call}"))
            ),
            vec![],
            false,
            1008,
        ),
        (
            11,
            format!(
                "/ws/voice/{}?tenant_id={OPEN_TENANT}&{}",
                u(),
                q(&format!("&call_id={foreign_call}"))
            ),
            vec![],
            false,
            1008,
        ),
        (12, "/ws/vonage".into(), vec![], true, 4000),
        (
            13,
            "/ws/vonage".into(),
            vec!["{not json".into()],
            false,
            4000,
        ),
        (
            14,
            "/ws/vonage".into(),
            vec![vonage_ok(&t.to_string()).replace("16000", "44100")],
            false,
            4000,
        ),
        (
            15,
            "/ws/vonage".into(),
            vec![vonage_ok(&u().to_string())],
            false,
            1008,
        ),
        (
            16,
            "/ws/twilio".into(),
            vec![r#"{"event":"start","start":{}}"#.into()],
            false,
            4000,
        ),
        (
            17,
            "/ws/twilio".into(),
            vec![format!(
                r#"{{"event":"start","sequenceNumber":"1","start":{{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-opus","sampleRate":8000,"channels":1}},"customParameters":{{"tenant_id":"{t}","token":"{MEDIA}"}}}}}}"#
            )],
            false,
            4000,
        ),
        (
            18,
            "/ws/twilio".into(),
            vec![format!(
                r#"{{"event":"start","sequenceNumber":"1","start":{{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"tenant_id":"{t}","token":"{MEDIA}"}}}}}}"#
            )],
            false,
            1008,
        ),
        (
            19,
            format!("/ws/audiofork?tenant_id={}&token=x", u()),
            vec![r#"{"sampleRate":8000}"#.into()],
            false,
            1008,
        ),
        (20, "/ws/vonage".into(), vec![], false, 4000),
        (49, "/ws/twilio".into(), vec![format!(r#"{{"event":"start","sequenceNumber":"1","start":{{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA9","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"tenant_id":"{}","token":"{MEDIA}"}}}}}}"#, u())], false, 1008),
        (50, "/ws/twilio".into(), vec![r#"{"event":"start","sequenceNumber":"1","start":{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA9","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":191999,"channels":1},"customParameters":{}}}"#.into()], false, 4000),
    ];
    let before = total_calls(&w).await;
    for (n, path, messages, binary_first, expected) in cases {
        let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
        let (code, reason) = ws_case(port, &path, &messages, binary_first).await;
        assert_eq!(code, expected, "hostile input {n} ({path}): {reason}");
        assert!(
            !reason.is_empty(),
            "hostile input {n}: a refusal names its reason"
        );
        assert!(
            reason.len() <= 123,
            "hostile input {n}: close reason too long"
        );
    }
    assert_eq!(
        total_calls(&w).await,
        before,
        "a refused stream stores nothing"
    );
    // The open call may have ended by its idle timeout meanwhile; either way it ends.
    let (mut c, _) = live;
    c.try_send_text(r#"{"type":"stop"}"#).await;
    c.finished().await;
    w.app.stop().await;
}

#[actix_rt::test]
async fn sqlite_hostile_media_inputs_are_refused_and_store_nothing() {
    media_catalogue(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_hostile_media_inputs_are_refused_and_store_nothing() {
    media_catalogue(Backend::Postgres).await;
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    serde_urlencoded::to_string(pairs).unwrap().into_bytes()
}

fn twilio_signed(path: &str, body: &[u8]) -> String {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap();
    let url = format!("https://engine.example.com{path}");
    callengine::webhooks::signature::twilio("twilio-auth-token", &url, &params)
}

async fn webhook_catalogue(backend: Backend) {
    let w = world(backend).await;
    let port = w.app.port;
    let twilio_path = format!("/webhooks/{INBOUND}/twilio/recording");
    let vonage_path = format!("/webhooks/{INBOUND}/vonage/recording");
    let eleven_path = format!("/webhooks/{INBOUND}/elevenlabs/transcription");
    let form_type = "application/x-www-form-urlencoded";
    let rec = |url: &str, duration: &str| {
        form(&[
            ("CallSid", "CA77"),
            ("RecordingSid", "RE77"),
            ("RecordingStatus", "completed"),
            ("RecordingUrl", url),
            ("RecordingDuration", duration),
        ])
    };
    let now = chrono::Utc::now().timestamp();
    let vonage_body = |url: &str| {
        serde_json::json!({"recording_url": url, "recording_uuid": "r1", "conversation_uuid": "CON77"})
            .to_string()
            .into_bytes()
    };
    let eleven_body =
        br#"{"conversation_id":"conv77","speaker":"user","message":"hi","timestamp":1700000000}"#
            .to_vec();
    let eleven_sig = |t: i64, body: &[u8]| {
        format!(
            "t={t},v0={}",
            callengine::webhooks::signature::elevenlabs_v0(
                "elevenlabs-secret",
                &t.to_string(),
                body
            )
        )
    };
    // (number, path, content type, headers, body, expected status)
    type Case = (
        u32,
        String,
        &'static str,
        Vec<(String, String)>,
        Vec<u8>,
        u16,
    );
    let mut cases: Vec<Case> = Vec::new();
    let signed = |path: &str, body: Vec<u8>| {
        let sig = twilio_signed(path, &body);
        (vec![("X-Twilio-Signature".to_string(), sig)], body)
    };
    let missing_sid = form(&[("RecordingSid", "RE1"), ("RecordingStatus", "completed")]);
    let (h, b) = signed(&twilio_path, missing_sid);
    cases.push((21, twilio_path.clone(), form_type, h, b, 400));
    let (h, b) = signed(&twilio_path, rec("https://api.twilio.com/r", "-5"));
    cases.push((22, twilio_path.clone(), form_type, h, b, 400));
    cases.push((
        23,
        twilio_path.clone(),
        form_type,
        vec![],
        b"%zz=%zz&&==".to_vec(),
        400,
    ));
    cases.push((
        24,
        twilio_path.clone(),
        form_type,
        vec![],
        vec![b'a'; 8192],
        400,
    ));
    cases.push((
        25,
        twilio_path.clone(),
        form_type,
        vec![],
        rec("https://api.twilio.com/r", "5"),
        401,
    ));
    cases.push((
        26,
        twilio_path.clone(),
        form_type,
        vec![("X-Twilio-Signature".into(), "AAAA".into())],
        rec("https://api.twilio.com/r", "5"),
        401,
    ));
    for (n, url) in [
        (27, "https://169.254.169.254/latest/meta-data/"),
        (28, "http://api.twilio.com/r"),
        (29, "file:///etc/passwd"),
        (30, "https://attacker.example/r.wav"),
        (31, "https://10.0.0.5/r.wav"),
    ] {
        let (h, b) = signed(&twilio_path, rec(url, "5"));
        cases.push((n, twilio_path.clone(), form_type, h, b, 400));
    }
    let bearer = |body: &[u8], secret: &str, iat: i64| {
        vec![(
            "Authorization".to_string(),
            format!(
                "Bearer {}",
                callengine::webhooks::signature::sign_vonage(secret, body, iat)
            ),
        )]
    };
    let bad_json = b"{not json".to_vec();
    cases.push((
        32,
        vonage_path.clone(),
        "application/json",
        bearer(&bad_json, "vonage-signature-secret", now),
        bad_json,
        400,
    ));
    let no_url = br#"{"recording_uuid":"r1","conversation_uuid":"CON77"}"#.to_vec();
    cases.push((
        33,
        vonage_path.clone(),
        "application/json",
        bearer(&no_url, "vonage-signature-secret", now),
        no_url,
        400,
    ));
    let body = vonage_body("https://api.nexmo.com/v1/files/x");
    cases.push((
        34,
        vonage_path.clone(),
        "application/json",
        bearer(b"other body", "vonage-signature-secret", now),
        body.clone(),
        401,
    ));
    cases.push((
        35,
        vonage_path.clone(),
        "application/json",
        bearer(&body, "vonage-signature-secret", now - 3 * 3600),
        body.clone(),
        401,
    ));
    let none_alg = "eyJhbGciOiJub25lIn0.eyJpYXQiOjB9.".to_string();
    cases.push((
        36,
        vonage_path.clone(),
        "application/json",
        vec![("Authorization".into(), format!("Bearer {none_alg}"))],
        body,
        401,
    ));
    cases.push((
        37,
        eleven_path.clone(),
        "application/json",
        vec![],
        eleven_body.clone(),
        401,
    ));
    cases.push((
        38,
        eleven_path.clone(),
        "application/json",
        vec![(
            "ElevenLabs-Signature".into(),
            eleven_sig(now - 7200, &eleven_body),
        )],
        eleven_body.clone(),
        401,
    ));
    let bad = b"{\"conversation_id\":".to_vec();
    cases.push((
        39,
        eleven_path.clone(),
        "application/json",
        vec![("ElevenLabs-Signature".into(), eleven_sig(now, &bad))],
        bad,
        400,
    ));
    // A tenant with no ElevenLabs secret: refused rather than accepted unsigned.
    cases.push((
        40,
        "/webhooks/other-inbound-token-01/elevenlabs/transcription".into(),
        "application/json",
        vec![],
        eleven_body.clone(),
        401,
    ));
    cases.push((
        41,
        "/webhooks/no-such-token-000000/twilio/recording".into(),
        form_type,
        vec![],
        rec("https://api.twilio.com/r", "5"),
        404,
    ));
    let before = total_calls(&w).await;
    for (n, path, content_type, headers, body, expected) in cases {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, text) = http_post(port, &path, content_type, &headers, &body).await;
        assert_eq!(status, expected, "hostile input {n} ({path}): {text}");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("hostile input {n}: not a JSON error: {text}"));
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "hostile input {n}: {text}"
        );
    }
    assert_eq!(
        total_calls(&w).await,
        before,
        "refused webhooks store nothing"
    );
    w.app.stop().await;
}

#[actix_rt::test]
async fn sqlite_hostile_webhooks_are_refused_and_store_nothing() {
    webhook_catalogue(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_hostile_webhooks_are_refused_and_store_nothing() {
    webhook_catalogue(Backend::Postgres).await;
}

async fn api_catalogue(backend: Backend) {
    let w = world(backend).await;
    let port = w.app.port;
    // Tenant A's registered call.
    let auth_a = format!("Bearer {API_A}");
    let (status, body) = http_post(
        port,
        "/api/v1/calls",
        "application/json",
        &[("Authorization", auth_a.as_str())],
        br#"{"external_id":"CA-api-0001"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    let a_id = a["call"]["id"].as_str().unwrap().to_string();
    let before = total_calls(&w).await;
    // 42: tenant B reads A's call: 404, as if it did not exist.
    let (status, text) =
        http_request(port, "GET", &format!("/api/v1/calls/{a_id}"), Some(API_B)).await;
    assert_eq!(status, 404, "hostile input 42: {text}");
    assert!(!text.contains("CA-api-0001"));
    // 43: tenant B hangs up A's call.
    let (status, _) = http_request(
        port,
        "POST",
        &format!("/api/v1/calls/{a_id}/hangup"),
        Some(API_B),
    )
    .await;
    assert_eq!(status, 404, "hostile input 43");
    // 44: a registration whose external id is 300 characters long.
    let auth_b = format!("Bearer {API_B}");
    let long = format!(r#"{{"external_id":"{}"}}"#, "x".repeat(300));
    let (status, text) = http_post(
        port,
        "/api/v1/calls",
        "application/json",
        &[("Authorization", auth_b.as_str())],
        long.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "hostile input 44: {text}");
    // 45: no token, 46: a wrong token.
    let (status, _) = http_request(port, "GET", "/api/v1/calls", None).await;
    assert_eq!(status, 401, "hostile input 45");
    let (status, _) = http_request(
        port,
        "GET",
        "/api/v1/calls",
        Some("wrong-token-wrong-token"),
    )
    .await;
    assert_eq!(status, 401, "hostile input 46");
    // 47: tenant B lists calls filtered by A's tenant id: sees none of them.
    let (status, text) = http_request(
        port,
        "GET",
        "/api/v1/calls/by-external/CA-api-0001",
        Some(API_B),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!text.contains(&a_id), "hostile input 47: {text}");
    // 48: a slow client that never finishes its request headers is cut off.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 512];
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "hostile input 48: a slow request must be cut off"
    );
    assert_eq!(total_calls(&w).await, before);
    w.app.stop().await;
}

#[actix_rt::test]
async fn sqlite_hostile_api_requests_are_refused() {
    api_catalogue(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_hostile_api_requests_are_refused() {
    api_catalogue(Backend::Postgres).await;
}
