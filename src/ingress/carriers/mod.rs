//! The carrier WebSocket endpoints: `/ws/vonage`, `/ws/twilio`, `/ws/audiofork`, one file each
//! (its route, its handshake, its translation), all through one [`Carrier`] trait and one
//! generic session.
//!
//! Each upgrade spawns a handshake task on the worker's arbiter: it reads the carrier's first
//! message(s) within `media.handshake_timeout_ms`, takes the call's ids and audio format from
//! them, admits the stream (tenant secret, Twilio signature, limits), and only then starts the
//! `CallActor` with the rest of the socket mapped into media events by the protocol's pure
//! parser. A refused stream is closed (1008 policy, 1013 try again later, 4000 bad handshake)
//! with the reason, logged, and leaves no call row. Carriers get no JSON events from the
//! engine, only the close.

mod audiofork;
mod twilio;
mod vonage;

pub use audiofork::audiofork_ws;
pub use twilio::twilio_ws;
pub use vonage::vonage_ws;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{Message as WsMessage, MessageStream, Session};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::admission::{admit, Admitted, Refusal, UpgradeCredentials};
use super::{ws_input, Upgraded, WsData};
use crate::call::actor::{CallActor, CallParams};
use crate::call::outbound::spawn_writer;
use crate::media::{CallIds, MediaEvent};
use crate::state::AppState;
use crate::store::Protocol;

/// One carrier protocol: how its handshake reads, and how each message of the live stream
/// becomes media events. The I/O around both (the deadline, pings, admission, the refusal's
/// close, the call's start) is [`session`]'s, the same for every carrier.
pub(crate) trait Carrier: Sized + 'static {
    const PROTOCOL: Protocol;

    /// Reads the carrier's first message(s): the call's ids and format, and the translator of
    /// the rest of the stream. `Err`: why the stream is refused (closed with 4000).
    async fn handshake(handshake: &mut Handshake<'_>) -> Result<(Accepted, Self), String>;

    /// One data message of the live stream as media events.
    fn translate(&mut self, data: WsData) -> Vec<MediaEvent>;
}

/// A carrier's handshake in progress: its text messages within the deadline, and what the
/// upgrade request said.
pub(crate) struct Handshake<'a> {
    stream: &'a mut MessageStream,
    session: &'a mut Session,
    deadline: tokio::time::Instant,
    /// `media.default_tenant_id`, for carriers that pass no tenant.
    pub default_tenant: Option<uuid::Uuid>,
    /// The upgrade request's query parameters.
    pub query: &'a Map<String, Value>,
}

impl Handshake<'_> {
    /// The next text message, answering pings; binary data first is an error.
    pub async fn next_text(&mut self) -> Result<String, String> {
        loop {
            let next = tokio::time::timeout_at(self.deadline, self.stream.next())
                .await
                .map_err(|_| "no handshake message in time".to_string())?;
            match next {
                Some(Ok(WsMessage::Text(text))) => return Ok(text.to_string()),
                Some(Ok(WsMessage::Ping(payload))) => {
                    let _ = self.session.pong(&payload).await;
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err("audio arrived before the stream's first text message".into())
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    return Err("closed during the handshake".into())
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    return Err(format!("protocol error during the handshake: {err}"))
                }
            }
        }
    }
}

/// Everything a carrier handshake produced.
pub(crate) struct Accepted {
    pub ids: CallIds,
    pub external_id: Option<String>,
    pub speakers: Vec<String>,
    pub metadata: Value,
}

/// The route of carrier `C`: upgrade, then [`session`] on the worker's arbiter.
pub(crate) fn route<C: Carrier>(
    req: &HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: Map<String, Value>,
) -> Result<HttpResponse, actix_web::Error> {
    super::upgrade(req, body, state, |up| session::<C>(up, query))
}

/// One carrier stream: its handshake within `media.handshake_timeout_ms`, then admission and
/// the call; a refusal at any step closes the socket with the reason.
async fn session<C: Carrier>(up: Upgraded, query: Map<String, Value>) {
    let Upgraded {
        state,
        mut session,
        mut stream,
        credentials,
        slot: _slot,
    } = up;
    let mut handshake = Handshake {
        stream: &mut stream,
        session: &mut session,
        deadline: tokio::time::Instant::now()
            + Duration::from_millis(state.media.handshake_timeout_ms),
        default_tenant: state.media.default_tenant_id,
        query: &query,
    };
    let (accepted, mut carrier) = match C::handshake(&mut handshake).await {
        Ok(done) => done,
        Err(reason) => return refuse(session, C::PROTOCOL, 4000, reason).await,
    };
    start_call(
        state,
        session,
        C::PROTOCOL,
        accepted,
        credentials,
        move || ws_input(stream, move |data| carrier.translate(data)),
    )
    .await;
}

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

/// Admits and starts the call; refuses the stream otherwise.
async fn start_call(
    state: web::Data<AppState>,
    session: Session,
    protocol: Protocol,
    accepted: Accepted,
    credentials: UpgradeCredentials,
    input: impl FnOnce() -> crate::media::MediaInput,
) {
    let Accepted {
        ids,
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
