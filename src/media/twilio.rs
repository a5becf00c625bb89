//! Twilio Media Streams messages (PROTOCOLS.md §2). Pure: text in, typed message out.
//!
//! Every message is JSON text. `sequenceNumber`, `chunk` and `timestamp` are strings on the
//! wire; numbers are accepted too (other carriers send them). `media.payload` is base64 μ-law
//! 8 kHz mono with no header. [`SequenceTracker`] flags gaps and duplicates.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

/// The `start` message: who the call is and what audio follows.
#[derive(Debug, Clone, PartialEq)]
pub struct TwilioStart {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub tracks: Vec<String>,
    /// `<Parameter name= value=>` pairs of the TwiML `<Stream>`.
    pub custom_parameters: serde_json::Map<String, Value>,
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u16,
}

/// One message from Twilio.
#[derive(Debug, Clone, PartialEq)]
pub enum TwilioMessage {
    Connected,
    Start(Box<TwilioStart>),
    Media {
        sequence: Option<u64>,
        chunk: Option<u64>,
        timestamp_ms: Option<u64>,
        track: String,
        /// μ-law bytes.
        payload: Vec<u8>,
    },
    Dtmf {
        digit: String,
    },
    Mark {
        name: String,
    },
    Stop,
    /// An event this engine does not use (counted, ignored).
    Other(String),
}

/// A number that may arrive as a string.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// A number that may arrive as a string; anything else (or a string that is not a number) is
/// `None`, as the carriers' own fields are advisory. Borrowed: no allocation on the media path.
#[derive(Debug, Default, Clone, Copy)]
struct Lenient(Option<u64>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a numeric string")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Lenient, E> {
                Ok(Lenient(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Lenient, E> {
                Ok(Lenient(v.trim().parse().ok()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Lenient, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Lenient, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// `media` of a media message, read in place: the payload is borrowed from the message text
/// (base64 has no escapes), so a frame costs one allocation, its decoded bytes.
#[derive(Deserialize, Default)]
struct MediaBody<'a> {
    #[serde(borrow, default)]
    payload: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    track: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    chunk: Lenient,
    #[serde(default)]
    timestamp: Lenient,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "sequenceNumber")]
    sequence_number: Lenient,
    #[serde(default)]
    start: Value,
    #[serde(borrow, default)]
    media: Option<MediaBody<'a>>,
    #[serde(default)]
    dtmf: Value,
    #[serde(default)]
    mark: Value,
}

/// Parses one text message. The error says what is wrong.
pub fn parse(message: &str) -> Result<TwilioMessage, String> {
    let envelope: Envelope =
        serde_json::from_str(message).map_err(|e| format!("malformed Twilio message: {e}"))?;
    let event = envelope
        .event
        .ok_or("Twilio message without an \"event\"")?;
    Ok(match event.as_ref() {
        "connected" => TwilioMessage::Connected,
        "start" => {
            let s = &envelope.start;
            if !s.is_object() {
                return Err("Twilio start without a \"start\" object".into());
            }
            let call_sid = text(&s["callSid"]);
            if call_sid.is_empty() {
                return Err("Twilio start without start.callSid".into());
            }
            let format = &s["mediaFormat"];
            TwilioMessage::Start(Box::new(TwilioStart {
                stream_sid: text(&s["streamSid"]),
                call_sid,
                account_sid: text(&s["accountSid"]),
                tracks: s["tracks"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default(),
                custom_parameters: s["customParameters"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                encoding: format["encoding"]
                    .as_str()
                    .unwrap_or("audio/x-mulaw")
                    .to_string(),
                sample_rate: number(&format["sampleRate"]).unwrap_or(8_000) as u32,
                channels: number(&format["channels"]).unwrap_or(1) as u16,
            }))
        }
        "media" => {
            let m = envelope.media.unwrap_or_default();
            let payload = m.payload.ok_or("Twilio media without media.payload")?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(payload.as_bytes())
                .map_err(|e| format!("Twilio media payload is not base64: {e}"))?;
            TwilioMessage::Media {
                sequence: envelope.sequence_number.0,
                chunk: m.chunk.0,
                timestamp_ms: m.timestamp.0,
                track: m
                    .track
                    .map_or_else(|| "inbound".into(), |t| t.chars().take(40).collect()),
                payload,
            }
        }
        "dtmf" => TwilioMessage::Dtmf {
            digit: text(&envelope.dtmf["digit"]),
        },
        "mark" => TwilioMessage::Mark {
            name: text(&envelope.mark["name"]),
        },
        "stop" => TwilioMessage::Stop,
        other => TwilioMessage::Other(other.chars().take(40).collect()),
    })
}

/// What a media message's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next one (or the first, or no number at all).
    InOrder,
    /// `missing` messages were skipped.
    Gap { missing: u64 },
    /// Seen already, or older than the newest: drop it.
    Duplicate,
}

/// Tracks `sequenceNumber` across one stream.
#[derive(Debug, Default, Clone)]
pub struct SequenceTracker {
    last: Option<u64>,
}

impl SequenceTracker {
    /// Classifies the next message's number (numbers count every message, not only media).
    pub fn observe(&mut self, sequence: Option<u64>) -> Sequence {
        let Some(n) = sequence else {
            return Sequence::InOrder;
        };
        match self.last {
            Some(last) if n <= last => Sequence::Duplicate,
            Some(last) if n > last + 1 => {
                self.last = Some(n);
                Sequence::Gap {
                    missing: n - last - 1,
                }
            }
            _ => {
                self.last = Some(n);
                Sequence::InOrder
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"customParameters":{"tenant_id":"t"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;

    #[test]
    fn parses_the_documented_messages() {
        assert_eq!(
            parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(TwilioMessage::Connected)
        );
        let TwilioMessage::Start(start) = parse(START).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(start.call_sid, "CA1");
        assert_eq!(start.sample_rate, 8_000);
        assert_eq!(start.custom_parameters["tenant_id"], "t");
        let media = r#"{"event":"media","sequenceNumber":"2","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"20","payload":"//79"}}"#;
        assert_eq!(
            parse(media),
            Ok(TwilioMessage::Media {
                sequence: Some(2),
                chunk: Some(1),
                timestamp_ms: Some(20),
                track: "inbound".into(),
                payload: vec![0xFF, 0xFE, 0xFD],
            })
        );
        assert_eq!(
            parse(
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#
            ),
            Ok(TwilioMessage::Dtmf { digit: "7".into() })
        );
        assert_eq!(
            parse(
                r#"{"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC1","callSid":"CA1"}}"#
            ),
            Ok(TwilioMessage::Stop)
        );
        assert_eq!(
            parse(r#"{"event":"mark","mark":{"name":"m1"}}"#),
            Ok(TwilioMessage::Mark { name: "m1".into() })
        );
        assert_eq!(
            parse(r#"{"event":"surprise"}"#),
            Ok(TwilioMessage::Other("surprise".into()))
        );
    }

    #[test]
    fn media_fields_are_read_leniently_and_bounded() {
        // Escaped slashes are valid JSON inside the base64; numbers may come as numbers.
        let m = r#"{"event":"media","sequenceNumber":7,"media":{"chunk":3,"timestamp":"x","payload":"\/\/79"}}"#;
        assert_eq!(
            parse(m),
            Ok(TwilioMessage::Media {
                sequence: Some(7),
                chunk: Some(3),
                timestamp_ms: None,
                track: "inbound".into(),
                payload: vec![0xFF, 0xFE, 0xFD],
            })
        );
        let long = format!(
            r#"{{"event":"media","sequenceNumber":[1],"media":{{"track":"{}","payload":""}}}}"#,
            "o".repeat(5_000)
        );
        let Ok(TwilioMessage::Media {
            track, sequence, ..
        }) = parse(&long)
        else {
            panic!("not parsed")
        };
        assert_eq!((track.len(), sequence), (40, None));
    }

    #[test]
    fn bad_messages_are_named() {
        for (message, expected) in [
            ("{", "malformed"),
            (r#"{"foo":1}"#, "without an \"event\""),
            (r#"{"event":"start"}"#, "without a \"start\""),
            (r#"{"event":"start","start":{}}"#, "callSid"),
            (r#"{"event":"media","media":{}}"#, "payload"),
            (
                r#"{"event":"media","media":{"payload":"@@@"}}"#,
                "not base64",
            ),
        ] {
            let err = parse(message).unwrap_err();
            assert!(err.contains(expected), "{message}: {err}");
        }
    }

    #[test]
    fn sequence_gaps_and_duplicates() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe(Some(1)), Sequence::InOrder);
        assert_eq!(t.observe(Some(2)), Sequence::InOrder);
        assert_eq!(t.observe(Some(2)), Sequence::Duplicate);
        assert_eq!(t.observe(Some(5)), Sequence::Gap { missing: 2 });
        assert_eq!(t.observe(Some(4)), Sequence::Duplicate);
        assert_eq!(t.observe(None), Sequence::InOrder);
        assert_eq!(t.observe(Some(6)), Sequence::InOrder);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let seeds = [
            START,
            r#"{"event":"media","sequenceNumber":"2","media":{"payload":"//79","chunk":"1"}}"#,
        ];
        for _ in 0..20_000 {
            let mut bytes = seeds[rng.usize(..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[at] = rng.u8(..),
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, rng.u8(32..127)),
                }
            }
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
