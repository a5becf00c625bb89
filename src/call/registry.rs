//! The `CallRegistry`: one per process. Knows every live call by id and by external id, counts
//! live persisters, and drains everything on shutdown. It watches calls, it never restarts them:
//! a call whose socket is gone cannot be resumed, only finished.

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::actor::roster::{Claim, Register, ReleaseClaim, Roster, Unregister};
use super::actor::{CallActor, Finish};
use super::end::EndReason;
use super::persist::{PersisterDown, PersisterUp};
use crate::store::Protocol;

/// The live call with this id.
#[derive(Message)]
#[rtype(result = "Option<Addr<CallActor>>")]
pub struct Lookup(pub Uuid);

/// The live call with this external id on this protocol.
#[derive(Message)]
#[rtype(result = "Option<Uuid>")]
pub struct LookupExternal(pub Protocol, pub String);

/// Every live call.
#[derive(Message)]
#[rtype(result = "Vec<(Uuid, Addr<CallActor>)>")]
pub struct ListCalls;

/// Shutdown: finish every call (close 1001) and answer once every call and persister is done.
#[derive(Message)]
#[rtype(result = "DrainReport")]
pub struct Drain;

/// What a drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Calls told to finish.
    pub calls: usize,
}

struct LiveCall {
    addr: Addr<CallActor>,
    key: Option<(Protocol, String)>,
}

/// Live calls of this process.
#[derive(Default)]
pub struct CallRegistry {
    calls: HashMap<Uuid, LiveCall>,
    by_external: HashMap<(Protocol, String), Uuid>,
    claimed: std::collections::HashSet<(Protocol, String)>,
    claimed_calls: std::collections::HashSet<Uuid>,
    persisters: usize,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl CallRegistry {
    fn check_drained(&mut self) {
        if self.draining && self.calls.is_empty() && self.persisters == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for CallRegistry {
    type Context = Context<Self>;
}

impl CallRegistry {
    /// How calls and their persisters reach this registry.
    pub fn roster(addr: &Addr<Self>) -> Roster {
        Roster {
            register: addr.clone().recipient(),
            unregister: addr.clone().recipient(),
            claim: addr.clone().recipient(),
            release: addr.clone().recipient(),
            persister_up: addr.clone().recipient(),
            persister_down: addr.clone().recipient(),
        }
    }
}

impl Handler<Register> for CallRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) {
        if self.draining {
            msg.addr.do_send(Finish(EndReason::Shutdown));
        }
        self.claimed_calls.remove(&msg.call_id);
        let key = msg.external_id.map(|id| (msg.protocol, id));
        if let Some(key) = &key {
            self.claimed.remove(key);
            self.by_external.insert(key.clone(), msg.call_id);
        }
        tracing::debug!(call_id = %msg.call_id, tenant_id = %msg.tenant_id, "call registered");
        self.calls.insert(
            msg.call_id,
            LiveCall {
                addr: msg.addr,
                key,
            },
        );
    }
}

impl Handler<Unregister> for CallRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _ctx: &mut Self::Context) {
        if let Some(call) = self.calls.remove(&msg.call_id) {
            if let Some(key) = call.key {
                if self.by_external.get(&key) == Some(&msg.call_id) {
                    self.by_external.remove(&key);
                }
            }
        }
        self.check_drained();
    }
}

impl Handler<Claim> for CallRegistry {
    type Result = bool;

    fn handle(&mut self, msg: Claim, _ctx: &mut Self::Context) -> bool {
        if let Some(call_id) = msg.call_id {
            let live = self.calls.get(&call_id).is_some_and(|c| c.addr.connected());
            if live || self.claimed_calls.contains(&call_id) {
                return false;
            }
        }
        if let Some(key) = &msg.external {
            if self.claimed.contains(key) {
                return false;
            }
            if let Some(call_id) = self.by_external.get(key) {
                if self.calls.get(call_id).is_some_and(|c| c.addr.connected()) {
                    return false;
                }
            }
        }
        if let Some(call_id) = msg.call_id {
            self.claimed_calls.insert(call_id);
        }
        if let Some(key) = msg.external {
            self.claimed.insert(key);
        }
        true
    }
}

impl Handler<ReleaseClaim> for CallRegistry {
    type Result = ();

    fn handle(&mut self, msg: ReleaseClaim, _ctx: &mut Self::Context) {
        if let Some(key) = msg.external {
            self.claimed.remove(&key);
        }
        if let Some(call_id) = msg.call_id {
            self.claimed_calls.remove(&call_id);
        }
    }
}

impl Handler<Lookup> for CallRegistry {
    type Result = Option<Addr<CallActor>>;

    fn handle(&mut self, msg: Lookup, _ctx: &mut Self::Context) -> Self::Result {
        self.calls.get(&msg.0).map(|call| call.addr.clone())
    }
}

impl Handler<LookupExternal> for CallRegistry {
    type Result = Option<Uuid>;

    fn handle(&mut self, msg: LookupExternal, _ctx: &mut Self::Context) -> Self::Result {
        self.by_external.get(&(msg.0, msg.1)).copied()
    }
}

impl Handler<ListCalls> for CallRegistry {
    type Result = MessageResult<ListCalls>;

    fn handle(&mut self, _msg: ListCalls, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.calls
                .iter()
                .map(|(id, call)| (*id, call.addr.clone()))
                .collect(),
        )
    }
}

impl Handler<PersisterUp> for CallRegistry {
    type Result = ();

    fn handle(&mut self, _msg: PersisterUp, _ctx: &mut Self::Context) {
        self.persisters += 1;
    }
}

impl Handler<PersisterDown> for CallRegistry {
    type Result = ();

    fn handle(&mut self, msg: PersisterDown, _ctx: &mut Self::Context) {
        self.persisters = self.persisters.saturating_sub(1);
        if msg.dropped_turns > 0 {
            tracing::error!(
                dropped_turns = msg.dropped_turns,
                "a persister stopped with dropped turns"
            );
        }
        self.check_drained();
    }
}

impl Handler<Drain> for CallRegistry {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let calls = self.calls.len();
        for call in self.calls.values() {
            call.addr.do_send(Finish(EndReason::Shutdown));
        }
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.check_drained();
        Box::pin(async move {
            let _ = rx.await;
            DrainReport { calls }
        })
    }
}
