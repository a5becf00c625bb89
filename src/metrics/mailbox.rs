//! Depth of a call's busiest actor mailbox, counted by the call itself: actix does not expose
//! how many messages wait in a mailbox, so the sender counts each message it queues and the
//! receiver each one it takes. One count per call (its API figure, with the peak) and one sum
//! over the node (`callengine_mailbox_depth{mailbox}` in `/metrics`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// A mailbox's depth. Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Depth {
    here: Arc<AtomicI64>,
    peak: Arc<AtomicI64>,
    node: Gauge,
}

impl Depth {
    /// A count that also adds into `node`.
    pub fn new(node: Gauge) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// A message was queued.
    pub fn sent(&self) {
        let now = self.here.fetch_add(1, Ordering::Relaxed) + 1;
        self.node.inc();
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// A message was taken out (a no-op once [`Depth::release`] emptied the count).
    pub fn taken(&self) {
        let took = self
            .here
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 0).then_some(n - 1)
            })
            .is_ok();
        if took {
            self.node.dec();
        }
    }

    /// Messages waiting now.
    pub fn get(&self) -> i64 {
        self.here.load(Ordering::Relaxed)
    }

    /// The most that ever waited at once.
    pub fn peak(&self) -> i64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The mailbox is gone (its actor stopped with messages unread): they leave the node sum.
    pub fn release(&self) {
        let left = self.here.swap(0, Ordering::Relaxed);
        self.node.dec_by(left);
    }
}

/// Bytes a call's STT actors hold in their replay buffers (audio kept since the last final to
/// be sent again after a reconnect): per call (`replay_bytes` in `GET /api/v1/calls`) and summed
/// over the node (`callengine_replay_buffer_bytes`). Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Bytes {
    here: Arc<AtomicI64>,
    node: Gauge,
}

impl Bytes {
    /// A count that also adds into `node`.
    pub fn new(node: Gauge) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// `n` bytes more (negative: fewer).
    pub fn add(&self, n: i64) {
        self.here.fetch_add(n, Ordering::Relaxed);
        self.node.inc_by(n);
    }

    /// Bytes held now.
    pub fn get(&self) -> i64 {
        self.here.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_depth_peak_and_the_node_sum() {
        let node = Gauge::default();
        let a = Depth::new(node.clone());
        let b = Depth::new(node.clone());
        for _ in 0..3 {
            a.sent();
        }
        b.sent();
        a.taken();
        assert_eq!((a.get(), a.peak(), b.get(), node.get()), (2, 3, 1, 3));
        // An actor that stops with two messages unread: they leave the node sum, and a late
        // `taken` cannot drive anything below zero.
        a.release();
        a.taken();
        assert_eq!((a.get(), a.peak(), node.get()), (0, 3, 1));
        b.taken();
        assert_eq!(node.get(), 0);
    }
}
