//! When each frame of audio reached the mock Deepgram, per call: the provider's side of the
//! forwarding-lag measurement ([`super::forwarding`] holds the client's side).
//!
//! The engine tags every Deepgram stream with its call id (`tag=<call uuid>` in the URL). The
//! first stream opened with a tag is the call's session 0: its byte `k·F` (F = one 20 ms frame
//! at the stream's rate, 640 bytes at 16 kHz) is the audio of the client's frame `k`, so frame
//! `k` has arrived once the stream has received `(k+1)·F` bytes, and that moment is recorded.
//! Later streams with the same tag are reconnects replaying audio already sent once: their
//! bytes are counted apart and take no part in the lag. Streams without a tag are counted.
//!
//! Times are [`Instant`]s of this process, the clock the load generator stamps its sends
//! with. Each stream records into its call's entry under a lock of its own (the shared map is
//! locked only when a stream opens), so recording costs next to nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::FRAME_MS;

/// What arrived for one tag (one call).
#[derive(Debug, Clone)]
pub struct TagArrivals {
    /// When the first stream opened: frame arrivals are counted from here.
    pub opened: Instant,
    /// The first stream's sample rate.
    pub sample_rate: u32,
    /// Arrival of each complete frame of the first stream, µs after `opened` (saturating).
    pub frame_us: Vec<u32>,
    /// Audio bytes the first stream received.
    pub first_bytes: u64,
    /// Streams opened later with the same tag (reconnects), and the bytes they received.
    pub later_streams: u32,
    pub later_bytes: u64,
}

impl TagArrivals {
    fn new(opened: Instant, sample_rate: u32) -> Self {
        Self {
            opened,
            sample_rate,
            frame_us: Vec::new(),
            first_bytes: 0,
            later_streams: 0,
            later_bytes: 0,
        }
    }

    /// Bytes in one 20 ms frame of s16le mono at the first stream's rate.
    pub fn frame_bytes(&self) -> u64 {
        frame_bytes(self.sample_rate)
    }

    /// Seconds of audio the first stream received.
    pub fn first_secs(&self) -> f64 {
        self.first_bytes as f64 / (2.0 * f64::from(self.sample_rate.max(1)))
    }

    /// When frame `k` of the first stream arrived (None: it did not).
    pub fn arrival(&self, k: usize) -> Option<Instant> {
        let us = self.frame_us.get(k)?;
        Some(self.opened + std::time::Duration::from_micros(u64::from(*us)))
    }
}

fn frame_bytes(sample_rate: u32) -> u64 {
    (u64::from(sample_rate) * 2 * FRAME_MS / 1000).max(1)
}

type Entry = Arc<Mutex<TagArrivals>>;

/// Every tag's arrivals, shared by the mock's streams and read by the load generator.
#[derive(Default)]
pub struct ArrivalLog {
    tags: Mutex<HashMap<String, Entry>>,
    untagged: AtomicU64,
}

impl ArrivalLog {
    /// A stream opened at `now` with `tag` (the engine's call id): where its audio is
    /// recorded. None for an untagged stream (counted in [`Self::untagged_streams`]).
    pub fn open(&self, tag: Option<&str>, sample_rate: u32, now: Instant) -> Option<Recorder> {
        let Some(tag) = tag else {
            self.untagged.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        let (entry, first) = match tags.get(tag) {
            Some(entry) => (entry.clone(), false),
            None => {
                let entry = Arc::new(Mutex::new(TagArrivals::new(now, sample_rate)));
                tags.insert(tag.to_string(), entry.clone());
                (entry, true)
            }
        };
        drop(tags);
        if !first {
            lock(&entry).later_streams += 1;
        }
        Some(Recorder { entry, first })
    }

    /// A copy of what arrived for `tag` so far.
    pub fn get(&self, tag: &str) -> Option<TagArrivals> {
        let entry = self
            .tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tag)
            .cloned()?;
        let copy = lock(&entry).clone();
        Some(copy)
    }

    /// Every tag seen.
    pub fn tags(&self) -> Vec<String> {
        let tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.keys().cloned().collect()
    }

    /// Streams that came without a tag (their audio is not timed).
    pub fn untagged_streams(&self) -> u64 {
        self.untagged.load(Ordering::Relaxed)
    }
}

fn lock(entry: &Entry) -> std::sync::MutexGuard<'_, TagArrivals> {
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stream's handle on its tag's entry.
pub struct Recorder {
    entry: Entry,
    /// Session 0 of the call (else a reconnect).
    first: bool,
}

impl Recorder {
    /// `bytes` of audio arrived at `at`.
    pub fn record(&self, bytes: usize, at: Instant) {
        let mut arrivals = lock(&self.entry);
        if !self.first {
            arrivals.later_bytes += bytes as u64;
            return;
        }
        arrivals.first_bytes += bytes as u64;
        let frame = arrivals.frame_bytes();
        let complete = arrivals.first_bytes / frame;
        let us = at.saturating_duration_since(arrivals.opened).as_micros();
        let us = us.min(u128::from(u32::MAX)) as u32;
        while (arrivals.frame_us.len() as u64) < complete {
            arrivals.frame_us.push(us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_frame_arrives_when_its_last_byte_does_and_reconnects_are_apart() {
        let log = ArrivalLog::default();
        let t0 = Instant::now();
        let first = log.open(Some("call"), 16_000, t0).unwrap();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Half a frame, then the rest with half of the next, then three frames at once.
        first.record(320, ms(1));
        first.record(640, ms(2));
        first.record(320 + 3 * 640, ms(5));
        let again = log.open(Some("call"), 16_000, ms(6)).unwrap();
        again.record(640, ms(7));
        assert!(log.open(None, 16_000, ms(8)).is_none());
        let got = log.get("call").unwrap();
        assert_eq!(got.frame_us, vec![2_000, 5_000, 5_000, 5_000, 5_000]);
        assert_eq!(got.arrival(1), Some(ms(5)));
        assert_eq!(got.arrival(5), None);
        assert_eq!(
            (got.first_bytes, got.later_streams, got.later_bytes),
            (3_200, 1, 640)
        );
        assert!((got.first_secs() - 0.1).abs() < 1e-9);
        assert_eq!(log.untagged_streams(), 1);
        assert_eq!(log.tags(), vec!["call".to_string()]);
        // At 8 kHz a frame is 320 bytes.
        let narrow = log.open(Some("narrow"), 8_000, t0).unwrap();
        narrow.record(640, ms(1));
        assert_eq!(log.get("narrow").unwrap().frame_us.len(), 2);
    }
}
