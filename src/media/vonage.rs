//! Vonage Voice WebSocket messages (PROTOCOLS.md §1). Pure.
//!
//! The first text frame is `{"event":"websocket:connected","content-type":"audio/l16;rate=16000",
//! …}` with the NCCO `headers` flattened to the top level. Then binary L16 mono frames of exactly
//! 20 ms (320 B at 8 kHz, 640 B at 16 kHz), interleaved with text events such as
//! `websocket:dtmf`. The call ends when Vonage closes the socket.

use serde_json::{Map, Value};

/// The first message.
#[derive(Debug, Clone, PartialEq)]
pub struct VonageConnected {
    pub sample_rate: u32,
    /// Everything else in the message: the NCCO headers (ids, token…).
    pub headers: Map<String, Value>,
}

/// A text event after the first.
#[derive(Debug, Clone, PartialEq)]
pub enum VonageEvent {
    Dtmf { digit: String },
    Other(String),
}

/// Parses the first text frame; the error names what is wrong.
pub fn parse_connected(message: &str) -> Result<VonageConnected, String> {
    let value: Value = serde_json::from_str(message)
        .map_err(|e| format!("malformed Vonage first message: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err("the Vonage first message is not a JSON object".into());
    };
    match map.remove("event").as_ref().and_then(Value::as_str) {
        Some("websocket:connected") => {}
        other => {
            return Err(format!(
                "the Vonage first message must be websocket:connected, got {other:?}"
            ))
        }
    }
    let content_type = map
        .remove("content-type")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or("websocket:connected without content-type")?;
    let sample_rate = parse_content_type(&content_type)?;
    Ok(VonageConnected {
        sample_rate,
        headers: map,
    })
}

/// `audio/l16;rate=16000` → 16000; only L16 at 8 or 16 kHz.
pub fn parse_content_type(content_type: &str) -> Result<u32, String> {
    let mut parts = content_type.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default();
    if !media.eq_ignore_ascii_case("audio/l16") {
        return Err(format!("unsupported Vonage content-type {content_type:?}"));
    }
    let rate = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("rate"))
        .and_then(|(_, v)| v.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("no rate in Vonage content-type {content_type:?}"))?;
    match rate {
        8_000 | 16_000 => Ok(rate),
        other => Err(format!("unsupported Vonage sample rate {other}")),
    }
}

/// Parses a later text frame.
pub fn parse_event(message: &str) -> Result<VonageEvent, String> {
    let value: Value =
        serde_json::from_str(message).map_err(|e| format!("malformed Vonage event: {e}"))?;
    match value["event"].as_str() {
        Some("websocket:dtmf") => Ok(VonageEvent::Dtmf {
            digit: match &value["digit"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err("websocket:dtmf without a digit".into()),
            },
        }),
        Some(other) => Ok(VonageEvent::Other(other.chars().take(40).collect())),
        None => Err("Vonage event without \"event\"".into()),
    }
}

/// Bytes of one 20 ms frame at `sample_rate`.
pub fn frame_bytes(sample_rate: u32) -> usize {
    sample_rate as usize / 50 * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_message_with_flattened_headers() {
        let c = parse_connected(
            r#"{"event":"websocket:connected","content-type":"audio/l16;rate=16000","tenant_id":"t1","token":"s3cret"}"#,
        )
        .unwrap();
        assert_eq!(c.sample_rate, 16_000);
        assert_eq!(c.headers["tenant_id"], "t1");
        assert_eq!(c.headers["token"], "s3cret");
        assert!(!c.headers.contains_key("event"));
        assert_eq!(parse_content_type("audio/l16;rate=8000"), Ok(8_000));
        assert_eq!(frame_bytes(8_000), 320);
        assert_eq!(frame_bytes(16_000), 640);
    }

    #[test]
    fn bad_first_messages_are_named() {
        for (message, expected) in [
            ("hello", "malformed"),
            ("[1]", "not a JSON object"),
            (
                r#"{"event":"websocket:dtmf"}"#,
                "must be websocket:connected",
            ),
            (r#"{"event":"websocket:connected"}"#, "without content-type"),
            (
                r#"{"event":"websocket:connected","content-type":"audio/pcmu;rate=8000"}"#,
                "unsupported Vonage content-type",
            ),
            (
                r#"{"event":"websocket:connected","content-type":"audio/l16;rate=44100"}"#,
                "unsupported Vonage sample rate",
            ),
            (
                r#"{"event":"websocket:connected","content-type":"audio/l16"}"#,
                "no rate",
            ),
        ] {
            let err = parse_connected(message).unwrap_err();
            assert!(err.contains(expected), "{message}: {err}");
        }
    }

    #[test]
    fn dtmf_events() {
        assert_eq!(
            parse_event(r#"{"event":"websocket:dtmf","digit":"5","duration":260}"#),
            Ok(VonageEvent::Dtmf { digit: "5".into() })
        );
        assert_eq!(
            parse_event(r#"{"event":"websocket:cleared"}"#),
            Ok(VonageEvent::Other("websocket:cleared".into()))
        );
        assert!(parse_event("{").is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let seed = r#"{"event":"websocket:connected","content-type":"audio/l16;rate=16000","a":1}"#;
        for _ in 0..20_000 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_connected(&text);
            let _ = parse_event(&text);
        }
    }
}
