//! The node's live event bus: what happens to calls, published by the call actors and read by
//! `GET /api/v1/events` (Server-Sent Events). A `turn.final` is published when its turn is
//! committed — the same moment the generic socket's client gets its `final` — so carrier
//! calls, which get nothing back on their own connection, can be followed live and measured.
//!
//! A bounded broadcast: a reader that falls behind by more than the capacity loses the oldest
//! events and is told how many (`lagged`); nothing waits on a slow reader. With no reader, a
//! publish costs a check of the receiver count.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events a reader may fall behind by before it loses some.
pub const CAPACITY: usize = 16_384;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum LiveEvent {
    /// The call's row exists and audio flows.
    #[serde(rename = "call.started")]
    CallStarted {
        call_id: Uuid,
        tenant_id: Uuid,
        protocol: String,
        external_id: Option<String>,
    },
    /// A turn is durable.
    #[serde(rename = "turn.final")]
    TurnFinal {
        call_id: Uuid,
        tenant_id: Uuid,
        external_id: Option<String>,
        seq: i64,
        speaker: String,
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    /// The call is finished and flushed.
    #[serde(rename = "call.ended")]
    CallEnded {
        call_id: Uuid,
        tenant_id: Uuid,
        external_id: Option<String>,
        reason: String,
        turns: u64,
    },
}

impl LiveEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CallStarted { .. } => "call.started",
            Self::TurnFinal { .. } => "turn.final",
            Self::CallEnded { .. } => "call.ended",
        }
    }

    pub fn tenant_id(&self) -> Uuid {
        match self {
            Self::CallStarted { tenant_id, .. }
            | Self::TurnFinal { tenant_id, .. }
            | Self::CallEnded { tenant_id, .. } => *tenant_id,
        }
    }

    pub fn call_id(&self) -> Uuid {
        match self {
            Self::CallStarted { call_id, .. }
            | Self::TurnFinal { call_id, .. }
            | Self::CallEnded { call_id, .. } => *call_id,
        }
    }
}

/// The bus (cheap to clone).
#[derive(Debug, Clone)]
pub struct EventBus(broadcast::Sender<Arc<LiveEvent>>);

impl Default for EventBus {
    fn default() -> Self {
        Self(broadcast::channel(CAPACITY).0)
    }
}

impl EventBus {
    /// Whether anyone listens (build events only then).
    pub fn listened(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// Publishes to every current reader.
    pub fn publish(&self, event: LiveEvent) {
        if self.listened() {
            let _ = self.0.send(Arc::new(event));
        }
    }

    /// A reader of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_get_events_from_their_subscription_on() {
        let bus = EventBus::default();
        let call_id = Uuid::new_v4();
        let ended = |turns| LiveEvent::CallEnded {
            call_id,
            tenant_id: Uuid::nil(),
            external_id: Some("x".into()),
            reason: "hangup".into(),
            turns,
        };
        bus.publish(ended(0));
        let mut rx = bus.subscribe();
        assert!(bus.listened());
        bus.publish(ended(2));
        let got = rx.try_recv().expect("one event");
        assert_eq!(*got, ended(2));
        assert_eq!(got.name(), "call.ended");
        assert_eq!(got.call_id(), call_id);
        let json = serde_json::to_value(&*got).unwrap_or_default();
        assert_eq!(json["type"], "call.ended");
        assert_eq!(json["turns"], 2);
        assert!(rx.try_recv().is_err());
    }
}
