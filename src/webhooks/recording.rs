//! Recording callbacks: Twilio's form-encoded `recordingStatusCallback` and a Vonage-style JSON
//! callback. The recording id, URL and status are saved on the call; a `completed` recording of
//! an ended call queues the post-call job once per recording.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{error, read_body, resolve_tenant, storage_failed, with_retries};
use crate::app::AppState;
use crate::store::{Protocol, RecordingUpdate, StoreError};

/// Twilio, default tenant.
pub async fn twilio_default(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    twilio(req, body, state, None).await
}

/// Twilio, tenant named by its inbound token.
pub async fn twilio_token(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    token: web::Path<String>,
) -> HttpResponse {
    twilio(req, body, state, Some(token.into_inner())).await
}

/// Vonage, default tenant.
pub async fn vonage_default(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    vonage(req, body, state, None).await
}

/// Vonage, tenant named by its inbound token.
pub async fn vonage_token(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    token: web::Path<String>,
) -> HttpResponse {
    vonage(req, body, state, Some(token.into_inner())).await
}

/// The URL the sender called, as it saw it: `webhooks.public_base_url` + path and query when
/// configured (behind a proxy), else rebuilt from the request.
fn public_url(req: &HttpRequest, state: &AppState) -> String {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let base = state.webhooks.public_base_url.trim_end_matches('/');
    if base.is_empty() {
        let info = req.connection_info();
        format!("{}://{}{path}", info.scheme(), info.host())
    } else {
        format!("{base}{path}")
    }
}

/// The tenant of a callback: the call's (when known), the route's, the owner of the called
/// number, or the default tenant.
async fn callback_tenant(
    state: &AppState,
    token: Option<&str>,
    external_id: &str,
    called: Option<&str>,
) -> Result<Option<Uuid>, HttpResponse> {
    let failed = |err: StoreError| storage_failed(&err, 1);
    if let Some(token) = token {
        return resolve_tenant(state, Some(token))
            .await
            .map(|(id, _)| Some(id));
    }
    match state.store.calls_by_external_id(external_id).await {
        Ok(calls) => {
            if let Some(call) = calls.last() {
                return Ok(Some(call.tenant_id));
            }
        }
        Err(err) => return Err(failed(err)),
    }
    if let Some(number) = called {
        match state.store.tenant_by_phone_number(number).await {
            Ok(Some(id)) => return Ok(Some(id)),
            Ok(None) => {}
            Err(err) => return Err(failed(err)),
        }
    }
    Ok(Uuid::parse_str(&state.webhooks.default_tenant_id).ok())
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
    state: web::Data<AppState>,
    token: Option<String>,
) -> HttpResponse {
    let body = match read_body(payload, state.webhooks.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let params: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed form body: {e}")),
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (Some(call_sid), Some(recording_sid), Some(status)) =
        (get("CallSid"), get("RecordingSid"), get("RecordingStatus"))
    else {
        let missing = ["CallSid", "RecordingSid", "RecordingStatus"]
            .into_iter()
            .find(|f| get(f).is_none())
            .unwrap_or("CallSid");
        return error(StatusCode::BAD_REQUEST, format!("missing field {missing}"));
    };
    let duration_secs = match get("RecordingDuration") {
        None => None,
        Some(d) => match d.parse::<i64>() {
            Ok(secs) if secs >= 0 => Some(secs),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("RecordingDuration {d:?} is not a whole number of seconds"),
                )
            }
        },
    };
    let called = get("To");
    let tenant_id =
        match callback_tenant(&state, token.as_deref(), &call_sid, called.as_deref()).await {
            Ok(t) => t,
            Err(response) => return response,
        };
    // Signature, when the tenant has a Twilio auth token.
    if let Some(tenant_id) = tenant_id {
        let tenant = match state.store.get_tenant(tenant_id).await {
            Ok(t) => t,
            Err(err) => return storage_failed(&err, 1),
        };
        if let Some(auth) = tenant.and_then(|t| t.twilio_auth_token) {
            let url = public_url(&req, &state);
            let expected = super::signature::twilio(auth.expose(), &url, &params);
            let given = req
                .headers()
                .get("x-twilio-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !crate::media::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                tracing::warn!(%url, "Twilio recording callback refused: bad signature");
                return error(StatusCode::FORBIDDEN, "X-Twilio-Signature does not match");
            }
        }
    }
    let recording_url = get("RecordingUrl");
    let update = RecordingUpdate {
        external_id: call_sid,
        protocol: Protocol::Twilio,
        recording_id: recording_sid,
        recording_url,
        status,
        duration_secs,
        tenant_for_unknown_call: tenant_id,
        phone_number: get("From"),
    };
    save(&state, update).await
}

async fn vonage(
    _req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    token: Option<String>,
) -> HttpResponse {
    let body = match read_body(payload, state.webhooks.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let text = |field: &str| {
        value[field]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let Some(recording_url) = text("recording_url") else {
        return error(StatusCode::BAD_REQUEST, "missing field recording_url");
    };
    let Some(recording_id) = text("recording_uuid") else {
        return error(StatusCode::BAD_REQUEST, "missing field recording_uuid");
    };
    let Some(conversation) = text("conversation_uuid") else {
        return error(StatusCode::BAD_REQUEST, "missing field conversation_uuid");
    };
    let called = text("to");
    let tenant_id =
        match callback_tenant(&state, token.as_deref(), &conversation, called.as_deref()).await {
            Ok(t) => t,
            Err(response) => return response,
        };
    let duration_secs = match (
        text("start_time").and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok()),
        text("end_time").and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok()),
    ) {
        (Some(start), Some(end)) => Some((end - start).num_seconds().max(0)),
        _ => None,
    };
    let update = RecordingUpdate {
        external_id: conversation,
        protocol: Protocol::Vonage,
        recording_id,
        recording_url: Some(recording_url),
        status: "completed".into(),
        duration_secs,
        tenant_for_unknown_call: tenant_id,
        phone_number: text("from"),
    };
    save(&state, update).await
}
