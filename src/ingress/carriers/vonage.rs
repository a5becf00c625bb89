//! `GET /ws/vonage`: the Vonage Voice API WebSocket. The first text message (`websocket:connected`)
//! names the call (its headers) and the L16 rate; then binary frames of exactly one 20 ms
//! frame and text events (DTMF).

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use super::{Accepted, Carrier, Handshake};
use crate::ingress::WsData;
use crate::media::normalize::{AudioFormat, Encoding, Normalizer};
use crate::media::vonage::{self, VonageEvent};
use crate::media::{audio_events, ids_from_map, MediaEvent};
use crate::state::AppState;
use crate::store::Protocol;

#[get("/ws/vonage")]
pub async fn vonage_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    super::route::<Vonage>(&req, body, state, Map::new())
}

/// A Vonage stream after its handshake.
pub(crate) struct Vonage {
    normalizer: Normalizer,
    rate: u32,
    /// Bytes of one frame at `rate`.
    frame: usize,
}

impl Carrier for Vonage {
    const PROTOCOL: Protocol = Protocol::Vonage;

    async fn handshake(handshake: &mut Handshake<'_>) -> Result<(Accepted, Self), String> {
        let first = handshake.next_text().await?;
        let connected = vonage::parse_connected(&first)?;
        let ids = ids_from_map(&connected.headers, handshake.default_tenant)?;
        let external_id = ["uuid", "call_uuid", "conversation_uuid"]
            .iter()
            .find_map(|k| connected.headers.get(*k).and_then(Value::as_str))
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .map(str::to_string);
        let rate = connected.sample_rate;
        let normalizer = Normalizer::new(AudioFormat {
            encoding: Encoding::L16,
            sample_rate: rate,
            channels: 1,
        })?;
        let accepted = Accepted {
            ids,
            external_id,
            speakers: vec!["contact".into()],
            metadata: Value::Object(connected.headers),
        };
        let stream = Self {
            normalizer,
            rate,
            frame: vonage::frame_bytes(rate),
        };
        Ok((accepted, stream))
    }

    fn translate(&mut self, data: WsData) -> Vec<MediaEvent> {
        match data {
            WsData::Binary(bytes) if bytes.len() == self.frame => {
                audio_events(&mut self.normalizer, &bytes)
            }
            WsData::Binary(bytes) => vec![MediaEvent::Invalid(format!(
                "{} bytes; Vonage sends {}-byte frames at {} Hz",
                bytes.len(),
                self.frame,
                self.rate
            ))],
            WsData::Text(text) => match vonage::parse_event(&text) {
                Ok(VonageEvent::Dtmf { digit }) => vec![MediaEvent::Dtmf(digit)],
                Ok(VonageEvent::Other(event)) => vec![MediaEvent::Ignored(event)],
                Err(reason) => vec![MediaEvent::Ignored(reason)],
            },
        }
    }
}
