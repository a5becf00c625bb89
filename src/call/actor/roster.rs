//! What a call tells its supervisor, the [`CallRegistry`](crate::call::registry::CallRegistry):
//! the messages and the [`Roster`] of recipients a call holds instead of the registry's address,
//! so the call depends on nothing above it.

use actix::prelude::*;
use uuid::Uuid;

use super::CallActor;
use crate::call::persist::{PersisterDown, PersisterUp};
use crate::store::Protocol;

/// A call went live.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub call_id: Uuid,
    pub tenant_id: Uuid,
    pub protocol: Protocol,
    pub external_id: Option<String>,
    pub addr: Addr<CallActor>,
}

/// A call finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub call_id: Uuid,
}

/// Reserves a starting actor's call: its transport id and, when the stream links to an
/// existing call, that call's id. `false`: a live actor already carries that call (or another
/// stream is starting it) — the newcomer must not become its twin, nor a second writer of a
/// live call. An entry whose actor is gone (stopped without unregistering) is taken over.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Claim {
    pub external: Option<(Protocol, String)>,
    pub call_id: Option<Uuid>,
}

/// A claim whose call never started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseClaim {
    pub external: Option<(Protocol, String)>,
    pub call_id: Option<Uuid>,
}

/// The registry as a call and its persister see it.
#[derive(Clone)]
pub struct Roster {
    pub register: Recipient<Register>,
    pub unregister: Recipient<Unregister>,
    pub claim: Recipient<Claim>,
    pub release: Recipient<ReleaseClaim>,
    pub persister_up: Recipient<PersisterUp>,
    pub persister_down: Recipient<PersisterDown>,
}
