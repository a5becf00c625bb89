//! The one admission path for call media: the tenant exists, it proves itself, and the node's
//! and tenant's call caps have room. Every media ingress (the generic `/ws/voice`, Vonage,
//! Twilio, audio_fork, AudioSocket) calls [`admit`]; a refusal names its reason and the close
//! code (1008 policy, 1013 try again later), and no call row is written for a refused stream.
//!
//! Proofs, in order: Twilio's `X-Twilio-Signature` when the tenant has a Twilio auth token
//! (computed over the configured public URL only, never a client-supplied host); then the
//! tenant's media token (bearer header, `token` query parameter or in-band parameter) unless the
//! tenant is explicitly `media_open`; a trusted listener (AudioSocket, admitted by source
//! address) stands in for the token.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};

use crate::call::limits::CallPermit;
pub use crate::call::limits::{HandshakeSlot, HandshakeSlots};
use crate::crypto::{constant_time_eq, stored_token_hash};
use crate::state::AppState;
use crate::store::{Protocol, Tenant};

/// The local tenant: created open (`media_open`) when a node listens on loopback only, so the
/// zero-config engine and the load generator work on one machine without set-up. It is
/// refused on any node that listens beyond loopback, whatever its row says.
pub const LOCAL_TENANT: uuid::Uuid = uuid::Uuid::from_u128(1);

/// Why a stream was refused: close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    /// Policy violation (1008): unknown tenant, missing or wrong proof.
    pub fn policy(reason: impl Into<String>) -> Self {
        Self {
            code: 1008,
            reason: reason.into(),
        }
    }

    /// Try again later (1013): caps, a database that cannot answer now.
    pub fn later(reason: impl Into<String>) -> Self {
        Self {
            code: 1013,
            reason: reason.into(),
        }
    }

    /// Bad handshake or parameters (4000).
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            code: 4000,
            reason: reason.into(),
        }
    }

    /// The HTTP status the same refusal takes before an upgrade.
    pub fn http_status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self.code {
            1008 => StatusCode::UNAUTHORIZED,
            1013 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// `Authorization: Bearer …` of the upgrade request.
pub fn bearer(req: &actix_web::HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

/// Twilio's signature of a request with no POST parameters:
/// `base64(HMAC-SHA1(auth_token, url))`.
pub fn twilio_signature(auth_token: &str, url: &str) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What the upgrade request carried that admission may need.
#[derive(Debug, Clone, Default)]
pub struct UpgradeCredentials {
    /// Bearer token from the upgrade headers, or the `token` query parameter.
    pub bearer: Option<String>,
    /// `X-Twilio-Signature`, and the URLs it may have been computed over: the configured
    /// public base URL as `wss://` and `https://` with the request's path and query (Twilio's
    /// exact form for WebSockets is not documented). Empty when no public URL is configured —
    /// the host is never taken from the request, whose `Host`/`Forwarded` headers the client
    /// chooses.
    pub twilio: Option<(String, Vec<String>)>,
    /// The connection came through a listener that admits by source address (AudioSocket).
    pub trusted_listener: bool,
}

impl UpgradeCredentials {
    /// Reads the bearer token (header, else `token` query parameter) and the Twilio signature.
    pub fn from_request(req: &actix_web::HttpRequest, public_base_url: &str) -> Self {
        let twilio = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .map(|signature| (signature.to_string(), signed_urls(req, public_base_url)));
        let query_token = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "token"))
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty());
        Self {
            bearer: bearer(req).or(query_token),
            twilio,
            trusted_listener: false,
        }
    }
}

/// The URLs a Twilio stream signature may cover: the public base URL's host with this path.
fn signed_urls(req: &actix_web::HttpRequest, public_base_url: &str) -> Vec<String> {
    let base = public_base_url.trim().trim_end_matches('/');
    let Some((_, host)) = base.split_once("://") else {
        return Vec::new();
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    ["wss", "https"]
        .iter()
        .map(|scheme| format!("{scheme}://{host}{path}"))
        .collect()
}

/// Checks a tenant's media credentials. `token`: from the headers, query or in-band.
pub fn check_tenant(
    tenant: &Tenant,
    token: Option<&str>,
    credentials: &UpgradeCredentials,
    protocol: Protocol,
) -> Result<(), Refusal> {
    if protocol == Protocol::Twilio {
        if let Some(auth_token) = &tenant.twilio_auth_token {
            let Some((signature, urls)) = &credentials.twilio else {
                return Err(Refusal::policy("missing X-Twilio-Signature"));
            };
            let valid = urls.iter().any(|url| {
                constant_time_eq(
                    twilio_signature(auth_token.expose(), url).as_bytes(),
                    signature.as_bytes(),
                )
            });
            if !valid {
                return Err(Refusal::policy("X-Twilio-Signature does not match"));
            }
        }
    }
    if tenant.media_open || credentials.trusted_listener {
        return Ok(());
    }
    let Some(expected) = &tenant.media_token_sha256 else {
        return Err(Refusal::policy(
            "the tenant has no media token and is not open",
        ));
    };
    match token {
        Some(given)
            if constant_time_eq(stored_token_hash(given).as_bytes(), expected.as_bytes()) =>
        {
            Ok(())
        }
        Some(_) => Err(Refusal::policy("wrong media token")),
        None => Err(Refusal::policy("missing media token")),
    }
}

/// An admitted stream: its tenant and its call slot.
pub struct Admitted {
    pub tenant: Tenant,
    pub permit: CallPermit,
}

/// Looks the tenant up, checks its credentials, and takes a call slot. An unknown tenant and
/// a wrong proof are refused alike with 1008.
pub async fn admit(
    state: &AppState,
    tenant_id: uuid::Uuid,
    token: Option<&str>,
    credentials: &UpgradeCredentials,
    protocol: Protocol,
) -> Result<Admitted, Refusal> {
    if tenant_id == LOCAL_TENANT && !state.loopback_only {
        return Err(Refusal::policy(
            "the local tenant is served only on a loopback listener",
        ));
    }
    let tenant = match state.store.get_tenant(tenant_id).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return Err(Refusal::policy("unknown tenant or wrong credentials")),
        Err(err) => {
            tracing::warn!(error = %err, "admission: tenant lookup failed");
            return Err(Refusal::later("cannot check the tenant now"));
        }
    };
    check_tenant(&tenant, token, credentials, protocol)?;
    let cap = tenant
        .max_concurrent_calls
        .and_then(|n| usize::try_from(n).ok());
    let permit = state
        .limiter
        .try_acquire(tenant_id, cap)
        .map_err(Refusal::later)?;
    Ok(Admitted { tenant, permit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Secret;

    fn tenant(token: Option<&str>, open: bool, twilio: Option<&str>) -> Tenant {
        Tenant {
            id: uuid::Uuid::nil(),
            name: "t".into(),
            webhook_url: None,
            webhook_secret: None,
            cost_per_second_micros: 0,
            stt_provider: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            stt_api_key: None,
            media_token_sha256: token.map(stored_token_hash),
            media_open: open,
            twilio_auth_token: twilio.map(Secret::new),
            max_concurrent_calls: None,
            has_inbound_token: false,
            elevenlabs_webhook_secret: None,
            vonage_signature_secret: None,
            webhooks_unsigned: false,
            recording_hosts: Vec::new(),
            postcall_config: None,
            has_api_token: false,
        }
    }

    #[test]
    fn tokens_open_tenants_and_refusals() {
        let none = UpgradeCredentials::default();
        let t = tenant(Some("s3cret-s3cret-s3cret"), false, None);
        let v = Protocol::Voice;
        assert!(check_tenant(&t, Some("s3cret-s3cret-s3cret"), &none, v).is_ok());
        assert_eq!(
            check_tenant(&t, Some("nope"), &none, v).unwrap_err().reason,
            "wrong media token"
        );
        assert_eq!(check_tenant(&t, None, &none, v).unwrap_err().code, 1008);
        assert!(check_tenant(&tenant(None, true, None), None, &none, v).is_ok());
        assert!(check_tenant(&tenant(None, false, None), Some("x"), &none, v).is_err());
        let trusted = UpgradeCredentials {
            trusted_listener: true,
            ..Default::default()
        };
        assert!(check_tenant(&t, None, &trusted, Protocol::AudioSocket).is_ok());
    }

    #[test]
    fn twilio_signature_is_checked_when_the_tenant_has_an_auth_token() {
        let t = tenant(None, true, Some("authtoken"));
        let url = "wss://media.example.com/ws/twilio".to_string();
        let good = UpgradeCredentials {
            twilio: Some((twilio_signature("authtoken", &url), vec![url.clone()])),
            ..Default::default()
        };
        assert!(check_tenant(&t, None, &good, Protocol::Twilio).is_ok());
        let bad = UpgradeCredentials {
            twilio: Some(("AAAA".into(), vec![url])),
            ..Default::default()
        };
        assert!(check_tenant(&t, None, &bad, Protocol::Twilio).is_err());
        assert!(check_tenant(&t, None, &UpgradeCredentials::default(), Protocol::Twilio).is_err());
        // Known HMAC-SHA1 vector (RFC 2202 case 2), base64.
        assert_eq!(
            twilio_signature("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn handshake_slots_are_bounded_and_freed() {
        let slots = std::sync::Arc::new(HandshakeSlots::new(2));
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
        assert_eq!(slots.in_use(), 1);
    }
}
