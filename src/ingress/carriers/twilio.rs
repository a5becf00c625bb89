//! `GET /ws/twilio`: Twilio Media Streams. `connected` (optional), then `start` (the call's
//! ids, custom parameters and format), then JSON `media` messages carrying base64 audio with
//! sequence numbers, `dtmf`, `mark` and `stop`.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde_json::Map;

use super::{Accepted, Carrier, Handshake};
use crate::ingress::WsData;
use crate::media::normalize::{AudioFormat, Encoding, Normalizer};
use crate::media::twilio::{self, Sequence, SequenceTracker, TwilioMessage};
use crate::media::{audio_events, ids_from_map, MediaEvent};
use crate::state::AppState;
use crate::store::Protocol;

#[get("/ws/twilio")]
pub async fn twilio_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    super::route::<Twilio>(&req, body, state, Map::new())
}

/// A Twilio stream after its `start`.
pub(crate) struct Twilio {
    normalizer: Normalizer,
    tracker: SequenceTracker,
}

/// The audio a Twilio `start` announces (μ-law unless it says A-law or L16).
fn twilio_format(start: &twilio::TwilioStart) -> Result<AudioFormat, String> {
    let encoding = match start.encoding.to_ascii_lowercase().as_str() {
        "audio/x-mulaw" => Encoding::Mulaw,
        "audio/x-alaw" => Encoding::Alaw,
        "audio/x-l16" | "audio/l16" => Encoding::L16,
        other => {
            return Err(format!(
                "unsupported Twilio media encoding {:?}",
                crate::text::bounded(other, 40)
            ))
        }
    };
    Ok(AudioFormat {
        encoding,
        sample_rate: start.sample_rate,
        channels: start.channels,
    })
}

impl Carrier for Twilio {
    const PROTOCOL: Protocol = Protocol::Twilio;

    async fn handshake(handshake: &mut Handshake<'_>) -> Result<(Accepted, Self), String> {
        let start = loop {
            let text = handshake.next_text().await?;
            match twilio::parse(&text)? {
                TwilioMessage::Connected => continue,
                TwilioMessage::Start(start) => break start,
                other => return Err(format!("expected connected or start first, got {other:?}")),
            }
        };
        let normalizer = twilio_format(&start).and_then(Normalizer::new)?;
        let ids = ids_from_map(&start.custom_parameters, handshake.default_tenant)?;
        let metadata = serde_json::json!({
            "stream_sid": start.stream_sid,
            "account_sid": start.account_sid,
            "tracks": start.tracks,
            "custom_parameters": start.custom_parameters,
            "media_format": { "encoding": start.encoding, "sample_rate": start.sample_rate, "channels": start.channels },
        });
        let accepted = Accepted {
            ids,
            external_id: Some(start.call_sid.clone()),
            speakers: vec!["contact".into()],
            metadata,
        };
        let stream = Self {
            normalizer,
            tracker: SequenceTracker::default(),
        };
        Ok((accepted, stream))
    }

    fn translate(&mut self, data: WsData) -> Vec<MediaEvent> {
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
                let mut events = match self.tracker.observe(sequence) {
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
                events.extend(audio_events(&mut self.normalizer, &payload.into()));
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
    }
}
