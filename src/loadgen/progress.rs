//! The run's live progress: counters the calls update, and the line on stderr that shows them
//! once a second.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared progress counters.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) started: AtomicUsize,
    pub(super) live: AtomicUsize,
    pub(super) done: AtomicUsize,
    pub(super) failed: AtomicUsize,
    pub(super) frames: AtomicU64,
    pub(super) finals: AtomicU64,
}

pub(super) async fn report_progress(progress: Arc<Progress>, total: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p = &progress;
        let done = p.done.load(Ordering::Relaxed);
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
        eprint!(
            "\r[{}{}] {done}/{} done, {} live, {} failed, {} frames, {} finals   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            if total == 0 {
                "∞".to_string()
            } else {
                total.to_string()
            },
            p.live.load(Ordering::Relaxed),
            p.failed.load(Ordering::Relaxed),
            p.frames.load(Ordering::Relaxed),
            p.finals.load(Ordering::Relaxed),
        );
    }
}
