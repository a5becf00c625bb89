//! `GET /ws/audiofork`: FreeSWITCH `mod_audio_fork` and jambonz `listen`. The upgrade's query
//! and the first text message (its metadata) name the call, its rate and its mix (mono or
//! stereo: one speaker per channel); then binary L16 audio and text events (DTMF).

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use super::{Accepted, Carrier, Handshake};
use crate::ingress::WsData;
use crate::media::audiofork;
use crate::media::normalize::{AudioFormat, Encoding, Normalizer};
use crate::media::{audio_events, ids_from_map, MediaEvent};
use crate::state::AppState;
use crate::store::Protocol;

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
    let mut response = super::route::<AudioFork>(&req, body, state, query)?;
    if let (Some(value), true) = (chosen, response.status().is_informational()) {
        response
            .headers_mut()
            .insert(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    Ok(response)
}

/// An audio_fork stream after its first message.
pub(crate) struct AudioFork {
    normalizer: Normalizer,
}

impl Carrier for AudioFork {
    const PROTOCOL: Protocol = Protocol::AudioFork;

    async fn handshake(handshake: &mut Handshake<'_>) -> Result<(Accepted, Self), String> {
        let first = handshake.next_text().await?;
        let start = audiofork::parse_start(&first, handshake.query)?;
        let ids = ids_from_map(&start.pairs, handshake.default_tenant)?;
        let normalizer = Normalizer::new(AudioFormat {
            encoding: Encoding::L16,
            sample_rate: start.sample_rate,
            channels: start.mix.channels(),
        })?;
        let accepted = Accepted {
            ids,
            external_id: start.external_id.clone(),
            speakers: start.mix.speakers(),
            metadata: start.metadata.clone(),
        };
        Ok((accepted, Self { normalizer }))
    }

    fn translate(&mut self, data: WsData) -> Vec<MediaEvent> {
        match data {
            WsData::Binary(bytes) if bytes.is_empty() => {
                vec![MediaEvent::Invalid("empty binary frame".into())]
            }
            WsData::Binary(bytes) => audio_events(&mut self.normalizer, &bytes),
            WsData::Text(text) => match audiofork::parse_text(&text) {
                Some(digit) => vec![MediaEvent::Dtmf(digit)],
                None => vec![MediaEvent::Ignored("text frame".into())],
            },
        }
    }
}
