//! Recording callbacks: Twilio's form-encoded `recordingStatusCallback` and Vonage's JSON
//! recording event. The recording id, URL and status are saved on the call; a `completed`
//! recording of an ended call queues the post-call job once per recording.
//!
//! Order of checks: the body (size, deadline, fields) → the tenant (route token, else the owner
//! of the called number, else the default tenant) → the tenant's signature, required
//! (`X-Twilio-Signature` with its Twilio auth token; Vonage's signed JWT with its signature
//! secret) unless the tenant is explicitly `webhooks_unsigned` → the recording URL against the
//! egress policy (https, an allow-listed host) → the call, matched only among that tenant's
//! calls. Anything refused is stored nowhere.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::Hooks;
use super::{error, read_body, required_secret, resolve_tenant, storage_failed, with_retries};
use crate::egress::RecordingSource;
use crate::state::AppState;
use crate::store::{Protocol, RecordingUpdate, StoreError, Tenant};

/// Twilio, default tenant.
pub async fn twilio_default(req: HttpRequest, body: web::Payload, state: Hooks) -> HttpResponse {
    twilio(req, body, state, None).await
}

/// Twilio, tenant named by its inbound token.
pub async fn twilio_token(
    req: HttpRequest,
    body: web::Payload,
    state: Hooks,
    token: web::Path<String>,
) -> HttpResponse {
    twilio(req, body, state, Some(token.into_inner())).await
}

/// Vonage, default tenant.
pub async fn vonage_default(req: HttpRequest, body: web::Payload, state: Hooks) -> HttpResponse {
    vonage(req, body, state, None).await
}

/// Vonage, tenant named by its inbound token.
pub async fn vonage_token(
    req: HttpRequest,
    body: web::Payload,
    state: Hooks,
    token: web::Path<String>,
) -> HttpResponse {
    vonage(req, body, state, Some(token.into_inner())).await
}

/// The URL the sender called, as it saw it: `webhooks.public_base_url` + path and query when
/// configured (behind a proxy), else the request's own `Host` (never `Forwarded` or
/// `X-Forwarded-*`, which any client can set).
fn public_url(req: &HttpRequest, state: &Hooks) -> String {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let base = state.inbound.settings.public_base_url.trim_end_matches('/');
    if base.is_empty() {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        format!("{}://{host}{path}", req.connection_info().scheme())
    } else {
        format!("{base}{path}")
    }
}

/// The tenant of a callback: the route's token, else the owner of the called number, else the
/// default tenant. Never found through a call id, which any tenant's caller could name.
async fn callback_tenant(
    state: &Hooks,
    token: Option<&str>,
    called: Option<&str>,
) -> Result<Tenant, HttpResponse> {
    if token.is_none() {
        if let Some(number) = called {
            match state.store.tenant_by_phone_number(number).await {
                Ok(Some(id)) => match state.store.get_tenant(id).await {
                    Ok(Some(tenant)) => return Ok(tenant),
                    Ok(None) => {}
                    Err(err) => return Err(storage_failed(&err, 1)),
                },
                Ok(None) => {}
                Err(err) => return Err(storage_failed(&err, 1)),
            }
        }
    }
    resolve_tenant(state, token).await.map(|(_, tenant)| tenant)
}

/// The callback's tenant and the secret its signature must be made with (`None`: the tenant is
/// explicitly `webhooks_unsigned`); 401 when the tenant has no such secret.
async fn signing_tenant(
    state: &Hooks,
    token: Option<&str>,
    called: Option<&str>,
    secret_of: fn(&Tenant) -> Option<&crate::secret::Secret>,
    kind: &str,
) -> Result<(Tenant, Option<crate::secret::Secret>), HttpResponse> {
    let tenant = callback_tenant(state, token, called).await?;
    let secret = required_secret(&tenant, secret_of(&tenant), kind)
        .map_err(|response| *response)?
        .cloned();
    Ok((tenant, secret))
}

/// The recording URL must be one the post-call worker will fetch: refused here, before
/// anything is stored, when the egress policy would refuse it.
fn check_recording_url(
    state: &AppState,
    tenant: &Tenant,
    url: Option<&str>,
    source: RecordingSource,
) -> Result<(), Box<HttpResponse>> {
    let Some(url) = url else {
        return Ok(());
    };
    state
        .egress
        .check_recording_url(url, source, &tenant.recording_hosts)
        .map(|_| ())
        .map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("recording URL: {e}"),
            ))
        })
}

async fn save(state: &AppState, update: RecordingUpdate) -> HttpResponse {
    let (result, attempts) = with_retries(|| state.store.record_recording(&update)).await;
    match result {
        Ok(outcome) => HttpResponse::Ok().json(json!({
            "call_id": outcome.call_id,
            "call_created": outcome.call_created,
            "job_enqueued": outcome.job_enqueued,
            "recording_status": update.status,
        })),
        Err(StoreError::InvalidInput(message)) => error(StatusCode::NOT_FOUND, message),
        Err(err) => storage_failed(&err, attempts),
    }
}

async fn twilio(
    req: HttpRequest,
    payload: web::Payload,
    state: Hooks,
    token: Option<String>,
) -> HttpResponse {
    let body = match read_body(payload, &state).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed = match super::callback_parse::parse_twilio_recording(&body) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (tenant, secret) = match signing_tenant(
        &state,
        token.as_deref(),
        parsed.to.as_deref(),
        |t| t.twilio_auth_token.as_ref(),
        "Twilio auth token",
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    if let Some(auth) = secret {
        let url = public_url(&req, &state);
        let expected = super::signature::twilio(auth.expose(), &url, &parsed.params);
        let given = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !crate::crypto::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            tracing::warn!(tenant_id = %tenant.id, "Twilio recording callback refused: bad signature");
            return error(
                StatusCode::UNAUTHORIZED,
                "X-Twilio-Signature does not match",
            );
        }
    }
    if let Err(response) = check_recording_url(
        &state,
        &tenant,
        parsed.recording_url.as_deref(),
        RecordingSource::Twilio,
    ) {
        return *response;
    }
    let update = RecordingUpdate {
        external_id: parsed.call_sid,
        protocol: Protocol::Twilio,
        recording_id: parsed.recording_sid,
        recording_url: parsed.recording_url,
        status: parsed.status,
        duration_secs: parsed.duration_secs,
        tenant_id: tenant.id,
        phone_number: parsed.from,
    };
    save(&state, update).await
}

async fn vonage(
    req: HttpRequest,
    payload: web::Payload,
    state: Hooks,
    token: Option<String>,
) -> HttpResponse {
    let body = match read_body(payload, &state).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed = match super::callback_parse::parse_vonage_recording(&body) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (tenant, secret) = match signing_tenant(
        &state,
        token.as_deref(),
        parsed.to.as_deref(),
        |t| t.vonage_signature_secret.as_ref(),
        "Vonage signature",
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    if let Some(secret) = secret {
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Err(reason) = super::signature::verify_vonage(
            authorization,
            secret.expose(),
            &body,
            chrono::Utc::now().timestamp(),
            state.inbound.settings.signature_tolerance_secs,
        ) {
            tracing::warn!(tenant_id = %tenant.id, %reason, "Vonage recording callback refused");
            return error(StatusCode::UNAUTHORIZED, reason);
        }
    }
    if let Err(response) = check_recording_url(
        &state,
        &tenant,
        Some(parsed.recording_url.as_str()),
        RecordingSource::Vonage,
    ) {
        return *response;
    }
    let update = RecordingUpdate {
        external_id: parsed.conversation_uuid,
        protocol: Protocol::Vonage,
        recording_id: parsed.recording_uuid,
        recording_url: Some(parsed.recording_url),
        status: "completed".into(),
        duration_secs: parsed.duration_secs,
        tenant_id: tenant.id,
        phone_number: parsed.from,
    };
    save(&state, update).await
}
