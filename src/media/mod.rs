//! Media transports. Every transport — the generic PCM WebSocket, Vonage, Twilio Media Streams,
//! FreeSWITCH audio_fork, Asterisk AudioSocket — ends in the same stream of [`MediaEvent`]s, so
//! the `CallActor` and everything after it are protocol-blind. Everything here is pure: the
//! parsers (`twilio`, `vonage`, `audiofork`, `audiosocket`, `voice`) and the `normalize`r. The
//! sockets, handshakes and admission live in [`crate::ingress`].

pub mod audiofork;
pub mod audiosocket;
pub mod normalize;
pub mod twilio;
pub mod voice;
pub mod vonage;

use bytes::Bytes;
use futures_util::stream::LocalBoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::store::Protocol;

/// A carrier's own encoding of one stretch of mono audio: re-normalised if it must be sent
/// again (a replay after an STT reconnect), a quarter of the 16 kHz PCM for 8 kHz G.711.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceAudio {
    pub format: normalize::AudioFormat,
    pub bytes: Bytes,
}

/// What a transport tells a call, already protocol-blind.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// 20 ms (or a multiple) of s16le mono 16 kHz audio on `channel` (0, or 0/1 for stereo).
    /// `source`: the carrier's own bytes for exactly this audio, when they are smaller (μ-law,
    /// A-law, 8 kHz L16) — kept instead of the PCM in the STT replay buffer.
    Audio {
        channel: usize,
        pcm: Bytes,
        source: Option<SourceAudio>,
    },
    /// Audio that cannot be used (wrong size, bad encoding…): counted and skipped.
    Invalid(String),
    /// Messages lost in transit (sequence-number gap).
    Gap(u64),
    /// A message this engine does not use: counted.
    Ignored(String),
    /// A DTMF key.
    Dtmf(String),
    /// A WebSocket ping to answer.
    Ping(Bytes),
    /// The transport says the call is over (Twilio `stop`, generic `stop`, AudioSocket hangup).
    Stop,
    /// The peer closed the connection cleanly.
    Closed,
    /// The connection broke.
    Lost(String),
    /// The peer broke the transport's rules.
    ProtocolError { too_big: bool, detail: String },
}

/// A payload through the call's normaliser, as audio events (one per 20 ms frame and channel).
pub fn audio_events(normalizer: &mut normalize::Normalizer, payload: &Bytes) -> Vec<MediaEvent> {
    normalizer
        .push_events(payload)
        .into_iter()
        .map(|(channel, pcm, source)| MediaEvent::Audio {
            channel,
            pcm,
            source,
        })
        .collect()
}

/// A call's input.
pub type MediaInput = LocalBoxStream<'static, MediaEvent>;

/// Who a carrier call belongs to, read from the key/value pairs the carrier passes through
/// (Vonage headers, Twilio custom parameters, audio_fork metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallIds {
    pub tenant_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub call_id: Option<Uuid>,
    pub phone_number: Option<String>,
    /// The media secret, when passed in-band.
    pub token: Option<String>,
}

/// Reads `tenant_id`, `campaign_id`, `lead_id`, `call_id`, `phone_number` (or `from`) and
/// `token`; `default_tenant` stands in for a missing tenant. The error names the field.
pub fn ids_from_map(
    map: &Map<String, Value>,
    default_tenant: Option<Uuid>,
) -> Result<CallIds, String> {
    let text = |key: &str| match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let uuid = |key: &str| -> Result<Option<Uuid>, String> {
        text(key)
            .map(|v| Uuid::parse_str(&v).map_err(|_| format!("{key} must be a UUID, got {v:?}")))
            .transpose()
    };
    let tenant_id = match uuid("tenant_id")? {
        Some(id) => id,
        None => default_tenant.ok_or("missing tenant_id (and no media.default_tenant_id)")?,
    };
    let phone_number = text("phone_number").or_else(|| text("from"));
    if phone_number.as_ref().is_some_and(|p| p.len() > 64) {
        return Err("phone_number is longer than 64 characters".into());
    }
    Ok(CallIds {
        tenant_id,
        campaign_id: uuid("campaign_id")?,
        lead_id: uuid("lead_id")?,
        call_id: uuid("call_id")?,
        phone_number,
        token: text("token"),
    })
}

/// Carrier media endpoints (`[media]`): Vonage, Twilio, audio_fork, AudioSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Tenant of carrier calls that name none (UUID; empty: such calls are refused).
    #[serde(with = "crate::text::optional")]
    pub default_tenant_id: Option<Uuid>,
    /// Live calls this node takes at once, over every transport (0: no limit).
    pub max_calls: usize,
    /// Live calls per tenant unless the tenant sets its own cap (0: no limit).
    pub max_calls_per_tenant: usize,
    /// Time a carrier has to send its first message (start/connected/metadata/UUID).
    pub handshake_timeout_ms: u64,
    /// AudioSocket TCP listener, `HOST:PORT`; empty: no listener.
    #[serde(with = "crate::text::optional")]
    pub audiosocket_bind: Option<std::net::SocketAddr>,
    /// Tenant of AudioSocket calls (UUID; required with a listener).
    #[serde(with = "crate::text::optional")]
    pub audiosocket_tenant_id: Option<Uuid>,
    /// Source addresses allowed to open AudioSocket sessions, comma-separated; `*`: any.
    pub audiosocket_allow: String,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            default_tenant_id: None,
            max_calls: 10_000,
            max_calls_per_tenant: 0,
            handshake_timeout_ms: 10_000,
            audiosocket_bind: None,
            audiosocket_tenant_id: None,
            audiosocket_allow: "127.0.0.1,::1".into(),
        }
    }
}

/// What the transport told us about a call.
#[derive(Debug, Clone)]
pub struct CallParams {
    pub call_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub phone_number: Option<String>,
    pub external_id: Option<String>,
    pub protocol: Protocol,
    /// Role of each audio channel's speaker (`contact` for the person called or calling in;
    /// `caller` and `callee` for the two sides of a stereo stream). One STT stream each.
    pub speakers: Vec<String>,
    /// What the transport said about the call, stored on the row.
    pub metadata: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ids_come_from_the_carrier_pairs_or_the_default_tenant() {
        let t = Uuid::new_v4();
        let ids = ids_from_map(
            &map(&format!(
                r#"{{"tenant_id":"{t}","from":"+14155550100","token":"s"}}"#
            )),
            None,
        )
        .unwrap();
        assert_eq!(ids.tenant_id, t);
        assert_eq!(ids.phone_number.as_deref(), Some("+14155550100"));
        assert_eq!(ids.token.as_deref(), Some("s"));
        let d = Uuid::new_v4();
        assert_eq!(ids_from_map(&map("{}"), Some(d)).unwrap().tenant_id, d);
        assert!(ids_from_map(&map("{}"), None)
            .unwrap_err()
            .contains("missing tenant_id"));
        assert!(ids_from_map(&map(r#"{"tenant_id":"x"}"#), None)
            .unwrap_err()
            .contains("tenant_id must be a UUID"));
        assert!(ids_from_map(&map(r#"{"lead_id":"7"}"#), Some(d))
            .unwrap_err()
            .contains("lead_id"));
    }
}
