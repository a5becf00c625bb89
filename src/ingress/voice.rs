//! `GET /ws/voice/{external_uuid}`: the generic PCM WebSocket's upgrade and admission.
//!
//! The client proves its tenant with the tenant's media token — `Authorization: Bearer …` on
//! the upgrade or a `token` query parameter — unless the tenant is `media_open`. Bad parameters
//! are answered with a JSON `error` event and close 4000; a refused admission with an `error`
//! event and close 1008 (unknown tenant, missing or wrong token) or 1013 (call caps, database
//! unavailable). Neither leaves a call row. The protocol itself is in [`crate::media::voice`].

use std::sync::Arc;

use actix::Actor;
use actix_web::{get, web, HttpRequest, HttpResponse};

use super::admission::{admit, Admitted, Refusal};
use super::{ws_input, WsData};
use crate::audio::pcm::{validate_frame, PcmFormat};
use crate::call::actor::CallActor;
use crate::call::outbound::spawn_writer;
use crate::media::voice::parse_params;
use crate::media::MediaEvent;
use crate::state::AppState;

/// The WebSocket upgrade: admits the stream and starts a `CallActor`, or refuses it.
#[get("/ws/voice/{external_uuid}")]
pub async fn voice_ws(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let params = parse_params(&path, req.query_string());
    super::upgrade(&req, body, state, |up| async move {
        let params = match params {
            Ok(params) => params,
            Err(message) => return reject(up.session, Refusal::bad_request(message)).await,
        };
        let token = up.credentials.bearer.clone();
        let admitted = admit(
            &up.state,
            params.tenant_id,
            token.as_deref(),
            &up.credentials,
            params.protocol,
        )
        .await;
        drop(up.slot);
        match admitted {
            Ok(Admitted { permit, .. }) => {
                let out = spawn_writer(up.session, true);
                let input = ws_input(up.stream, translate);
                CallActor::new(
                    Arc::clone(&up.state.calls),
                    params,
                    input,
                    out,
                    Some(permit),
                )
                .start();
            }
            Err(refusal) => reject(up.session, refusal).await,
        }
    })
}

/// The generic protocol: binary PCM s16le 16 kHz mono in whole 20 ms frames (up to 100 ms);
/// text `{"type":"stop"}` ends the call.
fn translate(data: WsData) -> Vec<MediaEvent> {
    match data {
        WsData::Binary(pcm) => match validate_frame(PcmFormat::WIDEBAND, &pcm) {
            Ok(_) => vec![MediaEvent::Audio {
                channel: 0,
                pcm,
                source: None,
            }],
            Err(reason) => vec![MediaEvent::Invalid(reason.to_string())],
        },
        WsData::Text(text) => {
            let kind = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("type")
                        .or_else(|| v.get("event"))
                        .and_then(|t| t.as_str())
                        .map(String::from)
                });
            match kind.as_deref() {
                Some("stop") => vec![MediaEvent::Stop],
                _ => vec![MediaEvent::Ignored(format!(
                    "text message of {} bytes",
                    text.len()
                ))],
            }
        }
    }
}

/// An `error` event naming the reason, then the refusal's close code.
async fn reject(mut session: actix_ws::Session, refusal: Refusal) {
    let refusal = Refusal {
        reason: super::bounded(&refusal.reason, 120),
        ..refusal
    };
    tracing::warn!(code = refusal.code, reason = %refusal.reason, "voice session refused");
    let event = crate::call::client::ClientEvent::error(refusal.reason.clone());
    let _ = session.text(event.to_json()).await;
    let reason = actix_ws::CloseReason {
        code: actix_ws::CloseCode::from(refusal.code),
        description: Some(refusal.reason),
    };
    let _ = session.close(Some(reason)).await;
}
