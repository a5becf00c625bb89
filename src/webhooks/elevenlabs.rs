//! `POST /webhooks/[{token}/]elevenlabs/transcription`: one dialogue turn per request
//! (`{conversation_id, speaker, message, timestamp}`), or ElevenLabs' `post_call_transcription`
//! (the whole transcript at once, then the call is completed). Any other body is refused with
//! 400 and a reason: the answer is never 200 for something that was not stored.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::Hooks;
use super::{error, read_body, required_secret, resolve_tenant, storage_failed, with_retries};
use crate::state::AppState;
use crate::store::{Protocol, StoreError, WebhookTurn};

/// Longest call time a post-call transcript may claim (a day); larger values are clamped.
const MAX_CALL_SECS: f64 = 86_400.0;

/// The default tenant's route.
pub async fn default_route(req: HttpRequest, body: web::Payload, state: Hooks) -> HttpResponse {
    handle(req, body, state, None).await
}

/// A tenant's route, named by its inbound token.
pub async fn token_route(
    req: HttpRequest,
    body: web::Payload,
    state: Hooks,
    token: web::Path<String>,
) -> HttpResponse {
    handle(req, body, state, Some(token.into_inner())).await
}

/// A posted turn, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRequest {
    pub conversation_id: String,
    /// `agent` or `contact`.
    pub role: &'static str,
    /// As sent: `agent` or `user`.
    pub label: String,
    pub message: String,
    pub timestamp: DateTime<Utc>,
}

/// `agent` → `agent`; `user` → `contact` (the person called).
pub fn role_of(speaker: &str) -> Option<&'static str> {
    match speaker {
        "agent" => Some("agent"),
        "user" => Some("contact"),
        _ => None,
    }
}

/// ISO-8601 / RFC 3339 text, or Unix seconds (number or numeric text), to UTC.
pub fn parse_timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let from_secs = |secs: f64| {
        if !secs.is_finite() || !(0.0..1e11).contains(&secs) {
            return Err(format!("timestamp {secs} is out of range"));
        }
        let whole = secs.trunc() as i64;
        let nanos = ((secs - secs.trunc()) * 1e9) as u32;
        Utc.timestamp_opt(whole, nanos)
            .single()
            .ok_or_else(|| format!("timestamp {secs} is out of range"))
    };
    match value {
        Value::Number(n) => from_secs(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return from_secs(secs);
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(t.with_timezone(&Utc));
            }
            // ISO-8601 without an offset: taken as UTC.
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|t| t.and_utc())
                .map_err(|_| format!("timestamp {s:?} is neither ISO-8601 nor Unix seconds"))
        }
        Value::Null => Err("missing field timestamp".into()),
        other => Err(format!(
            "timestamp {other} is neither ISO-8601 nor Unix seconds"
        )),
    }
}

/// Checks a per-turn body; the error names the field.
pub fn parse_turn(body: &Value) -> Result<TurnRequest, String> {
    if !body.is_object() {
        return Err("the body must be a JSON object".into());
    }
    let text = |field: &str| match &body[field] {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Err(format!("missing field {field}")),
        _ => Err(format!("field {field} must be a string")),
    };
    let conversation_id = text("conversation_id")?;
    if conversation_id.trim().is_empty() || conversation_id.len() > 256 {
        return Err("field conversation_id must be 1 to 256 characters".into());
    }
    let label = text("speaker")?;
    let role = role_of(&label)
        .ok_or_else(|| format!("unknown speaker {label:?} (expected agent or user)"))?;
    let message = text("message")?;
    let timestamp = parse_timestamp(&body["timestamp"])?;
    Ok(TurnRequest {
        conversation_id,
        role,
        label,
        message,
        timestamp,
    })
}

fn check_signature(
    req: &HttpRequest,
    state: &Hooks,
    secret: Option<&crate::secret::Secret>,
    body: &[u8],
) -> Result<(), &'static str> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let header = req
        .headers()
        .get("elevenlabs-signature")
        .and_then(|v| v.to_str().ok());
    super::signature::verify_elevenlabs(
        header,
        secret.expose(),
        body,
        Utc::now().timestamp(),
        state.inbound.settings.signature_tolerance_secs,
    )
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: Hooks,
    token: Option<String>,
) -> HttpResponse {
    let body = match read_body(payload, &state).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (tenant_id, tenant) = match resolve_tenant(&state, token.as_deref()).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    let secret = match required_secret(
        &tenant,
        tenant.elevenlabs_webhook_secret.as_ref(),
        "ElevenLabs webhook",
    ) {
        Ok(secret) => secret,
        Err(response) => return *response,
    };
    if let Err(reason) = check_signature(&req, &state, secret, &body) {
        tracing::warn!(%reason, "ElevenLabs webhook refused");
        return error(StatusCode::UNAUTHORIZED, reason);
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    match value.get("type").and_then(Value::as_str) {
        Some("post_call_transcription") => post_call(&state, tenant_id, &value).await,
        // Never 200 for what was not stored: an event this engine does not store is refused
        // with a reason, so the platform's delivery log shows it.
        Some(other) if value.get("conversation_id").is_none() => {
            let other = crate::text::bounded(other, 64);
            tracing::info!(event = %other, "ElevenLabs event refused: not stored by this engine");
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "event type {other:?} is not stored: send post_call_transcription or a \
                     dialogue turn with conversation_id"
                ),
            )
        }
        _ => one_turn(&state, tenant_id, &value).await,
    }
}

async fn one_turn(state: &AppState, tenant_id: Uuid, value: &Value) -> HttpResponse {
    let request = match parse_turn(value) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let turn = WebhookTurn {
        tenant_id,
        conversation_id: request.conversation_id.clone(),
        protocol: Protocol::ElevenLabs,
        speaker: request.role.into(),
        speaker_label: request.label.clone(),
        text: request.message.clone(),
        at: request.timestamp,
    };
    let (result, attempts) = with_retries(|| state.store.append_webhook_turn(&turn)).await;
    match result {
        Ok(stored) => {
            if stored.call_created && !stored.has_contact {
                tracing::warn!(conversation_id = %turn.conversation_id, call_id = %stored.call_id,
                    "no call registered for this conversation: created without a contact");
            }
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            HttpResponse::build(status).json(json!({
                "transcription_id": stored.turn_id,
                "sequence_number": stored.seq,
                "call_id": stored.call_id,
            }))
        }
        Err(StoreError::InvalidInput(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(StoreError::CallNotActive { call_id, .. }) => error(
            StatusCode::CONFLICT,
            format!("the conversation's call {call_id} has ended"),
        ),
        Err(err) => storage_failed(&err, attempts),
    }
}

/// The whole transcript at once: turns not yet stored are appended (the k-th occurrence of a
/// speaker's line matches the k-th one already stored, so turns posted one by one are not
/// duplicated), then the call is completed with the platform's duration.
async fn post_call(state: &AppState, tenant_id: Uuid, value: &Value) -> HttpResponse {
    let data = &value["data"];
    let Some(conversation_id) = data["conversation_id"].as_str().filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing field data.conversation_id",
        );
    };
    let Some(items) = data["transcript"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "missing field data.transcript");
    };
    let metadata = &data["metadata"];
    let start = match &metadata["start_time_unix_secs"] {
        Value::Null => value
            .get("event_timestamp")
            .map(parse_timestamp)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_else(Utc::now),
        v => match parse_timestamp(v) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("data.metadata.{e}")),
        },
    };
    let duration = metadata["call_duration_secs"]
        .as_f64()
        .unwrap_or(0.0)
        .max(0.0);
    let mut turns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(message) = item["message"].as_str().filter(|m| !m.trim().is_empty()) else {
            continue; // tool-only turns carry no text
        };
        let label = item["role"].as_str().unwrap_or_default();
        let Some(role) = role_of(label) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("data.transcript[{i}]: unknown role {label:?}"),
            );
        };
        // Bounded to a day: a huge or non-finite offset must not overflow the time arithmetic.
        let offset = item["time_in_call_secs"]
            .as_f64()
            .filter(|v| v.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, MAX_CALL_SECS);
        turns.push(WebhookTurn {
            tenant_id,
            conversation_id: conversation_id.to_string(),
            protocol: Protocol::ElevenLabs,
            speaker: role.into(),
            speaker_label: label.into(),
            text: message.into(),
            at: start + chrono::Duration::milliseconds((offset * 1000.0) as i64),
        });
    }
    let (outcome, attempts) =
        with_retries(|| import(state, tenant_id, conversation_id, &turns, start, duration)).await;
    match outcome {
        Ok((call_id, added, completed)) => HttpResponse::Ok().json(json!({
            "call_id": call_id,
            "turns_added": added,
            "status": if completed { "completed" } else { "already_completed" },
        })),
        Err(StoreError::InvalidInput(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(err) => storage_failed(&err, attempts),
    }
}

async fn import(
    state: &AppState,
    tenant_id: Uuid,
    conversation_id: &str,
    turns: &[WebhookTurn],
    start: DateTime<Utc>,
    duration_secs: f64,
) -> Result<(Option<Uuid>, usize, bool), StoreError> {
    let store = &state.store;
    let calls = store
        .tenant_calls_by_external_id(tenant_id, conversation_id)
        .await?;
    let live = calls.iter().find(|c| !c.status.is_terminal());
    if live.is_none() {
        if let Some(ended) = calls.last() {
            // A repeated post-call webhook: everything is stored already.
            return Ok((Some(ended.id), 0, false));
        }
    }
    let mut stored: Vec<(String, String)> = match live {
        Some(call) => store
            .list_turns(call.id)
            .await?
            .into_iter()
            .map(|t| (t.speaker, t.text))
            .collect(),
        None => Vec::new(),
    };
    let mut call_id = live.map(|c| c.id);
    let mut added = 0;
    for turn in turns {
        if let Some(at) = stored
            .iter()
            .position(|(s, t)| *s == turn.speaker && *t == turn.text)
        {
            stored.swap_remove(at);
            continue;
        }
        let result = store.append_webhook_turn(turn).await?;
        call_id = Some(result.call_id);
        added += usize::from(result.created);
    }
    let Some(call_id) = call_id else {
        return Ok((None, 0, false));
    };
    let call = store.get_call(call_id).await?;
    let began = call.map_or(start, |c| c.started_at.min(start));
    let duration_ms = (duration_secs.clamp(0.0, MAX_CALL_SECS) * 1000.0) as i64;
    let ended = began.max(start) + chrono::Duration::milliseconds(duration_ms);
    store
        .complete_external_call(call_id, ended.max(began), "platform_completed")
        .await?;
    Ok((Some(call_id), added, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_documented_form() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        for v in [
            json!("2026-11-21T10:00:00Z"),
            json!("2026-11-21T11:00:00+01:00"),
            json!("2026-11-21T10:00:00"),
            json!(1_795_255_200),
            json!("1795255200"),
        ] {
            assert_eq!(parse_timestamp(&v), Ok(t), "{v}");
        }
        assert_eq!(
            parse_timestamp(&json!(1_795_255_200.5))
                .unwrap()
                .timestamp_subsec_millis(),
            500
        );
        assert!(parse_timestamp(&json!("yesterday")).is_err());
        assert!(parse_timestamp(&json!(true)).is_err());
        assert!(parse_timestamp(&json!(-5)).is_err());
    }

    #[test]
    fn turn_bodies_name_the_bad_field() {
        let good = json!({"conversation_id":"c","speaker":"user","message":"hi","timestamp":1});
        let turn = parse_turn(&good).unwrap();
        assert_eq!((turn.role, turn.label.as_str()), ("contact", "user"));
        for (body, expected) in [
            (json!([]), "JSON object"),
            (
                json!({"speaker":"user","message":"hi","timestamp":1}),
                "missing field conversation_id",
            ),
            (
                json!({"conversation_id":"c","message":"hi","timestamp":1}),
                "missing field speaker",
            ),
            (
                json!({"conversation_id":"c","speaker":"bot","message":"hi","timestamp":1}),
                "unknown speaker",
            ),
            (
                json!({"conversation_id":"c","speaker":"agent","timestamp":1}),
                "missing field message",
            ),
            (
                json!({"conversation_id":"c","speaker":"agent","message":"hi"}),
                "missing field timestamp",
            ),
            (
                json!({"conversation_id":"c","speaker":"agent","message":"hi","timestamp":"soon"}),
                "timestamp",
            ),
            (
                json!({"conversation_id":7,"speaker":"agent","message":"hi","timestamp":1}),
                "must be a string",
            ),
        ] {
            let err = parse_turn(&body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
