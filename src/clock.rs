//! The actors' clock. It is tokio's, so paused time in tests (`tokio::time::pause`) drives
//! timers and the deadlines computed from `now()` alike.

use std::time::Instant;

/// The current instant on tokio's clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
