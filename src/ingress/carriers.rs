//! The carrier WebSocket endpoints: `/ws/vonage`, `/ws/twilio`, `/ws/audiofork`.
//!
//! Each upgrade spawns a handshake task on the worker's arbiter: it reads the carrier's first
//! message(s) within `media.handshake_timeout_ms`, takes the call's ids and audio format from
//! them, admits the stream (tenant secret, Twilio signature, limits), and only then starts the
//! `CallActor` with the rest of the socket mapped into media events by the protocol's pure
//! parser. A refused stream is closed (1008 policy, 1013 try again later, 4000 bad handshake)
//! with the reason, logged, and leaves no call row. Carriers get no JSON events from the
//! engine, only the close.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{get, web, HttpRequest, HttpResponse};
use actix_ws::{Message as WsMessage, MessageStream, Session};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::admission::{admit, Admitted, HandshakeSlot, Refusal, UpgradeCredentials};
use super::{ws_input, WsData};
use crate::call::actor::{CallActor, CallParams};
use crate::call::outbound::spawn_writer;
use crate::media::audiofork;
use crate::media::normalize::{AudioFormat, Encoding, Normalizer};
use crate::media::twilio::{self, Sequence, SequenceTracker, TwilioMessage};
use crate::media::vonage::{self, VonageEvent};
use crate::media::{ids_from_map, CallIds, MediaEvent};
use crate::state::AppState;
use crate::store::Protocol;

/// Closes a refused stream with `code` and the reason.
async fn refuse(session: Session, protocol: Protocol, code: u16, reason: String) {
    let reason = super::bounded(&reason, 120);
    tracing::warn!(%protocol, code, %reason, "media stream refused");
    let close = actix_ws::CloseReason {
        code: actix_ws::CloseCode::from(code),
        description: Some(reason),
    };
    let _ = session.close(Some(close)).await;
}

/// The next text message of the handshake, answering pings; binary data first is an error.
async fn next_text(
    stream: &mut MessageStream,
    session: &mut Session,
    deadline: tokio::time::Instant,
) -> Result<String, String> {
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| "no handshake message in time".to_string())?;
        match next {
            Some(Ok(WsMessage::Text(text))) => return Ok(text.to_string()),
            Some(Ok(WsMessage::Ping(payload))) => {
                let _ = session.pong(&payload).await;
            }
            Some(Ok(WsMessage::Binary(_))) => {
                return Err("audio arrived before the stream's first text message".into())
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err("closed during the handshake".into())
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("protocol error during the handshake: {err}")),
        }
    }
}

fn handshake_deadline(state: &AppState) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(state.media.handshake_timeout_ms)
}

fn default_tenant(state: &AppState) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(&state.media.default_tenant_id).ok()
}

/// Everything a carrier handshake produced.
struct Accepted {
    ids: CallIds,
    protocol: Protocol,
    external_id: Option<String>,
    speakers: Vec<String>,
    metadata: Value,
}

/// Admits and starts the call; refuses the stream otherwise.
async fn start_call(
    state: web::Data<AppState>,
    session: Session,
    accepted: Accepted,
    credentials: UpgradeCredentials,
    input: impl FnOnce() -> crate::media::MediaInput,
) {
    let Accepted {
        ids,
        protocol,
        external_id,
        speakers,
        metadata,
    } = accepted;
    let token = credentials.bearer.clone().or(ids.token.clone());
    let permit = match admit(
        &state,
        ids.tenant_id,
        token.as_deref(),
        &credentials,
        protocol,
    )
    .await
    {
        Ok(Admitted { permit, .. }) => permit,
        Err(Refusal { code, reason }) => return refuse(session, protocol, code, reason).await,
    };
    let params = CallParams {
        call_id: ids.call_id,
        tenant_id: ids.tenant_id,
        campaign_id: ids.campaign_id,
        lead_id: ids.lead_id,
        phone_number: ids.phone_number,
        external_id,
        protocol,
        speakers,
        metadata: Some(redact_token(metadata)),
    };
    let out = spawn_writer(session, false);
    CallActor::new(Arc::clone(&state.calls), params, input(), out, Some(permit)).start();
}

/// The in-band media token is a secret: never stored with the metadata.
fn redact_token(mut metadata: Value) -> Value {
    fn strip(value: &mut Value) {
        if let Value::Object(map) = value {
            if map.contains_key("token") {
                map.insert("token".into(), Value::String("***".into()));
            }
            for v in map.values_mut() {
                strip(v);
            }
        }
    }
    strip(&mut metadata);
    metadata
}

/// Turns normalised frames into audio events.
fn audio_events(normalizer: &mut Normalizer, payload: &bytes::Bytes) -> Vec<MediaEvent> {
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

// ---------------------------------------------------------------------------------------------
// Vonage

/// `GET /ws/vonage`: Vonage Voice API WebSocket.
#[get("/ws/vonage")]
pub async fn vonage_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    super::upgrade(&req, body, state, |up| async move {
        vonage_session(up.state, up.session, up.stream, up.credentials, up.slot).await
    })
}

async fn vonage_session(
    state: web::Data<AppState>,
    mut session: Session,
    mut stream: MessageStream,
    credentials: UpgradeCredentials,
    _slot: HandshakeSlot,
) {
    let deadline = handshake_deadline(&state);
    let first = match next_text(&mut stream, &mut session, deadline).await {
        Ok(text) => text,
        Err(reason) => return refuse(session, Protocol::Vonage, 4000, reason).await,
    };
    let connected = match vonage::parse_connected(&first) {
        Ok(c) => c,
        Err(reason) => return refuse(session, Protocol::Vonage, 4000, reason).await,
    };
    let ids = match ids_from_map(&connected.headers, default_tenant(&state)) {
        Ok(ids) => ids,
        Err(reason) => return refuse(session, Protocol::Vonage, 4000, reason).await,
    };
    let external_id = ["uuid", "call_uuid", "conversation_uuid"]
        .iter()
        .find_map(|k| connected.headers.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_string);
    let rate = connected.sample_rate;
    let format = AudioFormat {
        encoding: Encoding::L16,
        sample_rate: rate,
        channels: 1,
    };
    let mut normalizer = match Normalizer::new(format) {
        Ok(n) => n,
        Err(reason) => return refuse(session, Protocol::Vonage, 4000, reason).await,
    };
    let accepted = Accepted {
        ids,
        protocol: Protocol::Vonage,
        external_id,
        speakers: vec!["contact".into()],
        metadata: Value::Object(connected.headers),
    };
    start_call(state, session, accepted, credentials, move || {
        let frame = vonage::frame_bytes(rate);
        ws_input(stream, move |data| match data {
            WsData::Binary(bytes) if bytes.len() == frame => audio_events(&mut normalizer, &bytes),
            WsData::Binary(bytes) => vec![MediaEvent::Invalid(format!(
                "{} bytes; Vonage sends {frame}-byte frames at {rate} Hz",
                bytes.len()
            ))],
            WsData::Text(text) => match vonage::parse_event(&text) {
                Ok(VonageEvent::Dtmf { digit }) => vec![MediaEvent::Dtmf(digit)],
                Ok(VonageEvent::Other(event)) => vec![MediaEvent::Ignored(event)],
                Err(reason) => vec![MediaEvent::Ignored(reason)],
            },
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Twilio

/// `GET /ws/twilio`: Twilio Media Streams.
#[get("/ws/twilio")]
pub async fn twilio_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    super::upgrade(&req, body, state, |up| async move {
        twilio_session(up.state, up.session, up.stream, up.credentials, up.slot).await
    })
}

/// Twilio's handshake: `connected` (optional), then `start` within the deadline.
async fn twilio_start(
    stream: &mut MessageStream,
    session: &mut Session,
    deadline: tokio::time::Instant,
) -> Result<Box<twilio::TwilioStart>, String> {
    loop {
        let text = next_text(stream, session, deadline).await?;
        match twilio::parse(&text)? {
            TwilioMessage::Connected => continue,
            TwilioMessage::Start(start) => return Ok(start),
            other => return Err(format!("expected connected or start first, got {other:?}")),
        }
    }
}

/// The audio a Twilio `start` announces (μ-law unless it says A-law or L16).
fn twilio_format(start: &twilio::TwilioStart) -> Result<AudioFormat, String> {
    let encoding = match start.encoding.to_ascii_lowercase().as_str() {
        "audio/x-mulaw" => Encoding::Mulaw,
        "audio/x-alaw" => Encoding::Alaw,
        "audio/x-l16" | "audio/l16" => Encoding::L16,
        other => return Err(format!("unsupported Twilio media encoding {other:?}")),
    };
    Ok(AudioFormat {
        encoding,
        sample_rate: start.sample_rate,
        channels: start.channels,
    })
}

async fn twilio_session(
    state: web::Data<AppState>,
    mut session: Session,
    mut stream: MessageStream,
    credentials: UpgradeCredentials,
    _slot: HandshakeSlot,
) {
    let deadline = handshake_deadline(&state);
    let mut tracker = SequenceTracker::default();
    let start = match twilio_start(&mut stream, &mut session, deadline).await {
        Ok(start) => start,
        Err(reason) => return refuse(session, Protocol::Twilio, 4000, reason).await,
    };
    let mut normalizer = match twilio_format(&start).and_then(Normalizer::new) {
        Ok(n) => n,
        Err(reason) => return refuse(session, Protocol::Twilio, 4000, reason).await,
    };
    let ids = match ids_from_map(&start.custom_parameters, default_tenant(&state)) {
        Ok(ids) => ids,
        Err(reason) => return refuse(session, Protocol::Twilio, 4000, reason).await,
    };
    let metadata = serde_json::json!({
        "stream_sid": start.stream_sid,
        "account_sid": start.account_sid,
        "tracks": start.tracks,
        "custom_parameters": start.custom_parameters,
        "media_format": { "encoding": start.encoding, "sample_rate": start.sample_rate, "channels": start.channels },
    });
    let accepted = Accepted {
        ids,
        protocol: Protocol::Twilio,
        external_id: Some(start.call_sid.clone()),
        speakers: vec!["contact".into()],
        metadata,
    };
    start_call(state, session, accepted, credentials, move || {
        ws_input(stream, move |data| {
            let WsData::Text(text) = data else {
                return vec![MediaEvent::Invalid(
                    "binary message on a Twilio stream".into(),
                )];
            };
            match twilio::parse(&text) {
                Ok(TwilioMessage::Media {
                    sequence,
                    track,
                    payload,
                    ..
                }) => {
                    let mut events = match tracker.observe(sequence) {
                        Sequence::Duplicate => {
                            return vec![MediaEvent::Invalid(format!(
                                "duplicate media message {sequence:?}"
                            ))]
                        }
                        Sequence::Gap { missing } => vec![MediaEvent::Gap(missing)],
                        Sequence::InOrder => Vec::new(),
                    };
                    if track != "inbound" {
                        events.push(MediaEvent::Ignored(format!("{track} track")));
                        return events;
                    }
                    events.extend(audio_events(&mut normalizer, &payload.into()));
                    events
                }
                Ok(TwilioMessage::Stop) => vec![MediaEvent::Stop],
                Ok(TwilioMessage::Dtmf { digit }) => vec![MediaEvent::Dtmf(digit)],
                Ok(TwilioMessage::Mark { .. }) | Ok(TwilioMessage::Connected) => Vec::new(),
                Ok(TwilioMessage::Start(_)) => {
                    vec![MediaEvent::Ignored("second start message".into())]
                }
                Ok(TwilioMessage::Other(event)) => vec![MediaEvent::Ignored(event)],
                Err(reason) => vec![MediaEvent::Invalid(reason)],
            }
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// FreeSWITCH mod_audio_fork / jambonz listen

/// `GET /ws/audiofork`: FreeSWITCH mod_audio_fork and jambonz `listen`.
#[get("/ws/audiofork")]
pub async fn audiofork_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query: Map<String, Value> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
    // mod_audio_fork offers its subprotocol; answer with it when asked.
    let chosen = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|p| actix_web::http::header::HeaderValue::from_str(p.trim()).ok());
    let mut response = super::upgrade(&req, body, state, |up| async move {
        audiofork_session(
            up.state,
            up.session,
            up.stream,
            up.credentials,
            query,
            up.slot,
        )
        .await
    })?;
    if let (Some(value), true) = (chosen, response.status().is_informational()) {
        response
            .headers_mut()
            .insert(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    Ok(response)
}

async fn audiofork_session(
    state: web::Data<AppState>,
    mut session: Session,
    mut stream: MessageStream,
    credentials: UpgradeCredentials,
    query: Map<String, Value>,
    _slot: HandshakeSlot,
) {
    let deadline = handshake_deadline(&state);
    let first = match next_text(&mut stream, &mut session, deadline).await {
        Ok(text) => text,
        Err(reason) => return refuse(session, Protocol::AudioFork, 4000, reason).await,
    };
    let start = match audiofork::parse_start(&first, &query) {
        Ok(start) => start,
        Err(reason) => return refuse(session, Protocol::AudioFork, 4000, reason).await,
    };
    let ids = match ids_from_map(&start.pairs, default_tenant(&state)) {
        Ok(ids) => ids,
        Err(reason) => return refuse(session, Protocol::AudioFork, 4000, reason).await,
    };
    let format = AudioFormat {
        encoding: Encoding::L16,
        sample_rate: start.sample_rate,
        channels: start.mix.channels(),
    };
    let mut normalizer = match Normalizer::new(format) {
        Ok(n) => n,
        Err(reason) => return refuse(session, Protocol::AudioFork, 4000, reason).await,
    };
    let accepted = Accepted {
        ids,
        protocol: Protocol::AudioFork,
        external_id: start.external_id.clone(),
        speakers: start.mix.speakers(),
        metadata: start.metadata.clone(),
    };
    start_call(state, session, accepted, credentials, move || {
        ws_input(stream, move |data| match data {
            WsData::Binary(bytes) if bytes.is_empty() => {
                vec![MediaEvent::Invalid("empty binary frame".into())]
            }
            WsData::Binary(bytes) => audio_events(&mut normalizer, &bytes),
            WsData::Text(text) => match audiofork::parse_text(&text) {
                Some(digit) => vec![MediaEvent::Dtmf(digit)],
                None => vec![MediaEvent::Ignored("text frame".into())],
            },
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_band_tokens_are_not_stored() {
        let m = redact_token(serde_json::json!({"token":"s3cret","metadata":{"token":"x","a":1}}));
        assert_eq!(m["token"], "***");
        assert_eq!(m["metadata"]["token"], "***");
        assert_eq!(m["metadata"]["a"], 1);
    }
}
