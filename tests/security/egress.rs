//! Findings 2, 5, 6, 8 and 10: recording callbacks cannot make the engine fetch from where it
//! should not, nor send a tenant's credentials anywhere but the carrier; callbacks must be
//! signed; decode bombs are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callengine::egress::{EgressError, EgressPolicy, EgressSettings, RecordingSource};
use callengine::store::{NewTenant, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::common::voice::TestApp;
use crate::common::{http_post, Backend};

/// A local HTTP server that records every request head it gets and answers with `answer`.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(answer: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        Self { port, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn strict_with(allow_private: bool) -> EgressPolicy {
    EgressPolicy::from_settings(&EgressSettings {
        allow_http: true,
        allow_private,
        recording_hosts: "127.0.0.1,localhost".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn recordings_on_private_addresses_are_never_fetched() {
    let server = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into()).await;
    let policy = strict_with(false);
    for url in [
        format!("http://127.0.0.1:{}/rec.wav", server.port),
        format!("http://localhost:{}/rec.wav", server.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://[::1]:{}/rec.wav", server.port),
    ] {
        let result = tokio::task::spawn_blocking({
            let policy = policy.clone();
            move || {
                let checked = policy.check_url(&url)?;
                policy.get(
                    &checked,
                    Some(("AC1", "secret")),
                    1024,
                    Duration::from_secs(2),
                )
            }
        })
        .await
        .unwrap();
        assert!(matches!(result, Err(EgressError::Refused(_))), "{result:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_not_followed_and_credentials_stay_home() {
    // The "carrier" (allowed for this test) redirects to the attacker's server on another
    // host name: the hop is checked again, and the Basic credentials are not sent there.
    let attacker = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into()).await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://localhost:{}/steal\r\nContent-Length: 0\r\n\r\n",
        attacker.port
    );
    let carrier = Recorder::start(redirect).await;
    let policy = strict_with(true);
    let url = format!("http://127.0.0.1:{}/rec.wav", carrier.port);
    let body = tokio::task::spawn_blocking(move || {
        let checked = policy.check_url(&url)?;
        policy.get(
            &checked,
            Some(("AC1", "s3cret")),
            1024,
            Duration::from_secs(2),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(body, b"ok");
    let to_carrier = carrier.requests();
    assert!(to_carrier[0]
        .to_ascii_lowercase()
        .contains("authorization: basic"));
    let stolen = attacker.requests();
    assert_eq!(stolen.len(), 1);
    assert!(
        !stolen[0].to_ascii_lowercase().contains("authorization"),
        "credentials followed the redirect: {}",
        stolen[0]
    );
    // With private addresses refused, the same redirect into loopback is not followed.
    let strict = strict_with(false);
    let redirect_to_metadata = EgressPolicy::check_url(
        &strict,
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    );
    assert!(matches!(redirect_to_metadata, Err(EgressError::Refused(_))));
}

#[test]
fn recording_hosts_are_allow_listed_per_carrier() {
    let policy = EgressPolicy::default();
    let twilio = "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1.wav";
    assert!(policy
        .check_recording_url(twilio, RecordingSource::Twilio, &[])
        .is_ok());
    for (url, source) in [
        ("https://attacker.example/rec.wav", RecordingSource::Twilio),
        ("http://api.twilio.com/rec.wav", RecordingSource::Twilio),
        (
            "https://api.twilio.com@attacker.example/x",
            RecordingSource::Twilio,
        ),
        (
            "file:///var/lib/callengine/recordings/other.wav",
            RecordingSource::Other,
        ),
        (twilio, RecordingSource::Vonage),
    ] {
        assert!(
            policy.check_recording_url(url, source, &[]).is_err(),
            "{url} should be refused"
        );
    }
}

#[test]
fn a_decode_bomb_is_refused() {
    // A WAV header that announces ten hours of 8 kHz audio, with little data behind it: refused
    // from the header, before any allocation of that size.
    let mut wav = Vec::new();
    let data_len: u32 = 8_000 * 2 * 3600 * 10;
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8_000u32.to_le_bytes());
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(&vec![0u8; 64_000]);
    let err = callengine::postcall::audio::decode_to_16k_mono_capped(&wav, Some("wav"), 3600)
        .unwrap_err();
    assert!(err.contains("longer than"), "{err}");
    // And a real 3 s file past a 2 s cap is stopped while decoding.
    let short: Vec<u8> = [
        &wav[..40],
        &(48_000u32).to_le_bytes()[..],
        &vec![0u8; 48_000][..],
    ]
    .concat();
    let err =
        callengine::postcall::audio::decode_to_16k_mono_capped(&short, Some("wav"), 2).unwrap_err();
    assert!(err.contains("longer than"), "{err}");
}

/// The strict defaults (https only, public addresses only) with signed tenants.
async fn strict_app(backend: Backend) -> TestApp {
    TestApp::start(
        backend,
        &[
            ("CALLENGINE_EGRESS__ALLOW_HTTP", "false"),
            ("CALLENGINE_EGRESS__ALLOW_PRIVATE", "false"),
            ("CALLENGINE_EGRESS__RECORDING_HOSTS", ""),
            (
                "CALLENGINE_WEBHOOKS__PUBLIC_BASE_URL",
                "https://engine.example.com",
            ),
        ],
    )
    .await
}

async fn tenant_with_number(app: &TestApp, number: &str, twilio: Option<&str>) -> Uuid {
    let tenant = app
        .store()
        .insert_tenant(&NewTenant {
            name: format!("n-{}", Uuid::new_v4()),
            twilio_auth_token: twilio.map(Secret::new),
            ..Default::default()
        })
        .await
        .unwrap();
    app.store()
        .add_tenant_phone_number(tenant.id, number)
        .await
        .unwrap();
    tenant.id
}

fn twilio_form(call_sid: &str, url: &str, to: &str) -> Vec<(String, String)> {
    [
        ("CallSid", call_sid),
        ("RecordingSid", "RE0123"),
        ("RecordingStatus", "completed"),
        ("RecordingUrl", url),
        ("RecordingDuration", "5"),
        ("To", to),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn callbacks_must_be_signed(backend: Backend) {
    let app = strict_app(backend).await;
    let number = "+14155550111";
    let unsigned_tenant = tenant_with_number(&app, number, None).await;
    let signed_number = "+14155550112";
    let signed_tenant = tenant_with_number(&app, signed_number, Some("twilio-token")).await;
    let path = "/webhooks/twilio/recording";
    // 1. Tenant without a Twilio auth token: refused, not accepted unsigned.
    let form = twilio_form("CA1", "https://api.twilio.com/r/RE0123", number);
    let body = serde_urlencoded::to_string(&form).unwrap();
    let (status, text) = http_post(
        app.port,
        path,
        "application/x-www-form-urlencoded",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    // 2. Signed tenant, no or wrong signature: 401.
    let form = twilio_form("CA2", "https://api.twilio.com/r/RE0123", signed_number);
    let body = serde_urlencoded::to_string(&form).unwrap();
    for headers in [vec![], vec![("X-Twilio-Signature", "AAAA")]] {
        let (status, text) = http_post(
            app.port,
            path,
            "application/x-www-form-urlencoded",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 401, "{text}");
    }
    // 3. A client-chosen Forwarded host does not change the URL the signature covers.
    let forged_url = format!("https://attacker.example{path}");
    let forged = callengine::webhooks::signature::twilio("twilio-token", &forged_url, &form);
    let (status, _) = http_post(
        app.port,
        path,
        "application/x-www-form-urlencoded",
        &[
            ("X-Twilio-Signature", forged.as_str()),
            ("X-Forwarded-Host", "attacker.example"),
            ("Forwarded", "host=attacker.example;proto=https"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    // 4. Correctly signed, but the recording URL points at the metadata service or loopback:
    //    400, nothing stored, nothing fetched.
    for bad in [
        "http://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1:5432/",
        "https://attacker.example/r.wav",
        "file:///etc/passwd",
    ] {
        let form = twilio_form("CA3", bad, signed_number);
        let body = serde_urlencoded::to_string(&form).unwrap();
        let url = format!("https://engine.example.com{path}");
        let signature = callengine::webhooks::signature::twilio("twilio-token", &url, &form);
        let (status, text) = http_post(
            app.port,
            path,
            "application/x-www-form-urlencoded",
            &[("X-Twilio-Signature", signature.as_str())],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
    // 5. Correctly signed with a carrier URL: stored for the signed tenant only.
    let form = twilio_form("CA4", "https://api.twilio.com/r/RE0123", signed_number);
    let body = serde_urlencoded::to_string(&form).unwrap();
    let url = format!("https://engine.example.com{path}");
    let signature = callengine::webhooks::signature::twilio("twilio-token", &url, &form);
    let (status, text) = http_post(
        app.port,
        path,
        "application/x-www-form-urlencoded",
        &[("X-Twilio-Signature", signature.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for (tenant, expected) in [(unsigned_tenant, 0), (signed_tenant, 1)] {
        assert_eq!(
            app.store().count_tenant_calls(tenant).await.unwrap(),
            expected
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_recording_callbacks_must_be_signed_and_point_at_the_carrier() {
    callbacks_must_be_signed(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_recording_callbacks_must_be_signed_and_point_at_the_carrier() {
    callbacks_must_be_signed(Backend::Postgres).await;
}

async fn vonage_callbacks(backend: Backend) {
    let app = strict_app(backend).await;
    let number = "+14155550113";
    let tenant = app
        .store()
        .insert_tenant(&NewTenant {
            name: "vonage".into(),
            vonage_signature_secret: Some(Secret::new("vonage-signature-secret")),
            ..Default::default()
        })
        .await
        .unwrap();
    app.store()
        .add_tenant_phone_number(tenant.id, number)
        .await
        .unwrap();
    let body = serde_json::json!({
        "recording_url": "https://api.nexmo.com/v1/files/abc",
        "recording_uuid": "rec-1",
        "conversation_uuid": "CON-1",
        "to": number,
    })
    .to_string();
    let path = "/webhooks/vonage/recording";
    let (status, _) = http_post(app.port, path, "application/json", &[], body.as_bytes()).await;
    assert_eq!(status, 401, "unsigned Vonage callback");
    let wrong = callengine::webhooks::signature::sign_vonage(
        "not-the-secret",
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
    );
    let wrong = format!("Bearer {wrong}");
    let (status, _) = http_post(
        app.port,
        path,
        "application/json",
        &[("Authorization", wrong.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let good = callengine::webhooks::signature::sign_vonage(
        "vonage-signature-secret",
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
    );
    let good = format!("Bearer {good}");
    let (status, text) = http_post(
        app.port,
        path,
        "application/json",
        &[("Authorization", good.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(app.store().count_tenant_calls(tenant.id).await.unwrap(), 1);
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_vonage_callbacks_need_their_signed_jwt() {
    vonage_callbacks(Backend::Sqlite).await;
}

#[actix_rt::test]
async fn postgres_vonage_callbacks_need_their_signed_jwt() {
    vonage_callbacks(Backend::Postgres).await;
}
