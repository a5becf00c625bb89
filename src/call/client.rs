//! What a call's own client hears on its socket (the generic socket and the carrier streams
//! that accept text): one typed vocabulary, written by the engine and read by the load
//! generator, so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event for the call's client, serialised as `{"type": "call" | "partial" | "final" |
/// "error", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientEvent {
    /// The call's row exists and audio flows (`linked`: the stream joined a call created
    /// through the API).
    Call {
        call_id: Uuid,
        status: CallState,
        #[serde(default)]
        linked: bool,
    },
    /// The text so far of the turn that will get `seq` (a hint: the `final` carries the
    /// number the database gave).
    Partial {
        seq: i64,
        speaker: String,
        text: String,
    },
    /// A turn is stored under `seq`: a `final` is only ever sent after its commit.
    Final {
        seq: i32,
        text: String,
        #[serde(default)]
        speaker: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    /// Why the call was refused or failed (sent before the close).
    Error { message: String },
}

/// The call's state in a `call` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Active,
}

impl ClientEvent {
    /// An `error` event.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
        }
    }

    /// The JSON text sent on the socket.
    pub fn to_json(&self) -> String {
        // Strings, numbers and a UUID: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_wire_names_and_read_back() {
        let id = Uuid::nil();
        let call = ClientEvent::Call {
            call_id: id,
            status: CallState::Active,
            linked: false,
        };
        assert_eq!(
            call.to_json(),
            format!(r#"{{"type":"call","call_id":"{id}","status":"active","linked":false}}"#)
        );
        let fin = ClientEvent::Final {
            seq: 3,
            text: "hi".into(),
            speaker: "contact".into(),
            start_ms: Some(0),
            end_ms: Some(900),
        };
        let json = fin.to_json();
        assert!(json.starts_with(r#"{"type":"final","seq":3,"#), "{json}");
        assert_eq!(serde_json::from_str::<ClientEvent>(&json).unwrap(), fin);
        assert_eq!(
            ClientEvent::error("no").to_json(),
            r#"{"type":"error","message":"no"}"#
        );
        // A `call` event without `linked` (older engines) still reads.
        let old = format!(r#"{{"type":"call","call_id":"{id}","status":"active"}}"#);
        assert!(matches!(
            serde_json::from_str::<ClientEvent>(&old).unwrap(),
            ClientEvent::Call { linked: false, .. }
        ));
    }
}
