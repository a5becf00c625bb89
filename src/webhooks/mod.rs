//! Inbound webhooks: ElevenLabs dialogue turns and post-call transcripts, Twilio and Vonage
//! recording callbacks. See docs/webhooks.md.
//!
//! Each route exists twice: `/webhooks/<platform>/…` for the default tenant
//! (`webhooks.default_tenant_id`) and `/webhooks/{token}/<platform>/…` for the tenant whose
//! `inbound_token` it is. Bodies are read raw (signatures are computed over the exact bytes)
//! up to `webhooks.max_body_bytes`. Storage failures answer 500 after three attempts with
//! exponential backoff, so the sender retries; a 2xx always means the data is stored.

pub mod callback_parse;
pub mod elevenlabs;
pub mod recording;
pub mod signature;

use std::future::Future;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::state::AppState;
use crate::store::{StoreError, Tenant};

/// Settings of the inbound webhooks (`[webhooks]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Tenant of webhooks posted to the routes without a token (UUID; empty: refused).
    #[serde(with = "crate::text::optional")]
    pub default_tenant_id: Option<Uuid>,
    /// Public base URL (`https://host[:port]`) the senders call, for signatures computed over the
    /// URL behind a proxy (Twilio); empty: taken from the request.
    pub public_base_url: String,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Oldest accepted ElevenLabs signature timestamp, seconds.
    pub signature_tolerance_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            default_tenant_id: None,
            public_base_url: String::new(),
            max_body_bytes: 1024 * 1024,
            signature_tolerance_secs: 30 * 60,
        }
    }
}

/// A 4xx/5xx answer with a JSON `error`.
pub fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    use actix_web::ResponseError;
    crate::http_error::ApiError::new(status, message).error_response()
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, message)
}

/// The webhook section's settings and the inbound body deadline, registered by the server as
/// their own `web::Data` (the node's [`AppState`] carries no module's settings).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub settings: WebhookSettings,
    /// Whole-body deadline (`ingress.body_timeout_ms`).
    pub body_timeout: Duration,
}

/// What a webhook handler works with: the node's state (through `Deref`) and [`Inbound`].
pub struct Hooks {
    node: web::Data<AppState>,
    pub inbound: web::Data<Inbound>,
}

impl std::ops::Deref for Hooks {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.node
    }
}

impl actix_web::FromRequest for Hooks {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let node = req.app_data::<web::Data<AppState>>().cloned();
        let inbound = req.app_data::<web::Data<Inbound>>().cloned();
        std::future::ready(match (node, inbound) {
            (Some(node), Some(inbound)) => Ok(Self { node, inbound }),
            _ => Err(actix_web::error::ErrorInternalServerError(
                "webhook state is not configured",
            )),
        })
    }
}

/// Reads the raw body, refusing more than `webhooks.max_body_bytes` with a 400 naming the
/// limit, and a body not complete within `ingress.body_timeout_ms` with a 408.
pub async fn read_body(payload: web::Payload, state: &Hooks) -> Result<web::Bytes, HttpResponse> {
    let (limit, deadline) = (
        state.inbound.settings.max_body_bytes,
        state.inbound.body_timeout,
    );
    match tokio::time::timeout(deadline, read_body_unbounded(payload, limit)).await {
        Ok(result) => result,
        Err(_) => Err(error(
            actix_web::http::StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} ms", deadline.as_millis()),
        )),
    }
}

async fn read_body_unbounded(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, HttpResponse> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(bad_request(format!("body larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The secret a tenant's webhooks of one kind must be signed with. A tenant without that
/// secret is refused (401) unless it is explicitly marked `webhooks_unsigned`; then `None`.
pub fn required_secret<'a>(
    tenant: &Tenant,
    secret: Option<&'a crate::secret::Secret>,
    kind: &str,
) -> Result<Option<&'a crate::secret::Secret>, Box<HttpResponse>> {
    match secret {
        Some(secret) => Ok(Some(secret)),
        None if tenant.webhooks_unsigned => Ok(None),
        None => {
            tracing::warn!(tenant_id = %tenant.id, kind, "webhook refused: the tenant has no signing secret");
            Err(Box::new(error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                format!(
                    "the tenant has no {kind} secret configured; unsigned webhooks are refused"
                ),
            )))
        }
    }
}

/// Which tenant a webhook is for: the route's token, or the default tenant; it must exist.
/// The lookup is retried like any storage step.
pub async fn resolve_tenant(
    state: &Hooks,
    token: Option<&str>,
) -> Result<(Uuid, Tenant), HttpResponse> {
    match token {
        Some(token) => {
            let (found, attempts) =
                with_retries(|| state.store.tenant_by_inbound_token(token)).await;
            match found {
                Ok(Some(tenant)) => Ok((tenant.id, tenant)),
                Ok(None) => Err(error(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "unknown webhook route",
                )),
                Err(err) => Err(storage_failed(&err, attempts)),
            }
        }
        None => {
            let Some(id) = state.inbound.settings.default_tenant_id else {
                return Err(bad_request(
                    "no tenant: post to /webhooks/{token}/… or set webhooks.default_tenant_id",
                ));
            };
            let (found, attempts) = with_retries(|| state.store.get_tenant(id)).await;
            match found {
                Ok(Some(tenant)) => Ok((id, tenant)),
                Ok(None) => Err(error(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "unknown webhook route",
                )),
                Err(err) => Err(storage_failed(&err, attempts)),
            }
        }
    }
}

/// Attempts at a storage operation before answering 500.
pub const STORE_ATTEMPTS: u32 = 3;

/// Runs `op` up to [`STORE_ATTEMPTS`] times, 100 ms then 200 ms apart, while it fails with a
/// transient error. Returns the result and the attempts made.
pub async fn with_retries<T, F, Fut>(mut op: F) -> (Result<T, StoreError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(err) if err.is_transient() && attempt < STORE_ATTEMPTS => {
                tracing::warn!(error = %err, attempt, "webhook storage failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
                attempt += 1;
            }
            other => return (other, attempt),
        }
    }
}

/// The 500 answer after the attempts failed.
pub fn storage_failed(err: &StoreError, attempts: u32) -> HttpResponse {
    tracing::error!(error = %err, attempts, "webhook not stored");
    HttpResponse::InternalServerError().json(json!({
        "error": format!("storage failed: {err}"),
        "attempts": attempts,
    }))
}

/// Registers every webhook route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/webhooks/elevenlabs/transcription",
        web::post().to(elevenlabs::default_route),
    )
    .route(
        "/webhooks/{token}/elevenlabs/transcription",
        web::post().to(elevenlabs::token_route),
    )
    .route(
        "/webhooks/twilio/recording",
        web::post().to(recording::twilio_default),
    )
    .route(
        "/webhooks/{token}/twilio/recording",
        web::post().to(recording::twilio_token),
    )
    .route(
        "/webhooks/vonage/recording",
        web::post().to(recording::vonage_default),
    )
    .route(
        "/webhooks/{token}/vonage/recording",
        web::post().to(recording::vonage_token),
    );
}
