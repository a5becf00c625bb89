//! Every way call media comes in: the actix handlers and listeners, their handshakes, and the
//! one admission path they share ([`admission::admit`]). The protocols' pure parsers live in
//! [`crate::media`]; this module only does I/O and admission.
//!
//! Limits that apply before any tenant is known: HTTP request and keep-alive deadlines and
//! connection caps (set on the server from [`IngressSettings`]), and a cap on sockets that are
//! upgraded but not yet through their handshake ([`admission::HandshakeSlots`]).

pub mod admission;
pub mod audiosocket;
pub mod carriers;
pub mod voice;

use actix_ws::{Message as WsMessage, MessageStream, ProtocolError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::media::{MediaEvent, MediaInput};

/// `[ingress]`: limits on every connection before admission.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressSettings {
    /// Time a client has to send a request's headers (slowloris guard).
    pub request_timeout_ms: u64,
    /// Time a closing connection gets to shut down.
    pub disconnect_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long.
    pub keep_alive_secs: u64,
    /// Open connections per HTTP worker; more wait in the accept queue.
    pub max_connections_per_worker: usize,
    /// New connections per HTTP worker being set up at once.
    pub max_connection_rate_per_worker: usize,
    /// Media sockets upgraded but not yet through their handshake, over the node; more are
    /// answered 503 before the upgrade.
    pub max_pending_handshakes: usize,
    /// Whole-body deadline for webhook requests.
    pub body_timeout_ms: u64,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 5_000,
            disconnect_timeout_ms: 2_000,
            keep_alive_secs: 30,
            max_connections_per_worker: 25_000,
            max_connection_rate_per_worker: 256,
            max_pending_handshakes: 1_024,
            body_timeout_ms: 10_000,
        }
    }
}

/// A WebSocket data message, for a protocol's translator.
pub enum WsData {
    Text(String),
    Binary(bytes::Bytes),
}

/// Maps a WebSocket's messages through `translate` (text and binary) into media events; pings,
/// closes and protocol errors are handled the same way for every protocol.
pub fn ws_input(
    stream: MessageStream,
    mut translate: impl FnMut(WsData) -> Vec<MediaEvent> + 'static,
) -> MediaInput {
    stream
        .map(move |item| match item {
            Ok(WsMessage::Text(text)) => translate(WsData::Text(text.to_string())),
            Ok(WsMessage::Binary(data)) => translate(WsData::Binary(data)),
            Ok(WsMessage::Ping(payload)) => vec![MediaEvent::Ping(payload)],
            Ok(WsMessage::Close(_)) => vec![MediaEvent::Closed],
            Ok(WsMessage::Pong(_) | WsMessage::Nop) => Vec::new(),
            Ok(WsMessage::Continuation(_)) => {
                vec![MediaEvent::Ignored("continuation frame".into())]
            }
            // A reset connection surfaces as an I/O error: the caller is gone, not misbehaving.
            Err(ProtocolError::Io(err)) => vec![MediaEvent::Lost(err.to_string())],
            Err(err) => vec![MediaEvent::ProtocolError {
                too_big: matches!(err, ProtocolError::Overflow),
                detail: err.to_string(),
            }],
        })
        .flat_map(futures_util::stream::iter)
        .boxed_local()
}

/// What a media WebSocket's handshake task gets: the upgraded socket, what the upgrade request
/// carried for admission, and the handshake slot it holds until admitted or refused.
pub(crate) struct Upgraded {
    pub state: actix_web::web::Data<crate::state::AppState>,
    pub session: actix_ws::Session,
    pub stream: MessageStream,
    pub credentials: admission::UpgradeCredentials,
    pub slot: admission::HandshakeSlot,
}

/// The shared front of every media WebSocket: refuses with 503 while draining or when every
/// handshake slot is taken, upgrades (messages capped at
/// [`crate::media::voice::MAX_MESSAGE_BYTES`]), and runs the protocol's `handshake` on the
/// worker's arbiter. Returns the upgrade response.
pub(crate) fn upgrade<Fut>(
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    state: actix_web::web::Data<crate::state::AppState>,
    handshake: impl FnOnce(Upgraded) -> Fut,
) -> Result<actix_web::HttpResponse, actix_web::Error>
where
    Fut: std::future::Future<Output = ()> + 'static,
{
    use actix_web::http::StatusCode;
    if state.is_draining() {
        return Ok(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "node is shutting down",
        ));
    }
    let Some(slot) = state.handshakes.try_take() else {
        return Ok(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections in their handshake",
        ));
    };
    let credentials = admission::UpgradeCredentials::from_request(req, &state.public_base_url);
    let (response, session, stream) = actix_ws::handle(req, body)?;
    let stream = stream.max_frame_size(crate::media::voice::MAX_MESSAGE_BYTES);
    actix_web::rt::spawn(handshake(Upgraded {
        state,
        session,
        stream,
        credentials,
        slot,
    }));
    Ok(response)
}

/// The JSON answer of a refused HTTP request before an upgrade.
pub(crate) fn refused(
    status: actix_web::http::StatusCode,
    reason: &str,
) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    crate::http_error::ApiError::new(status, reason).error_response()
}

pub use crate::text::bounded;

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_cuts_on_character_boundaries() {
        assert_eq!(super::bounded("short", 10), "short");
        let long = "日本語".repeat(100);
        let cut = super::bounded(&long, 120);
        assert!(cut.len() <= 120);
        assert!(cut.ends_with('…'));
    }
}
