//! Recording callbacks, parsed: pure functions from the raw body to the checked fields, so the
//! handlers in [`super::recording`] only do I/O and the parsing can be fuzzed on its own.
//!
//! The fields and error messages are those of the handlers: Twilio's form-encoded
//! `recordingStatusCallback` (`CallSid`, `RecordingSid`, `RecordingStatus` required,
//! `RecordingDuration` whole seconds, `To`, `From`, `RecordingUrl`) and the Vonage-style JSON
//! callback (`recording_url`, `recording_uuid`, `conversation_uuid` required, `to`, `from`,
//! duration from `start_time` / `end_time`). Values are trimmed; an empty value is missing.
//! On top of that every string field is bounded: ids, numbers and statuses at
//! [`MAX_ID_CHARS`] characters, URLs at [`MAX_URL_CHARS`], and none may contain a control
//! character; a field over the bound is refused with an error naming it.

use serde_json::Value;

/// Longest id, status, phone number, duration or timestamp accepted, in characters.
pub const MAX_ID_CHARS: usize = 255;
/// Longest recording URL accepted, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// A Twilio recording status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioRecording {
    /// Every form parameter as sent (untrimmed): the `X-Twilio-Signature` is computed over them.
    pub params: Vec<(String, String)>,
    pub call_sid: String,
    pub recording_sid: String,
    pub status: String,
    pub duration_secs: Option<i64>,
    /// `To`: the number called.
    pub to: Option<String>,
    /// `From`: the caller's number.
    pub from: Option<String>,
    pub recording_url: Option<String>,
}

/// A Vonage recording callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VonageRecording {
    pub recording_url: String,
    pub recording_uuid: String,
    pub conversation_uuid: String,
    /// `to`: the number called.
    pub to: Option<String>,
    /// `from`: the caller's number.
    pub from: Option<String>,
    /// `end_time − start_time` in whole seconds (at least 0) when both are RFC 3339.
    pub duration_secs: Option<i64>,
}

/// Checks one trimmed, non-empty value against its bound.
fn bounded(field: &str, value: String, max_chars: usize) -> Result<String, String> {
    if value.chars().nth(max_chars).is_some() {
        return Err(format!(
            "field {field} is longer than {max_chars} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("field {field} contains a control character"));
    }
    Ok(value)
}

/// Parses a Twilio `recordingStatusCallback` body (`application/x-www-form-urlencoded`). The
/// first occurrence of a repeated parameter counts.
pub fn parse_twilio_recording(body: &[u8]) -> Result<TwilioRecording, String> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| format!("malformed form body: {e}"))?;
    let raw = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let get =
        |name: &str, max_chars: usize| raw(name).map(|v| bounded(name, v, max_chars)).transpose();
    let required =
        |name: &str| get(name, MAX_ID_CHARS)?.ok_or_else(|| format!("missing field {name}"));
    let call_sid = required("CallSid")?;
    let recording_sid = required("RecordingSid")?;
    let status = required("RecordingStatus")?;
    let duration_secs = match get("RecordingDuration", MAX_ID_CHARS)? {
        None => None,
        Some(d) => match d.parse::<i64>() {
            Ok(secs) if secs >= 0 => Some(secs),
            _ => {
                return Err(format!(
                    "RecordingDuration {d:?} is not a whole number of seconds"
                ))
            }
        },
    };
    let to = get("To", MAX_ID_CHARS)?;
    let from = get("From", MAX_ID_CHARS)?;
    let recording_url = get("RecordingUrl", MAX_URL_CHARS)?;
    Ok(TwilioRecording {
        params,
        call_sid,
        recording_sid,
        status,
        duration_secs,
        to,
        from,
        recording_url,
    })
}

/// Parses a Vonage recording callback (JSON object).
pub fn parse_vonage_recording(body: &[u8]) -> Result<VonageRecording, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let text = |field: &str, max_chars: usize| {
        value[field]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| bounded(field, s.to_string(), max_chars))
            .transpose()
    };
    let required = |field: &str, max_chars: usize| {
        text(field, max_chars)?.ok_or_else(|| format!("missing field {field}"))
    };
    let recording_url = required("recording_url", MAX_URL_CHARS)?;
    let recording_uuid = required("recording_uuid", MAX_ID_CHARS)?;
    let conversation_uuid = required("conversation_uuid", MAX_ID_CHARS)?;
    let to = text("to", MAX_ID_CHARS)?;
    let from = text("from", MAX_ID_CHARS)?;
    let time = |field: &str| -> Result<_, String> {
        Ok(text(field, MAX_ID_CHARS)?.and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok()))
    };
    let duration_secs = match (time("start_time")?, time("end_time")?) {
        (Some(start), Some(end)) => Some((end - start).num_seconds().max(0)),
        _ => None,
    };
    Ok(VonageRecording {
        recording_url,
        recording_uuid,
        conversation_uuid,
        to,
        from,
        duration_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWILIO: &str =
        "AccountSid=AC1&CallSid=CA123&RecordingSid=RE456&RecordingStatus=completed\
        &RecordingDuration=42&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2FRecordings%2FRE456\
        &To=%2B14155550100&From=%2B14155550199";

    fn vonage(extra: &str) -> String {
        format!(
            r#"{{"recording_url":"https://api.nexmo.com/v1/files/abc","recording_uuid":"r-1",
            "conversation_uuid":"CON-1","to":"14155550100","from":"14155550199",
            "start_time":"2026-11-21T10:00:00Z","end_time":"2026-11-21T10:01:05.500Z"{extra}}}"#
        )
    }

    #[test]
    fn a_twilio_callback_gives_every_field() {
        let r = parse_twilio_recording(TWILIO.as_bytes()).unwrap();
        assert_eq!(r.call_sid, "CA123");
        assert_eq!(r.recording_sid, "RE456");
        assert_eq!(r.status, "completed");
        assert_eq!(r.duration_secs, Some(42));
        assert_eq!(r.to.as_deref(), Some("+14155550100"));
        assert_eq!(r.from.as_deref(), Some("+14155550199"));
        assert_eq!(
            r.recording_url.as_deref(),
            Some("https://api.twilio.com/Recordings/RE456")
        );
        assert_eq!(r.params.len(), 8, "every parameter kept for the signature");
        assert_eq!(r.params[0], ("AccountSid".into(), "AC1".into()));
    }

    #[test]
    fn twilio_values_are_trimmed_and_empty_ones_are_missing() {
        let r = parse_twilio_recording(
            b"CallSid=+CA1+&RecordingSid=RE1&RecordingStatus=in-progress&To=&RecordingDuration=+",
        )
        .unwrap();
        assert_eq!(r.call_sid, "CA1");
        assert_eq!((r.to, r.duration_secs, r.recording_url), (None, None, None));
        // The first of a repeated parameter counts.
        let r = parse_twilio_recording(b"CallSid=A&CallSid=B&RecordingSid=R&RecordingStatus=s")
            .unwrap();
        assert_eq!(r.call_sid, "A");
    }

    #[test]
    fn twilio_errors_name_the_field_as_the_handler_did() {
        for (body, expected) in [
            ("RecordingSid=R&RecordingStatus=s", "missing field CallSid"),
            ("CallSid=C&RecordingStatus=s", "missing field RecordingSid"),
            ("CallSid=C&RecordingSid=R", "missing field RecordingStatus"),
            (
                "CallSid=+&RecordingSid=R&RecordingStatus=s",
                "missing field CallSid",
            ),
            ("", "missing field CallSid"),
            (
                "CallSid=C&RecordingSid=R&RecordingStatus=s&RecordingDuration=-1",
                "RecordingDuration \"-1\" is not a whole number of seconds",
            ),
            (
                "CallSid=C&RecordingSid=R&RecordingStatus=s&RecordingDuration=1.5",
                "RecordingDuration \"1.5\" is not a whole number of seconds",
            ),
            (
                "CallSid=C&RecordingSid=R&RecordingStatus=s&RecordingDuration=99999999999999999999",
                "RecordingDuration \"99999999999999999999\" is not a whole number of seconds",
            ),
        ] {
            assert_eq!(
                parse_twilio_recording(body.as_bytes()).unwrap_err(),
                expected,
                "{body}"
            );
        }
        // Form decoding is lossy, as in the handler: bytes that are not UTF-8 (raw or
        // percent-encoded) become U+FFFD rather than an error.
        for body in [
            b"CallSid=%FF%FE&RecordingSid=R&RecordingStatus=s".as_slice(),
            b"CallSid=\xff\xfe&RecordingSid=R&RecordingStatus=s",
        ] {
            assert_eq!(
                parse_twilio_recording(body).unwrap().call_sid,
                "\u{fffd}\u{fffd}"
            );
        }
    }

    #[test]
    fn twilio_fields_are_bounded_and_free_of_control_characters() {
        let base = "CallSid=C&RecordingSid=R&RecordingStatus=s";
        let long_id = "x".repeat(MAX_ID_CHARS + 1);
        let ok_id = "é".repeat(MAX_ID_CHARS); // characters, not bytes
        let long_url = format!("https://h/{}", "u".repeat(MAX_URL_CHARS));
        assert!(parse_twilio_recording(format!("{base}&To={ok_id}").as_bytes()).is_ok());
        for (field, value, max) in [
            ("CallSid", long_id.as_str(), MAX_ID_CHARS),
            ("To", long_id.as_str(), MAX_ID_CHARS),
            ("From", long_id.as_str(), MAX_ID_CHARS),
            ("RecordingDuration", long_id.as_str(), MAX_ID_CHARS),
            ("RecordingUrl", long_url.as_str(), MAX_URL_CHARS),
        ] {
            // Put the field first: the first occurrence counts.
            let body = format!("{field}={value}&{base}");
            assert_eq!(
                parse_twilio_recording(body.as_bytes()).unwrap_err(),
                format!("field {field} is longer than {max} characters")
            );
        }
        for value in ["a%00b", "a%0Ab", "a%1Bb", "a%7Fb", "a%C2%85b"] {
            let body = format!("RecordingSid={value}&{base}");
            assert_eq!(
                parse_twilio_recording(body.as_bytes()).unwrap_err(),
                "field RecordingSid contains a control character",
                "{value}"
            );
        }
        // Leading and trailing whitespace (tabs, newlines) is trimmed, not refused.
        let r = parse_twilio_recording(format!("{base}&From=%0A%09%2B1%0D%0A").as_bytes()).unwrap();
        assert_eq!(r.from.as_deref(), Some("+1"));
        let url = format!("https://h/{}", "u".repeat(MAX_URL_CHARS - 10));
        let r = parse_twilio_recording(format!("{base}&RecordingUrl={url}").as_bytes()).unwrap();
        assert_eq!(r.recording_url, Some(url));
    }

    #[test]
    fn a_vonage_callback_gives_every_field() {
        let r = parse_vonage_recording(vonage("").as_bytes()).unwrap();
        assert_eq!(r.recording_url, "https://api.nexmo.com/v1/files/abc");
        assert_eq!(r.recording_uuid, "r-1");
        assert_eq!(r.conversation_uuid, "CON-1");
        assert_eq!(r.to.as_deref(), Some("14155550100"));
        assert_eq!(r.from.as_deref(), Some("14155550199"));
        assert_eq!(r.duration_secs, Some(65));
        let minimal = br#"{"recording_url":" u ","recording_uuid":"r","conversation_uuid":"c"}"#;
        let r = parse_vonage_recording(minimal).unwrap();
        assert_eq!(r.recording_url, "u");
        assert_eq!((r.to, r.from, r.duration_secs), (None, None, None));
    }

    #[test]
    fn vonage_durations_need_both_times_and_never_go_negative() {
        let swapped = br#"{"recording_url":"u","recording_uuid":"r","conversation_uuid":"c",
            "start_time":"2026-11-21T10:01:00Z","end_time":"2026-11-21T10:00:00Z"}"#;
        assert_eq!(
            parse_vonage_recording(swapped).unwrap().duration_secs,
            Some(0)
        );
        let bad = br#"{"recording_url":"u","recording_uuid":"r","conversation_uuid":"c",
            "start_time":"yesterday","end_time":"2026-11-21T10:00:00Z"}"#;
        assert_eq!(parse_vonage_recording(bad).unwrap().duration_secs, None);
        let number = br#"{"recording_url":"u","recording_uuid":"r","conversation_uuid":"c",
            "start_time":5,"end_time":"2026-11-21T10:00:00Z"}"#;
        assert_eq!(parse_vonage_recording(number).unwrap().duration_secs, None);
    }

    #[test]
    fn vonage_errors_name_the_field_as_the_handler_did() {
        for (body, expected) in [
            (
                r#"{"recording_uuid":"r","conversation_uuid":"c"}"#,
                "missing field recording_url",
            ),
            (
                r#"{"recording_url":"u","conversation_uuid":"c"}"#,
                "missing field recording_uuid",
            ),
            (
                r#"{"recording_url":"u","recording_uuid":"r"}"#,
                "missing field conversation_uuid",
            ),
            (
                r#"{"recording_url":"u","recording_uuid":" ","conversation_uuid":"c"}"#,
                "missing field recording_uuid",
            ),
            (
                r#"{"recording_url":7,"recording_uuid":"r","conversation_uuid":"c"}"#,
                "missing field recording_url",
            ),
            (r#"[1,2]"#, "missing field recording_url"),
            (r#""text""#, "missing field recording_url"),
        ] {
            assert_eq!(
                parse_vonage_recording(body.as_bytes()).unwrap_err(),
                expected,
                "{body}"
            );
        }
        let err = parse_vonage_recording(b"{\"recording_url\":").unwrap_err();
        assert!(err.starts_with("malformed JSON: "), "{err}");
    }

    #[test]
    fn vonage_fields_are_bounded_and_free_of_control_characters() {
        let long_id = "x".repeat(MAX_ID_CHARS + 1);
        let long_url = "u".repeat(MAX_URL_CHARS + 1);
        for (field, value, max) in [
            ("recording_url", long_url.as_str(), MAX_URL_CHARS),
            ("recording_uuid", long_id.as_str(), MAX_ID_CHARS),
            ("conversation_uuid", long_id.as_str(), MAX_ID_CHARS),
            ("to", long_id.as_str(), MAX_ID_CHARS),
            ("from", long_id.as_str(), MAX_ID_CHARS),
            ("start_time", long_id.as_str(), MAX_ID_CHARS),
            ("end_time", long_id.as_str(), MAX_ID_CHARS),
        ] {
            let mut body: Value = serde_json::from_str(&vonage("")).unwrap();
            body[field] = Value::String(value.to_string());
            assert_eq!(
                parse_vonage_recording(body.to_string().as_bytes()).unwrap_err(),
                format!("field {field} is longer than {max} characters")
            );
        }
        for value in ["a\u{0}b", "a\u{1b}[31mb", "a\nb", "a\u{7f}b", "a\u{9b}b"] {
            let mut body: Value = serde_json::from_str(&vonage("")).unwrap();
            body["conversation_uuid"] = Value::String(value.to_string());
            assert_eq!(
                parse_vonage_recording(body.to_string().as_bytes()).unwrap_err(),
                "field conversation_uuid contains a control character",
                "{value:?}"
            );
        }
        let url = "u".repeat(MAX_URL_CHARS);
        let mut body: Value = serde_json::from_str(&vonage("")).unwrap();
        body["recording_url"] = Value::String(url.clone());
        let r = parse_vonage_recording(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.recording_url, url);
    }
}
