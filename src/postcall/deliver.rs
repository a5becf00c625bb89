//! The `call.completed` webhook: the payload (built only from the database row), Standard
//! Webhooks signing, and one delivery attempt.
//!
//! Signature: `webhook-signature: v1,<base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))>`,
//! where the key is the base64-decoded part of a `whsec_…` secret, or the secret's bytes as they
//! are otherwise. `webhook-id` is the event id (stable across retries), `webhook-timestamp` the
//! attempt's Unix time.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};

use crate::store::{Call, Tenant, Turn};

/// Event type of the one webhook the engine sends per call.
pub const CALL_COMPLETED: &str = "call.completed";

/// Sent when a call's post-call result changed after its `call.completed` went out (a
/// recording that arrived later): same payload shape, new event id, same call id.
pub const CALL_UPDATED: &str = "call.updated";

/// The event id of a call's `call.completed` (one per call, stable).
pub fn event_id(call_id: uuid::Uuid) -> String {
    format!("evt_{}", call_id.simple())
}

/// The event id of a `call.updated`: one per recording the call got (stable across retries).
pub fn update_event_id(call: &Call) -> String {
    let recording = call.recording_id.as_deref().unwrap_or("none");
    let digest = crate::crypto::token_hash(recording);
    format!("evt_{}_upd_{}", call.id.simple(), &digest[..16])
}

/// The HMAC key of a tenant secret.
pub fn signing_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// `v1,<signature>` for one attempt.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&signing_key(secret)) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn field(call: &Call, name: &str) -> Value {
    call.extracted_fields
        .as_ref()
        .map(|f| f[name]["value"].clone())
        .unwrap_or(Value::Null)
}

/// The payload, from the call row (and its tenant's agent name).
pub fn payload(
    call: &Call,
    tenant: Option<&Tenant>,
    realtime: &[Turn],
    now: DateTime<Utc>,
) -> Value {
    let transcript = call.offline_transcript.clone().unwrap_or_else(|| {
        call.transcript_text.clone().unwrap_or_else(|| {
            realtime
                .iter()
                .map(|t| format!("{}: {}", t.speaker, t.text))
                .collect::<Vec<_>>()
                .join("\n")
        })
    });
    let agent_name = tenant
        .and_then(|t| t.postcall_config.as_ref())
        .and_then(|c| c["agent_name"].as_str())
        .map(str::to_string);
    json!({
        "event_type": CALL_COMPLETED,
        "timestamp": now.to_rfc3339(),
        "tenant_id": call.tenant_id,
        "call_id": call.id,
        "lead_id": call.lead_id,
        "phone": call.phone_number,
        "customer_name": field(call, "customer_name"),
        "city": field(call, "city"),
        "service_category": field(call, "service_category"),
        "preferred_time": field(call, "preferred_time"),
        "started_at": call.started_at.to_rfc3339(),
        "ended_at": call.ended_at.map(|t| t.to_rfc3339()),
        "duration_sec": call.duration_seconds,
        "transcript": transcript,
        "transcript_source": if call.offline_transcript.is_some() { "offline" } else { "realtime" },
        "summary": call.summary,
        "direction": call.direction.to_string(),
        "agent_name": agent_name,
        "metadata": {
            "status": call.status.to_string(),
            "end_reason": call.end_reason,
            "protocol": call.protocol.to_string(),
            "external_id": call.external_id,
            "campaign_id": call.campaign_id,
            "recording_url": call.recording_url,
            "extraction": call.extracted_fields,
            "postcall_error": call.postcall_error,
            "media": call.media_metadata,
        },
    })
}

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub delivered: bool,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
}

/// POSTs `payload` to `url`, signed with `secret` (always: there is no unsigned delivery),
/// under the egress policy. Blocking: call from a blocking task.
pub fn attempt(
    egress: &crate::egress::EgressPolicy,
    url: &str,
    event_id: &str,
    payload: &Value,
    secret: &str,
    timeout: Duration,
) -> AttemptResult {
    if let Err(err) = egress.check_url(url) {
        return AttemptResult {
            delivered: false,
            status: None,
            body: None,
            error: Some(err.to_string()),
        };
    }
    let body = payload.to_string();
    let timestamp = Utc::now().timestamp();
    let request = super::http_agent(egress, timeout)
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", &timestamp.to_string())
        .header(
            "user-agent",
            concat!("callengine/", env!("CARGO_PKG_VERSION")),
        );
    let request = request.header(
        "webhook-signature",
        &sign(secret, event_id, timestamp, body.as_bytes()),
    );
    match request.send(body.as_bytes()) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response
                .body_mut()
                .with_config()
                .limit(4_096)
                .read_to_string()
                .ok();
            AttemptResult {
                delivered: (200..300).contains(&status),
                status: Some(status),
                body: text,
                error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
            }
        }
        Err(err) => AttemptResult {
            delivered: false,
            status: None,
            body: None,
            error: Some(err.to_string()),
        },
    }
}

/// When the next attempt after `attempts` failed ones is due: the schedule's entry, ±10 %
/// jitter; `None` when the schedule is exhausted (the delivery is dead).
pub fn next_attempt(
    schedule: &[Duration],
    attempts: usize,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let base = schedule.get(attempts.checked_sub(1)?)?;
    let jitter = 0.9 + 0.2 * fastrand::f64();
    let wait = base.mul_f64(jitter);
    Some(now + chrono::Duration::from_std(wait).ok()?)
}

/// Parses `5,300,1800` (seconds; fractions allowed) into a schedule.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{s:?} is not a number of seconds"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_matches_an_independent_implementation() {
        // Expected values from Python: base64(hmac.new(key, b"msg_1.1700000000." + body,
        // sha256).digest()), key = base64-decoded "whsec_" part, or the raw secret bytes.
        let body = br#"{"a":1}"#;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(
            sign(secret, "msg_1", 1_700_000_000, body),
            "v1,hVsFLpmw4Ib/Xm0eZLt3KqYBZdt0U8gdGeuz0EsGv78="
        );
        assert_eq!(
            sign("plain-secret", "msg_1", 1_700_000_000, body),
            "v1,PQ8G/5vQE995TQFlpC2YXRDs2RbuscvSWFk9pfKhuhc="
        );
    }

    #[test]
    fn retry_schedule_and_its_end() {
        let schedule = parse_schedule("5, 300,1800").unwrap();
        let now = Utc::now();
        let first = next_attempt(&schedule, 1, now).unwrap();
        let secs = (first - now).num_milliseconds() as f64 / 1000.0;
        assert!((4.5..=5.5).contains(&secs), "{secs}");
        assert!(next_attempt(&schedule, 3, now).is_some());
        assert!(next_attempt(&schedule, 4, now).is_none());
        assert!(parse_schedule("5,x").is_err());
    }
}
