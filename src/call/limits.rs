//! Concurrency limits: live calls on this node, in total and per tenant. A call holds a
//! [`CallPermit`] for its whole life; dropping it (when the call actor goes away) frees the
//! slot. Refused calls never start an actor (the transport answers 1013 "try again later").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_tenant: HashMap<Uuid, usize>,
}

/// The node's call counter.
#[derive(Debug)]
pub struct CallLimiter {
    max_total: usize,
    max_per_tenant: usize,
    counts: Mutex<Counts>,
}

/// One live call's slot.
#[derive(Debug)]
pub struct CallPermit {
    limiter: Arc<CallLimiter>,
    tenant: Uuid,
}

impl CallLimiter {
    /// Limits for the node (`0`: unlimited).
    pub fn new(max_total: usize, max_per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_tenant,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for `tenant`, whose own cap (if any) replaces the node's per-tenant one.
    pub fn try_acquire(
        self: &Arc<Self>,
        tenant: Uuid,
        tenant_cap: Option<usize>,
    ) -> Result<CallPermit, String> {
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| "call limiter poisoned".to_string())?;
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(format!(
                "this node is at its limit of {} live calls",
                self.max_total
            ));
        }
        let cap = tenant_cap.unwrap_or(self.max_per_tenant);
        let current = counts.by_tenant.get(&tenant).copied().unwrap_or(0);
        if cap > 0 && current >= cap {
            return Err(format!("the tenant is at its limit of {cap} live calls"));
        }
        counts.total += 1;
        counts.by_tenant.insert(tenant, current + 1);
        Ok(CallPermit {
            limiter: self.clone(),
            tenant,
        })
    }

    /// Live calls holding a permit.
    pub fn live(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.limiter.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if let Some(n) = counts.by_tenant.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    counts.by_tenant.remove(&self.tenant);
                }
            }
        }
    }
}

/// Sockets upgraded but not yet through their handshake: bounded, so a flood of idle
/// connections cannot hold the node's memory or file descriptors.
#[derive(Debug)]
pub struct HandshakeSlots {
    max: usize,
    used: std::sync::atomic::AtomicUsize,
}

/// A held handshake slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot(std::sync::Arc<HandshakeSlots>);

impl HandshakeSlots {
    /// At most `max` handshakes at once (0: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A slot, or `None` when all are taken.
    pub fn try_take(self: &std::sync::Arc<Self>) -> Option<HandshakeSlot> {
        use std::sync::atomic::Ordering;
        let taken = self.used.fetch_add(1, Ordering::AcqRel);
        if self.max > 0 && taken >= self.max {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HandshakeSlot(std::sync::Arc::clone(self)))
    }

    /// Handshakes in progress.
    pub fn in_use(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0
            .used
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_tenant_caps_with_release_on_drop() {
        let limiter = CallLimiter::new(3, 2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = limiter.try_acquire(a, None).unwrap();
        let _a2 = limiter.try_acquire(a, None).unwrap();
        assert!(limiter.try_acquire(a, None).unwrap_err().contains("tenant"));
        let _b1 = limiter.try_acquire(b, Some(5)).unwrap();
        assert!(limiter
            .try_acquire(b, Some(5))
            .unwrap_err()
            .contains("node"));
        drop(a1);
        assert_eq!(limiter.live(), 2);
        assert!(limiter.try_acquire(b, Some(5)).is_ok());
        let open = CallLimiter::new(0, 0);
        let permits: Vec<_> = (0..100)
            .map(|_| open.try_acquire(a, None).unwrap())
            .collect();
        assert_eq!(open.live(), permits.len());
    }
}
