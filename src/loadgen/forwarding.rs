//! Forwarding lag (issue 15): how late each 20 ms frame reaches the speech-to-text provider,
//! measured frame by frame on one clock. With `--mock-deepgram` the engine's Deepgram client
//! talks to the load generator's own mock, in this process: the client side stamps each
//! frame's send (`audio_start + 20k ms + send lag`, the send-lag bookkeeping), the mock stamps
//! the moment the byte that completes frame `k` arrives on the call's first stream
//! ([`super::arrivals`]), and the difference is frame `k`'s forwarding lag.
//!
//! Calls are matched to streams by the engine's call id, which the engine puts in each stream's
//! `tag`: the generic socket's `call` event gives it, and carriers' `call.started` on the event
//! feed (so carrier calls are matched only with `--api-token`; without it they count as
//! unmatched). Reconnect streams (a later stream with the same tag) replay audio already sent
//! once: they are counted but not timed, so a run with `--mock-drop-rate` times only the audio
//! before each cut and its completeness falls short of 1 by design.

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use super::arrivals::{ArrivalLog, TagArrivals};
use super::{CallResult, Percentiles, FRAME_MS};

/// The run's forwarding figures (the report's `forwarding` object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Forwarding {
    /// Calls whose engine call id is known, so their streams can be found by tag.
    pub calls_matched: usize,
    /// Calls without a known call id (carriers without `--api-token`; calls that never started).
    pub calls_unmatched: usize,
    /// Matched calls of which no stream reached the mock (they count as nothing delivered).
    pub calls_without_stream: usize,
    /// Frames timed: sent by the client and arrived on their call's first stream.
    pub frames: u64,
    /// Forwarding lag of every timed frame: client send → arrival at the mock, ms.
    pub lag_ms: Percentiles,
    /// Each matched call's p99 forwarding lag, across calls.
    pub per_call_p99_ms: Percentiles,
    /// The call (external id) with the highest p99.
    pub worst_p99_call: Option<String>,
    /// Arrival jitter: for every timed frame `k ≥ 1` of a first stream, `|(arrival(k) −
    /// arrival(k−1)) − 20 ms|`, ms — how far the provider's view departs from a steady 20 ms
    /// cadence (a frame held back and then sent with the next one shows as ~20 ms twice).
    pub jitter_ms: Percentiles,
    /// Frames that arrived before they were sent: the stream's bytes do not line up with the
    /// client's frames (audio added or lost); should be 0.
    pub frames_before_send: u64,
    /// Audio the matched calls sent, and the part their first streams received.
    pub audio_secs_sent: f64,
    pub audio_secs_received: f64,
    /// Completeness: `audio_secs_received ÷ audio_secs_sent` over the matched calls.
    pub completeness: f64,
    /// The lowest completeness of a matched call that sent audio, and that call.
    pub completeness_worst: f64,
    pub worst_completeness_call: Option<String>,
    /// Reconnect streams (not timed) and the audio they carried (replays included).
    pub reconnect_streams: u64,
    pub audio_secs_replayed: f64,
    /// Streams without a tag, and tags that match no call of this run (neither is timed).
    pub untagged_streams: u64,
    pub unknown_tags: usize,
}

/// One call's figures (in its result).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallForwarding {
    pub frames: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Audio its first stream received ÷ audio it sent.
    pub completeness: f64,
    pub reconnect_streams: u32,
}

/// One call's raw samples.
#[derive(Default)]
struct CallSamples {
    lags_ms: Vec<f64>,
    jitter_ms: Vec<f64>,
    before_send: u64,
}

/// `a − b` in ms, negative when `a` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(b.duration_since(a).as_secs_f64() * 1000.0),
    }
}

/// Lag and jitter of each frame `result` sent that arrived on its first stream.
fn samples(result: &CallResult, arrivals: &TagArrivals) -> CallSamples {
    let mut out = CallSamples::default();
    let Some(start) = result.audio_start else {
        return out;
    };
    let timed = (result.frames_sent as usize).min(arrivals.frame_us.len());
    out.lags_ms.reserve(timed);
    let mut previous: Option<Instant> = None;
    for k in 0..timed {
        let Some(at) = arrivals.arrival(k) else { break };
        let end_ms = (k as u64 + 1) * FRAME_MS;
        let sent = super::frame_sent_at(start, &result.send_lag_us, end_ms as i64);
        let lag = signed_ms(at, sent);
        out.before_send += u64::from(lag < 0.0);
        out.lags_ms.push(lag);
        if let Some(previous) = previous {
            out.jitter_ms
                .push((signed_ms(at, previous) - FRAME_MS as f64).abs());
        }
        previous = Some(at);
    }
    out
}

/// Running totals over the calls.
#[derive(Default)]
struct Totals {
    report: Forwarding,
    lags: Vec<f64>,
    jitter: Vec<f64>,
    per_call_p99: Vec<(f64, String)>,
    worst: Option<(f64, String)>,
}

impl Totals {
    /// Adds one matched call (`arrivals`: its tag's record, if any stream came).
    fn add(&mut self, result: &mut CallResult, arrivals: Option<&TagArrivals>) {
        let r = &mut self.report;
        r.calls_matched += 1;
        let sent_secs = result.frames_sent as f64 * FRAME_MS as f64 / 1000.0;
        r.audio_secs_sent += sent_secs;
        let Some(arrivals) = arrivals else {
            r.calls_without_stream += 1;
            self.note_completeness(0.0, sent_secs, &result.external_id);
            return;
        };
        let samples = samples(result, arrivals);
        let received = arrivals.first_secs();
        r.audio_secs_received += received;
        r.frames += samples.lags_ms.len() as u64;
        r.frames_before_send += samples.before_send;
        r.reconnect_streams += u64::from(arrivals.later_streams);
        r.audio_secs_replayed +=
            arrivals.later_bytes as f64 / (2.0 * f64::from(arrivals.sample_rate.max(1)));
        let own = Percentiles::of(samples.lags_ms.clone());
        if own.count > 0 {
            self.per_call_p99
                .push((own.p99, result.external_id.clone()));
        }
        let completeness = self.note_completeness(received, sent_secs, &result.external_id);
        result.forwarding = Some(CallForwarding {
            frames: own.count as u64,
            lag_p50_ms: own.p50,
            lag_p99_ms: own.p99,
            lag_max_ms: own.max,
            completeness,
            reconnect_streams: arrivals.later_streams,
        });
        self.lags.extend(samples.lags_ms);
        self.jitter.extend(samples.jitter_ms);
    }

    /// One call's completeness (1 when it sent nothing), kept if it is the worst so far.
    fn note_completeness(&mut self, received: f64, sent: f64, call: &str) -> f64 {
        if sent <= 0.0 {
            return 1.0;
        }
        let completeness = received / sent;
        if self.worst.as_ref().is_none_or(|(w, _)| completeness < *w) {
            self.worst = Some((completeness, call.to_string()));
        }
        completeness
    }

    fn finish(self) -> Forwarding {
        let mut report = self.report;
        report.lag_ms = Percentiles::of(self.lags);
        report.jitter_ms = Percentiles::of(self.jitter);
        report.per_call_p99_ms =
            Percentiles::of(self.per_call_p99.iter().map(|(p, _)| *p).collect());
        report.worst_p99_call = self
            .per_call_p99
            .into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, call)| call);
        report.completeness = if report.audio_secs_sent > 0.0 {
            report.audio_secs_received / report.audio_secs_sent
        } else {
            1.0
        };
        (report.completeness_worst, report.worst_completeness_call) = match self.worst {
            Some((c, call)) => (c, Some(call)),
            None => (1.0, None),
        };
        report
    }
}

/// Measures every call of the run against what the mock received, and fills each matched
/// call's `forwarding`.
pub fn measure(results: &mut [CallResult], log: &ArrivalLog) -> Forwarding {
    let mut totals = Totals::default();
    let mut known = HashSet::new();
    for result in results.iter_mut() {
        let Some(call_id) = result.call_id else {
            totals.report.calls_unmatched += 1;
            continue;
        };
        let tag = call_id.to_string();
        let arrivals = log.get(&tag);
        known.insert(tag);
        totals.add(result, arrivals.as_ref());
    }
    let mut report = totals.finish();
    report.untagged_streams = log.untagged_streams();
    report.unknown_tags = log
        .tags()
        .iter()
        .filter(|tag| !known.contains(*tag))
        .count();
    report
}

impl Forwarding {
    /// Lines for the human summary.
    pub fn summary_lines(&self) -> String {
        let mut out = format!("  forwarding lag {}\n", self.lag_ms);
        out += &format!(
            "    client send → mock Deepgram; per-call p99: p50 {:.1} / p90 {:.1} / max {:.1} ms; arrival jitter p99 {:.1} ms; audio delivered {:.2}% (worst call {:.2}%); {}/{} calls matched",
            self.per_call_p99_ms.p50,
            self.per_call_p99_ms.p90,
            self.per_call_p99_ms.max,
            self.jitter_ms.p99,
            self.completeness * 100.0,
            self.completeness_worst * 100.0,
            self.calls_matched,
            self.calls_matched + self.calls_unmatched,
        );
        if self.reconnect_streams > 0 {
            out += &format!(", {} reconnect streams untimed", self.reconnect_streams);
        }
        out += "\n";
        if self.frames_before_send > 0 {
            out += &format!(
                "    MISALIGNED: {} frames arrived before they were sent (audio added or lost on the way)\n",
                self.frames_before_send
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_frame_is_timed_from_its_send_to_its_arrival() {
        let log = ArrivalLog::default();
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let call_id = uuid::Uuid::new_v4();
        let tag = call_id.to_string();
        // Four frames sent on time (frame 2 1 ms late); three arrive, 2 ms, 2 ms and 21 ms
        // after their sends; a reconnect replays one frame.
        let first = log.open(Some(&tag), 16_000, start).unwrap();
        first.record(640, ms(2));
        first.record(640, ms(22));
        first.record(640, ms(62));
        log.open(Some(&tag), 16_000, ms(70))
            .unwrap()
            .record(640, ms(71));
        log.open(Some("stranger"), 16_000, start);
        let mut results = vec![
            CallResult {
                external_id: "a".into(),
                call_id: Some(call_id),
                audio_start: Some(start),
                frames_sent: 4,
                send_lag_us: vec![0, 0, 1_000, 0],
                ..CallResult::default()
            },
            CallResult::default(),
        ];
        let f = measure(&mut results, &log);
        assert_eq!((f.calls_matched, f.calls_unmatched, f.frames), (1, 1, 3));
        assert_eq!((f.lag_ms.p50, f.lag_ms.max), (2.0, 21.0));
        // Inter-arrivals 20 ms and 40 ms.
        assert_eq!((f.jitter_ms.count, f.jitter_ms.max), (2, 20.0));
        assert!((f.completeness - 0.75).abs() < 1e-9, "{}", f.completeness);
        assert!((f.completeness_worst - 0.75).abs() < 1e-9);
        assert_eq!(f.worst_completeness_call.as_deref(), Some("a"));
        assert_eq!((f.reconnect_streams, f.unknown_tags), (1, 1));
        assert_eq!(f.frames_before_send, 0);
        let own = results[0].forwarding.clone().unwrap();
        assert_eq!(
            (own.frames, own.lag_max_ms, own.reconnect_streams),
            (3, 21.0, 1)
        );
        assert!(
            f.summary_lines().contains("1/2 calls matched"),
            "{}",
            f.summary_lines()
        );
    }

    #[test]
    fn a_call_whose_stream_never_came_delivered_nothing() {
        let mut results = vec![CallResult {
            external_id: "b".into(),
            call_id: Some(uuid::Uuid::new_v4()),
            audio_start: Some(Instant::now()),
            frames_sent: 50,
            ..CallResult::default()
        }];
        let f = measure(&mut results, &ArrivalLog::default());
        assert_eq!((f.calls_without_stream, f.frames), (1, 0));
        assert_eq!((f.completeness, f.completeness_worst), (0.0, 0.0));
        assert!((f.audio_secs_sent - 1.0).abs() < 1e-9);
        let now = Instant::now();
        assert_eq!(signed_ms(now, now + Duration::from_millis(5)), -5.0);
    }
}
