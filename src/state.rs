//! [`AppState`]: what every HTTP worker and the AudioSocket listener share — the store, the
//! call dependencies, the registry, limits, metrics and the draining flag. It sits below the
//! handlers (`ingress`, `webhooks`, `ops`) and above what it holds, so a handler depends on the
//! state, never on the server builder in `app`. Module-specific settings travel as their own
//! `web::Data` (see `webhooks::Inbound`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;

use crate::call::limits::HandshakeSlots;
use crate::call::registry::CallRegistry;
use crate::call::CallDeps;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::Store;

/// State shared by all HTTP workers. Read-only apart from the draining flag.
pub struct AppState {
    /// The database.
    pub store: Store,
    /// This node's id.
    pub node_id: String,
    /// Deadline for the readiness probe's query.
    pub readiness_timeout_ms: u64,
    /// Everything a call needs (store, STT provider, registry, policies).
    pub calls: Arc<CallDeps>,
    /// The live-call registry.
    pub registry: Addr<CallRegistry>,
    /// Bearer token of the operator API.
    pub admin_token: Option<Secret>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Token `/metrics` requires, when set.
    pub metrics_token: Option<Secret>,
    /// Live-call limits (node and tenant).
    pub limiter: Arc<crate::call::limits::CallLimiter>,
    /// Carrier media settings.
    pub media: crate::media::MediaSettings,
    /// The node's public base URL (`webhooks.public_base_url`): what carriers sign.
    pub public_base_url: String,
    /// Every listener is on loopback: the local tenant may be used.
    pub loopback_only: bool,
    /// Media sockets in their handshake, bounded over the node.
    pub handshakes: Arc<HandshakeSlots>,
    /// The policy every outbound request follows.
    pub egress: crate::egress::EgressPolicy,
    pub(crate) draining: Arc<AtomicBool>,
}

impl AppState {
    /// True once shutdown has begun: the node takes no new work and reports not ready.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
