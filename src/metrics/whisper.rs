//! The local Whisper engine's families: queue, busy workers, each decode with the audio it
//! covered (real-time factor), skipped partial re-decodes, failures.

use super::*;

/// Which kind of Whisper decode.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DecodeKind {
    /// The decode of a finished segment (beam search).
    Final,
    /// A re-decode of a growing segment (greedy).
    Partial,
}

impl EncodeLabelValue for DecodeKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Final => "final",
            Self::Partial => "partial",
        })
    }
}

/// `kind` label of the Whisper families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecodeLabels {
    pub kind: DecodeKind,
}

type HistogramFamily = Family<DecodeLabels, Histogram, fn() -> Histogram>;

fn decode_histogram() -> Histogram {
    // 25 ms .. ~13 s.
    Histogram::new(exponential_buckets(0.025, 2.0, 10))
}

/// Handles to the local Whisper engine's metrics (cheap to clone; clones share the values).
#[derive(Clone, Debug)]
pub struct WhisperMetrics {
    pub workers: Gauge,
    pub queue_length: Gauge,
    pub busy_workers: Gauge,
    pub decode_seconds: HistogramFamily,
    pub audio_seconds: Family<DecodeLabels, Counter<f64, AtomicU64>>,
    pub real_time_factor: Gauge<f64, AtomicU64>,
    pub skipped_partials: Counter,
    pub failures: Counter,
}

impl Default for WhisperMetrics {
    fn default() -> Self {
        Self {
            workers: Gauge::default(),
            queue_length: Gauge::default(),
            busy_workers: Gauge::default(),
            decode_seconds: Family::new_with_constructor(decode_histogram),
            audio_seconds: Family::default(),
            real_time_factor: Gauge::default(),
            skipped_partials: Counter::default(),
            failures: Counter::default(),
        }
    }
}

impl WhisperMetrics {
    /// Records one finished decode of `audio_s` seconds of audio that took `decode_s`.
    pub fn record_decode(&self, kind: DecodeKind, audio_s: f64, decode_s: f64) {
        let labels = DecodeLabels { kind };
        self.decode_seconds.get_or_create(&labels).observe(decode_s);
        self.audio_seconds.get_or_create(&labels).inc_by(audio_s);
        if kind == DecodeKind::Final && audio_s > 0.0 {
            // Exponential moving average over recent finals.
            let rtf = decode_s / audio_s;
            let previous = self.real_time_factor.get();
            let next = if previous == 0.0 {
                rtf
            } else {
                0.8 * previous + 0.2 * rtf
            };
            self.real_time_factor.set(next);
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("whisper");
        r.register(
            "workers",
            "Local Whisper worker threads",
            self.workers.clone(),
        );
        r.register(
            "queue_length",
            "Decode jobs waiting for a local Whisper worker",
            self.queue_length.clone(),
        );
        r.register(
            "busy_workers",
            "Local Whisper workers decoding right now",
            self.busy_workers.clone(),
        );
        r.register(
            "decode_seconds",
            "Time to decode one segment with local Whisper",
            self.decode_seconds.clone(),
        );
        r.register(
            "audio_seconds",
            "Seconds of audio decoded by local Whisper",
            self.audio_seconds.clone(),
        );
        r.register(
            "real_time_factor",
            "Decode time over audio time of recent final decodes (moving average)",
            self.real_time_factor.clone(),
        );
        r.register(
            "skipped_partials",
            "Partial re-decodes skipped because the queue was full",
            self.skipped_partials.clone(),
        );
        r.register(
            "failures",
            "Local Whisper decodes that failed",
            self.failures.clone(),
        );
    }
}
