//! The node's live event bus: what happens to calls, published by the call actors and read by
//! `GET /api/v1/events` (Server-Sent Events). A `turn.final` is published when its turn is
//! committed — the same moment the generic socket's client gets its `final` — so carrier
//! calls, which get nothing back on their own connection, can be followed live and measured.
//!
//! Delivery is per scope: one bounded broadcast channel per tenant that has a reader (created
//! on the first subscription, removed when its last reader goes, so the map holds only tenants
//! with a live reader), plus one channel of every tenant's events for admin readers. A tenant's
//! reader is subscribed to its own tenant's channel only, so a burst from another tenant never
//! takes room in its queue. A reader that falls behind its own channel by more than the
//! capacity loses the oldest events and is told how many (`lagged`); nothing waits on a slow
//! reader. With no reader, a publish costs one atomic load; with readers, a short read lock
//! and one non-blocking send per interested channel (never an await).
//!
//! Each API token holds at most [`MAX_SUBSCRIBERS_PER_TOKEN`] (configurable) subscriptions at
//! once; a [`Subscription`] frees its slot when it is dropped (when the SSE stream ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events a reader may fall behind its channel by before it loses some (default of
/// `api.event_feed_capacity`).
pub const CAPACITY: usize = 16_384;

/// Concurrent event-feed subscriptions one API token may hold (default of
/// `api.max_event_subscribers_per_token`; the admin token counts as one token).
pub const MAX_SUBSCRIBERS_PER_TOKEN: usize = 8;

/// The largest channel capacity the bus accepts (larger settings are clamped to it).
pub const MAX_CAPACITY: usize = 1 << 20;

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

type Sender = broadcast::Sender<Arc<LiveEvent>>;

/// Which events a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every tenant's events (admin readers only).
    All,
    /// One tenant's events.
    Tenant(Uuid),
}

/// The API token a subscription counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// The admin token (one token, whoever uses it).
    Admin,
    /// A tenant's API token.
    Tenant(Uuid),
}

/// A subscription refused: the token already holds `limit` subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySubscribers {
    pub limit: usize,
}

impl std::fmt::Display for TooManySubscribers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this token already holds {} event streams (api.max_event_subscribers_per_token)",
            self.limit
        )
    }
}

impl std::error::Error for TooManySubscribers {}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    per_token: usize,
    /// Every tenant's events, for admin readers.
    all: Sender,
    /// One channel per tenant with at least one reader.
    tenants: RwLock<HashMap<Uuid, Sender>>,
    /// Subscriptions held per token.
    holders: Mutex<HashMap<Holder, usize>>,
    /// Live subscriptions of any scope (the publish fast path).
    readers: AtomicUsize,
}

// The locks are held for a map operation and never across an await; a poisoned lock (a panic
// elsewhere while holding it) still guards consistent data, so it is used as is.
impl Inner {
    fn tenants(&self) -> RwLockReadGuard<'_, HashMap<Uuid, Sender>> {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn tenants_mut(&self) -> RwLockWriteGuard<'_, HashMap<Uuid, Sender>> {
        self.tenants.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<Holder, usize>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bus (cheap to clone; clones share the channels).
#[derive(Debug, Clone)]
pub struct EventBus(Arc<Inner>);

impl Default for EventBus {
    fn default() -> Self {
        Self::new(CAPACITY, MAX_SUBSCRIBERS_PER_TOKEN)
    }
}

impl EventBus {
    /// A bus whose channels hold `capacity` events per reader (clamped to 1 ..= 2^20, rounded
    /// up to a power of two) and whose tokens may each hold `per_token` subscriptions (0: none).
    pub fn new(capacity: usize, per_token: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        Self(Arc::new(Inner {
            capacity,
            per_token,
            all: broadcast::channel(capacity).0,
            tenants: RwLock::default(),
            holders: Mutex::default(),
            readers: AtomicUsize::new(0),
        }))
    }

    /// Whether anyone listens (build events only then).
    pub fn listened(&self) -> bool {
        self.0.readers.load(Ordering::SeqCst) > 0
    }

    /// Publishes to the admin readers and to the readers of the event's tenant. Never waits:
    /// a full channel drops its oldest event for the readers that are behind.
    pub fn publish(&self, event: LiveEvent) {
        if !self.listened() {
            return;
        }
        let event = Arc::new(event);
        if self.0.all.receiver_count() > 0 {
            let _ = self.0.all.send(event.clone());
        }
        let tenants = self.0.tenants();
        if let Some(sender) = tenants.get(&event.tenant_id()) {
            let _ = sender.send(event);
        }
    }

    /// A reader of `scope`'s events from now on, counted against `holder`'s token; refused
    /// when that token already holds its limit.
    pub fn subscribe(
        &self,
        holder: Holder,
        scope: Scope,
    ) -> Result<Subscription, TooManySubscribers> {
        {
            let mut holders = self.0.holders();
            let held = holders.entry(holder).or_default();
            if *held >= self.0.per_token {
                let limit = self.0.per_token;
                if *held == 0 {
                    holders.remove(&holder);
                }
                return Err(TooManySubscribers { limit });
            }
            *held += 1;
        }
        let receiver = match scope {
            Scope::All => self.0.all.subscribe(),
            Scope::Tenant(tenant_id) => {
                let mut tenants = self.0.tenants_mut();
                tenants
                    .entry(tenant_id)
                    .or_insert_with(|| broadcast::channel(self.0.capacity).0)
                    .subscribe()
            }
        };
        self.0.readers.fetch_add(1, Ordering::SeqCst);
        Ok(Subscription {
            receiver,
            _slot: Slot {
                bus: self.0.clone(),
                holder,
                scope,
            },
        })
    }

    /// Subscriptions `holder`'s token holds now.
    pub fn held_by(&self, holder: Holder) -> usize {
        let holders = self.0.holders();
        holders.get(&holder).copied().unwrap_or(0)
    }

    /// Tenants with a channel now (those with at least one reader).
    pub fn tenant_channels(&self) -> usize {
        let tenants = self.0.tenants();
        tenants.len()
    }
}

/// One reader's feed. Dropping it frees its token's slot and, for the last reader of a tenant,
/// that tenant's channel.
#[derive(Debug)]
pub struct Subscription {
    // Declared before `_slot`: the receiver is dropped first, so the slot sees the channel's
    // receiver count without it.
    receiver: broadcast::Receiver<Arc<LiveEvent>>,
    _slot: Slot,
}

impl Subscription {
    /// The next event, `Lagged(n)` after losing `n` events to a full channel, or `Closed`.
    pub async fn recv(&mut self) -> Result<Arc<LiveEvent>, broadcast::error::RecvError> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Arc<LiveEvent>, broadcast::error::TryRecvError> {
        self.receiver.try_recv()
    }
}

#[derive(Debug)]
struct Slot {
    bus: Arc<Inner>,
    holder: Holder,
    scope: Scope,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.bus.readers.fetch_sub(1, Ordering::SeqCst);
        if let Scope::Tenant(tenant_id) = self.scope {
            let mut tenants = self.bus.tenants_mut();
            if tenants
                .get(&tenant_id)
                .is_some_and(|sender| sender.receiver_count() == 0)
            {
                tenants.remove(&tenant_id);
            }
        }
        let mut holders = self.bus.holders();
        if let Some(held) = holders.get_mut(&self.holder) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                holders.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(tenant_id: Uuid, call_id: Uuid, turns: u64) -> LiveEvent {
        LiveEvent::CallEnded {
            call_id,
            tenant_id,
            external_id: Some("x".into()),
            reason: "hangup".into(),
            turns,
        }
    }

    #[test]
    fn readers_get_events_from_their_subscription_on() {
        let bus = EventBus::default();
        let call_id = Uuid::new_v4();
        bus.publish(ended(Uuid::nil(), call_id, 0));
        assert!(!bus.listened());
        let mut rx = bus
            .subscribe(Holder::Admin, Scope::All)
            .expect("a subscription");
        assert!(bus.listened());
        bus.publish(ended(Uuid::nil(), call_id, 2));
        let got = rx.try_recv().expect("one event");
        assert_eq!(*got, ended(Uuid::nil(), call_id, 2));
        assert_eq!(got.name(), "call.ended");
        assert_eq!(got.call_id(), call_id);
        let json = serde_json::to_value(&*got).unwrap_or_default();
        assert_eq!(json["type"], "call.ended");
        assert_eq!(json["turns"], 2);
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(!bus.listened());
    }

    #[test]
    fn a_burst_from_one_tenant_takes_no_room_in_anothers_channel() {
        let bus = EventBus::new(4, 8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut b_reader = bus
            .subscribe(Holder::Tenant(b), Scope::Tenant(b))
            .expect("b subscribes");
        let mut a_reader = bus
            .subscribe(Holder::Tenant(a), Scope::Tenant(a))
            .expect("a subscribes");
        let mut admin = bus
            .subscribe(Holder::Admin, Scope::All)
            .expect("admin subscribes");
        let b_call = Uuid::new_v4();
        bus.publish(ended(b, b_call, 1));
        for turns in 0..100 {
            bus.publish(ended(a, Uuid::new_v4(), turns));
        }
        // B's reader has exactly B's event; A's and the admin's readers lagged.
        assert_eq!(
            b_reader.try_recv().expect("b's own event").call_id(),
            b_call
        );
        assert!(b_reader.try_recv().is_err());
        assert!(matches!(
            a_reader.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(96))
        ));
        assert!(matches!(
            admin.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(97))
        ));
        assert_eq!(bus.tenant_channels(), 2);
        drop(a_reader);
        assert_eq!(
            bus.tenant_channels(),
            1,
            "a's channel goes with its last reader"
        );
        drop(b_reader);
        assert_eq!(bus.tenant_channels(), 0);
        drop(admin);
        assert!(!bus.listened());
    }

    #[test]
    fn each_token_holds_at_most_its_limit_of_subscriptions() {
        let bus = EventBus::new(16, 2);
        let t = Uuid::new_v4();
        let first = bus.subscribe(Holder::Tenant(t), Scope::Tenant(t));
        let second = bus.subscribe(Holder::Tenant(t), Scope::Tenant(t));
        assert!(first.is_ok() && second.is_ok());
        let third = bus.subscribe(Holder::Tenant(t), Scope::Tenant(t));
        assert_eq!(third.err(), Some(TooManySubscribers { limit: 2 }));
        // Other tokens are not affected; a freed slot is taken again.
        assert!(bus.subscribe(Holder::Admin, Scope::Tenant(t)).is_ok());
        assert_eq!(bus.held_by(Holder::Admin), 0, "dropped at once");
        drop(first);
        assert_eq!(bus.held_by(Holder::Tenant(t)), 1);
        assert!(bus.subscribe(Holder::Tenant(t), Scope::Tenant(t)).is_ok());
        drop(second);
        assert_eq!(bus.held_by(Holder::Tenant(t)), 0);
        assert_eq!(bus.tenant_channels(), 0);
    }
}
