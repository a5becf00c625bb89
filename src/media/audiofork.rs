//! FreeSWITCH mod_audio_fork and jambonz `listen` (PROTOCOLS.md §4). Pure.
//!
//! The first text frame is metadata: JSON when it parses (jambonz sends the call attributes plus
//! `sampleRate` and `mixType`), kept as a string otherwise. Then binary L16 at the announced rate,
//! `mono` (caller), `mixed` (both parties summed) or `stereo` (caller and callee interleaved), in
//! frames of any size. mod_audio_fork does not put the rate or mix in-band, so the stream URL
//! carries them (`?rate=16000&mix=stereo`); in-band values win.

use serde_json::{Map, Value};

/// How the parties are mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Mono,
    Mixed,
    Stereo,
}

impl Mix {
    /// Speaker role of each channel.
    pub fn speakers(self) -> Vec<String> {
        match self {
            Self::Mono => vec!["contact".into()],
            Self::Mixed => vec!["mixed".into()],
            Self::Stereo => vec!["caller".into(), "callee".into()],
        }
    }

    /// Channels on the wire.
    pub fn channels(self) -> u16 {
        match self {
            Self::Stereo => 2,
            _ => 1,
        }
    }
}

/// What the first frame and the URL announce.
#[derive(Debug, Clone, PartialEq)]
pub struct ForkStart {
    pub sample_rate: u32,
    pub mix: Mix,
    /// The metadata as JSON, or `{"raw": "<text>"}` when it is not JSON.
    pub metadata: Value,
    /// Key/value pairs for call ids: the JSON metadata (and its `metadata` object, jambonz's
    /// custom data) over the URL's query.
    pub pairs: Map<String, Value>,
    /// External id: `callSid` (jambonz), `uuid` or `call_uuid`.
    pub external_id: Option<String>,
}

fn parse_rate(value: &Value) -> Result<Option<u32>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_ascii_lowercase(),
        other => return Err(format!("sample rate {other} is not a number")),
    };
    let rate = match text.strip_suffix('k') {
        Some(khz) => khz.parse::<u32>().map(|k| k * 1000),
        None => text.parse::<u32>(),
    }
    .map_err(|_| format!("sample rate {text:?} is not a number"))?;
    match rate {
        8_000 | 16_000 | 24_000 | 32_000 | 48_000 | 64_000 => Ok(Some(rate)),
        other => Err(format!("unsupported audio_fork sample rate {other}")),
    }
}

fn parse_mix(value: &Value) -> Result<Option<Mix>, String> {
    match value.as_str().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("mono") => Ok(Some(Mix::Mono)),
        Some("mixed") => Ok(Some(Mix::Mixed)),
        Some("stereo") => Ok(Some(Mix::Stereo)),
        Some(other) => Err(format!(
            "unknown audio_fork mix {other:?} (mono, mixed, stereo)"
        )),
    }
}

/// Reads the first frame and the URL query; the error names what is missing or wrong.
pub fn parse_start(first_frame: &str, query: &Map<String, Value>) -> Result<ForkStart, String> {
    let parsed: Option<Map<String, Value>> = serde_json::from_str(first_frame).ok();
    let metadata = match &parsed {
        Some(map) => Value::Object(map.clone()),
        None => serde_json::json!({ "raw": first_frame }),
    };
    let mut pairs = query.clone();
    if let Some(map) = &parsed {
        for (k, v) in map {
            pairs.insert(k.clone(), v.clone());
        }
        if let Some(Value::Object(custom)) = map.get("metadata") {
            for (k, v) in custom {
                pairs.insert(k.clone(), v.clone());
            }
        }
    }
    let get = |key: &str| pairs.get(key).cloned().unwrap_or(Value::Null);
    let sample_rate = match parse_rate(&get("sampleRate"))? {
        Some(rate) => rate,
        None => parse_rate(&get("rate"))?.ok_or(
            "no sample rate announced: jambonz sends sampleRate; for mod_audio_fork add ?rate=8000 or ?rate=16000 to the URL",
        )?,
    };
    let mix = match parse_mix(&get("mixType"))? {
        Some(mix) => mix,
        None => parse_mix(&get("mix"))?.unwrap_or(Mix::Mono),
    };
    let external_id = ["callSid", "uuid", "call_uuid"]
        .iter()
        .find_map(|k| pairs.get(*k).and_then(Value::as_str).map(str::to_string))
        .filter(|s| !s.is_empty() && s.len() <= 128);
    Ok(ForkStart {
        sample_rate,
        mix,
        metadata,
        pairs,
        external_id,
    })
}

/// A text frame after the first: a DTMF digit when it says so (`{"event":"dtmf","digit":"5"}`
/// or `{"type":"dtmf","dtmf":"5"}`), otherwise nothing the engine uses.
pub fn parse_text(message: &str) -> Option<String> {
    let value: Value = serde_json::from_str(message).ok()?;
    let kind = value.get("event").or_else(|| value.get("type"))?.as_str()?;
    if !kind.eq_ignore_ascii_case("dtmf") {
        return None;
    }
    let digit = value.get("digit").or_else(|| value.get("dtmf"))?;
    match digit {
        Value::String(s) if !s.is_empty() && s.len() <= 4 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Map<String, Value> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap();
        pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    }

    #[test]
    fn jambonz_metadata_announces_rate_and_mix() {
        let start = parse_start(
            r#"{"callSid":"abc","from":"+15550001","sampleRate":16000,"mixType":"stereo","metadata":{"tenant_id":"t"}}"#,
            &Map::new(),
        )
        .unwrap();
        assert_eq!(start.sample_rate, 16_000);
        assert_eq!(start.mix, Mix::Stereo);
        assert_eq!(start.external_id.as_deref(), Some("abc"));
        assert_eq!(start.pairs["tenant_id"], "t");
        assert_eq!(start.mix.speakers(), vec!["caller", "callee"]);
    }

    #[test]
    fn mod_audio_fork_takes_rate_and_mix_from_the_url_and_keeps_raw_metadata() {
        let start = parse_start(
            "call 42 from the lobby",
            &query("rate=8k&mix=mixed&uuid=u-1"),
        )
        .unwrap();
        assert_eq!(start.sample_rate, 8_000);
        assert_eq!(start.mix, Mix::Mixed);
        assert_eq!(start.metadata["raw"], "call 42 from the lobby");
        assert_eq!(start.external_id.as_deref(), Some("u-1"));
    }

    #[test]
    fn missing_or_bad_announcements_are_named() {
        assert!(parse_start("{}", &Map::new())
            .unwrap_err()
            .contains("no sample rate"));
        assert!(parse_start(r#"{"sampleRate":11025}"#, &Map::new())
            .unwrap_err()
            .contains("unsupported"));
        assert!(
            parse_start(r#"{"sampleRate":8000,"mixType":"quad"}"#, &Map::new())
                .unwrap_err()
                .contains("unknown audio_fork mix")
        );
    }

    #[test]
    fn dtmf_text_frames() {
        assert_eq!(
            parse_text(r#"{"event":"dtmf","digit":"5"}"#),
            Some("5".into())
        );
        assert_eq!(parse_text(r#"{"type":"dtmf","dtmf":7}"#), Some("7".into()));
        assert_eq!(parse_text(r#"{"event":"other"}"#), None);
        assert_eq!(parse_text("not json"), None);
    }

    #[test]
    fn random_metadata_never_panics() {
        let mut rng = fastrand::Rng::with_seed(5);
        let seed = r#"{"callSid":"abc","sampleRate":16000,"mixType":"stereo","metadata":{"a":1}}"#;
        for _ in 0..20_000 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_start(&text, &Map::new());
            let _ = parse_text(&text);
        }
    }
}
