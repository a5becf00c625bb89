//! `GET /ws/voice/{external_uuid}`: the generic PCM WebSocket.
//!
//! `external_uuid` is the provider's own id for the call, stored verbatim as the call's
//! `external_id`: a Vonage UUID, a Twilio CallSid or a SIP Call-ID such as
//! `a84b4c76e66710@pc33.atlanta.com` — 1 to 255 printable characters, no spaces. Query: `tenant_id`, `campaign_id`, `lead_id` (required UUIDs), `call_id` (optional UUID: link
//! to that call), `phone_number` (optional). Audio: binary PCM s16le 16 kHz mono, 20 ms frames
//! (640 bytes) or whole multiples up to 100 ms. Text `{"type":"stop"}` ends the call. Bad
//! parameters: a JSON `{"type":"error","message":…}` naming the problem, then close 4000, and no
//! call row.

use uuid::Uuid;

use super::CallParams;
use crate::store::Protocol;

/// Largest WebSocket message accepted; bigger ones end the call with 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest provider call id accepted.
pub const MAX_EXTERNAL_ID: usize = 255;

/// A provider's call id as given: 1 to 255 printable ASCII characters without spaces (a SIP
/// Call-ID is `word [ "@" word ]`, a UUID or a CallSid fit too). Kept verbatim, case included.
pub fn check_external_id(value: &str) -> Result<&str, String> {
    if value.is_empty() || value.len() > MAX_EXTERNAL_ID {
        return Err(format!(
            "external_uuid must be 1 to {MAX_EXTERNAL_ID} characters, got {}",
            value.len()
        ));
    }
    match value.bytes().position(|b| !b.is_ascii_graphic()) {
        Some(at) => Err(format!(
            "external_uuid must be printable characters without spaces (byte {at} is not)"
        )),
        None => Ok(value),
    }
}

/// Parses and checks the path and query; the error names what is wrong.
pub fn parse_params(external_uuid: &str, query: &str) -> Result<CallParams, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|err| format!("malformed query string: {err}"))?;
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let uuid = |name: &str, value: &str| {
        Uuid::parse_str(value).map_err(|_| format!("{name} must be a UUID, got {value:?}"))
    };
    let required = |name: &str| match get(name) {
        Some(value) if !value.is_empty() => uuid(name, value),
        _ => Err(format!("missing required query parameter {name}")),
    };
    let external = check_external_id(external_uuid)?;
    let params = CallParams {
        tenant_id: required("tenant_id")?,
        campaign_id: Some(required("campaign_id")?),
        lead_id: Some(required("lead_id")?),
        call_id: match get("call_id") {
            Some(value) if !value.is_empty() => Some(uuid("call_id", value)?),
            _ => None,
        },
        phone_number: match get("phone_number") {
            Some(value) if value.len() > 64 => {
                return Err("phone_number is longer than 64 characters".into())
            }
            Some(value) if !value.is_empty() => Some(value.to_string()),
            _ => None,
        },
        external_id: Some(external.to_string()),
        protocol: Protocol::Voice,
        speakers: vec!["contact".into()],
        metadata: None,
    };
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "6a1d4a4e-8d1e-4a57-9a53-4f9f5b1d2c3a";

    fn query(extra: &str) -> String {
        format!("tenant_id={T}&campaign_id={T}&lead_id={T}{extra}")
    }

    #[test]
    fn accepts_a_complete_request() {
        let p = parse_params(T, &query("&phone_number=%2B14155550100&call_id=")).unwrap();
        assert_eq!(p.phone_number.as_deref(), Some("+14155550100"));
        assert_eq!(p.call_id, None);
        assert_eq!(p.external_id.as_deref(), Some(T));
    }

    #[test]
    fn a_sip_call_id_is_kept_verbatim() {
        let sip = "a84b4c76e66710@pc33.Atlanta.com";
        let p = parse_params(sip, &query("")).unwrap();
        assert_eq!(p.external_id.as_deref(), Some(sip));
        let upper = "6A1D4A4E-8D1E-4A57-9A53-4F9F5B1D2C3A";
        let p = parse_params(upper, &query("")).unwrap();
        assert_eq!(p.external_id.as_deref(), Some(upper), "not lower-cased");
    }

    #[test]
    fn names_each_bad_parameter() {
        let cases = [
            (
                T.to_string(),
                format!("campaign_id={T}&lead_id={T}"),
                "missing required query parameter tenant_id",
            ),
            (
                T.to_string(),
                query("").replace("lead_id", "lead"),
                "missing required query parameter lead_id",
            ),
            (
                T.to_string(),
                format!("tenant_id=abc&campaign_id={T}&lead_id={T}"),
                "tenant_id must be a UUID",
            ),
            (
                "a b".to_string(),
                query(""),
                "external_uuid must be printable characters",
            ),
            (
                "x".repeat(256),
                query(""),
                "external_uuid must be 1 to 255 characters",
            ),
            (
                T.to_string(),
                query("&call_id=42"),
                "call_id must be a UUID",
            ),
            (
                T.to_string(),
                query(&format!("&phone_number={}", "9".repeat(65))),
                "phone_number is longer",
            ),
        ];
        for (path, q, expected) in cases {
            let err = parse_params(&path, &q).unwrap_err();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
