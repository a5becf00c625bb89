//! Admission of carrier media: the tenant's media secret (or an open tenant), Twilio's
//! `X-Twilio-Signature` when the tenant has a Twilio auth token, and the concurrency limits.
//! A refusal names its reason and the WebSocket close code (1008 policy, 1013 try again later);
//! no call row is written for a refused stream.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};

use crate::app::AppState;
use crate::call::limits::CallPermit;
use crate::store::Tenant;

/// Why a stream was refused: close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    fn policy(reason: impl Into<String>) -> Self {
        Self {
            code: 1008,
            reason: reason.into(),
        }
    }
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// Bearer token from the upgrade headers.
    pub bearer: Option<String>,
    /// `X-Twilio-Signature`, and the URLs it may have been computed over (the public URL as
    /// `wss://` and `https://`: Twilio's exact form for WebSockets is not documented).
    pub twilio: Option<(String, Vec<String>)>,
}

impl UpgradeCredentials {
    /// Reads the bearer token and the Twilio signature from the upgrade request.
    pub fn from_request(req: &actix_web::HttpRequest) -> Self {
        let twilio = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .map(|signature| {
                let info = req.connection_info();
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let host = info.host().to_string();
                let urls = ["wss", "https"]
                    .iter()
                    .map(|scheme| format!("{scheme}://{host}{path}"))
                    .collect();
                (signature.to_string(), urls)
            });
        Self {
            bearer: bearer(req),
            twilio,
        }
    }
}

/// Checks a tenant's media credentials. `token`: from the headers or in-band.
pub fn check_tenant(
    tenant: &Tenant,
    token: Option<&str>,
    credentials: &UpgradeCredentials,
    protocol_is_twilio: bool,
) -> Result<(), Refusal> {
    if protocol_is_twilio {
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
    if tenant.media_open {
        return Ok(());
    }
    let Some(expected) = &tenant.media_token else {
        return Err(Refusal::policy(
            "the tenant has no media token and is not open",
        ));
    };
    match token {
        Some(given) if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::policy("wrong media token")),
        None => Err(Refusal::policy("missing media token")),
    }
}

/// Looks the tenant up, checks its credentials, and takes a call slot.
pub async fn admit(
    state: &AppState,
    tenant_id: uuid::Uuid,
    token: Option<&str>,
    credentials: &UpgradeCredentials,
    protocol_is_twilio: bool,
) -> Result<CallPermit, Refusal> {
    let tenant = match state.store.get_tenant(tenant_id).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return Err(Refusal::policy(format!("unknown tenant {tenant_id}"))),
        Err(err) => {
            return Err(Refusal {
                code: 1013,
                reason: format!("cannot check the tenant now: {err}"),
            })
        }
    };
    check_tenant(&tenant, token, credentials, protocol_is_twilio)?;
    let cap = tenant
        .max_concurrent_calls
        .and_then(|n| usize::try_from(n).ok());
    state
        .limiter
        .try_acquire(tenant_id, cap)
        .map_err(|reason| Refusal { code: 1013, reason })
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
            media_token: token.map(Secret::new),
            media_open: open,
            twilio_auth_token: twilio.map(Secret::new),
            max_concurrent_calls: None,
            inbound_token: None,
            elevenlabs_webhook_secret: None,
            postcall_config: None,
            has_api_token: false,
        }
    }

    #[test]
    fn tokens_open_tenants_and_refusals() {
        let none = UpgradeCredentials::default();
        let t = tenant(Some("s3cret"), false, None);
        assert!(check_tenant(&t, Some("s3cret"), &none, false).is_ok());
        assert_eq!(
            check_tenant(&t, Some("nope"), &none, false)
                .unwrap_err()
                .reason,
            "wrong media token"
        );
        assert_eq!(check_tenant(&t, None, &none, false).unwrap_err().code, 1008);
        assert!(check_tenant(&tenant(None, true, None), None, &none, false).is_ok());
        assert!(check_tenant(&tenant(None, false, None), Some("x"), &none, false).is_err());
    }

    #[test]
    fn twilio_signature_is_checked_when_the_tenant_has_an_auth_token() {
        let t = tenant(None, true, Some("authtoken"));
        let url = "wss://media.example.com/ws/twilio".to_string();
        let good = UpgradeCredentials {
            bearer: None,
            twilio: Some((twilio_signature("authtoken", &url), vec![url.clone()])),
        };
        assert!(check_tenant(&t, None, &good, true).is_ok());
        let bad = UpgradeCredentials {
            bearer: None,
            twilio: Some(("AAAA".into(), vec![url])),
        };
        assert!(check_tenant(&t, None, &bad, true).is_err());
        assert!(check_tenant(&t, None, &UpgradeCredentials::default(), true).is_err());
        // Known HMAC-SHA1 vector (RFC 2202 case 2), base64.
        assert_eq!(
            twilio_signature("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }
}
