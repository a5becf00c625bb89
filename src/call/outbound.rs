//! The one writer of a call's WebSocket: messages go out in order, and the close is sent once,
//! consuming the session (`actix_ws::Session::close` takes `self`).

use actix_ws::{CloseCode, CloseReason, Session};
use bytes::Bytes;
use tokio::sync::mpsc;

/// Something to send to the client.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text event.
    Text(String),
    /// Answer to a ping.
    Pong(Bytes),
    /// The one and only close.
    Close(u16, String),
}

/// Events queued towards one client before further ones are dropped (and counted).
pub const OUTBOUND_QUEUE: usize = 1024;

/// Spawns the writer task for `session` on the current arbiter; returns its queue. With
/// `events` false (carrier streams: Twilio, Vonage, audio_fork), the engine's JSON events are
/// not sent — carriers do not expect them — and only pongs and the close go out.
pub fn spawn_writer(mut session: Session, events: bool) -> mpsc::Sender<Outbound> {
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    actix_web::rt::spawn(async move {
        while let Some(message) = rx.recv().await {
            let sent = match message {
                Outbound::Text(_) if !events => Ok(()),
                Outbound::Text(text) => session.text(text).await,
                Outbound::Pong(payload) => session.pong(&payload).await,
                Outbound::Close(code, description) => {
                    let reason = CloseReason {
                        code: CloseCode::from(code),
                        description: Some(description),
                    };
                    let _ = session.close(Some(reason)).await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        // The call dropped its queue without closing: never leave the client hanging.
        let reason = CloseReason {
            code: CloseCode::Error,
            description: Some("call ended".into()),
        };
        let _ = session.close(Some(reason)).await;
    });
    tx
}
