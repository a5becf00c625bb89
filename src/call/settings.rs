//! `[calls]`: call bookkeeping settings.

use serde::{Deserialize, Serialize};

/// Call bookkeeping settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSettings {
    /// Cost per second of call time, in micro-units, for tenants without their own rate.
    pub default_cost_per_second_micros: i64,
    /// Attempts a post-call job gets before it is marked dead.
    pub postcall_max_attempts: i32,
    /// On start-up, active calls of *any* node idle for longer than this are swept to
    /// `interrupted` (0 disables; calls of this node are always swept).
    pub stale_call_after_secs: u64,
    /// A call that receives no audio for this long is ended (`idle_timeout`).
    pub idle_timeout_secs: u64,
    /// A partial with no final after this long is promoted to a turn.
    pub partial_promote_ms: u64,
    /// How long a call waits for its final flush before closing the socket anyway (the
    /// persister keeps retrying in the background).
    pub finish_timeout_secs: u64,
    /// How long a starting call may wait for its row to be created.
    pub start_timeout_secs: u64,
    /// Turns a call may hold unsent while the database is unreachable.
    pub max_unsent_turns: usize,
    /// SIGTERM/SIGINT: how long to wait for every call to flush before exiting anyway.
    pub drain_timeout_secs: u64,
    /// A call registered with `POST /api/v1/calls` that sees no media or turn for this long
    /// becomes `expired` (no post-call job, no webhook). 0 disables.
    pub registered_expiry_secs: u64,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            default_cost_per_second_micros: 1_000,
            postcall_max_attempts: 8,
            stale_call_after_secs: 6 * 3600,
            idle_timeout_secs: 30,
            partial_promote_ms: 2_500,
            finish_timeout_secs: 15,
            start_timeout_secs: 10,
            max_unsent_turns: 10_000,
            drain_timeout_secs: 25,
            registered_expiry_secs: 24 * 3600,
        }
    }
}
