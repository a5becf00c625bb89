//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format (prometheus-client).
//!
//! Every family is prefixed `callengine_`; every label takes its value from a small fixed set
//! (an enum of the engine or a literal in its code), never from what a client sent: no call id,
//! no tenant id, no external id. The recording helpers below fold a value outside their set
//! into `other`, so even a caller's mistake cannot grow a family without bound.
//!
//! The local Whisper engine reports its queue, its busy workers, each decode with the audio it
//! covered (real-time factor = `rate(callengine_whisper_decode_seconds_sum)` /
//! `rate(callengine_whisper_audio_seconds_total)`, also kept as a moving average gauge), and the
//! partial re-decodes it skipped because the queue was full.

pub mod mailbox;
pub mod process;
mod whisper;

pub use whisper::{DecodeKind, DecodeLabels, WhisperMetrics};

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `protocol` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

/// `protocol` of the live-calls gauge. No tenant label: a tenant id comes from the caller
/// (and from unauthenticated input on some ways in), so it would let anyone grow the series set;
/// per-tenant live counts are in `GET /api/v1/calls`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActiveLabels {
    pub protocol: String,
}

/// `value` if it is one of `allowed`, else `other`: label values stay in a fixed set.
fn bounded(value: &str, allowed: &[&str]) -> String {
    if allowed.contains(&value) {
        value.into()
    } else {
        "other".into()
    }
}

/// Values of the `result` label of `audio_frames_total`.
pub const FRAME_RESULTS: &[&str] = &["ok", "invalid", "dropped"];
/// Values of the `kind` label of `actors`.
pub const ACTOR_KINDS: &[&str] = &["call", "stt"];
/// Values of the `outcome` label of `postcall_jobs_total`.
pub const JOB_OUTCOMES: &[&str] = &["done", "retry", "dead", "waiting", "not_owned"];
/// Values of the `outcome` label of `webhook_deliveries_total`.
pub const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "retry", "dead"];

/// `protocol` and `result` (`ok`, `invalid`, `dropped`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    pub protocol: String,
    pub result: String,
}

/// `protocol` and `reason` (the call's end reason).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub protocol: String,
    pub reason: String,
}

/// `mailbox` label: `stt_audio` (frames queued for a call's STT actor).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailboxLabels {
    pub mailbox: String,
}

/// `kind` label: `call`, `stt`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub kind: String,
}

impl CallMetrics {
    /// The live-actor gauge of `kind` (counted up by the actor's constructor, down when it is
    /// dropped).
    pub fn actors_of(&self, kind: &str) -> Gauge {
        self.actors
            .get_or_create(&ActorLabels {
                kind: bounded(kind, ACTOR_KINDS),
            })
            .clone()
    }
}

/// `provider` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

fn duration_histogram() -> Histogram {
    // 5 s .. ~2.8 h.
    Histogram::new(exponential_buckets(5.0, 2.0, 12))
}

fn lag_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Handles to the call path's metrics.
#[derive(Clone, Debug)]
pub struct CallMetrics {
    pub active: Family<ActiveLabels, Gauge>,
    pub started: Family<ProtocolLabels, Counter>,
    pub ended: Family<EndLabels, Counter>,
    pub duration_seconds: Family<ProtocolLabels, Histogram, fn() -> Histogram>,
    pub frames: Family<FrameLabels, Counter>,
    pub stt_restarts: Family<ProviderLabels, Counter>,
    pub stt_failures: Family<ProviderLabels, Counter>,
    pub turns_persisted: Counter,
    /// Final assembled → committed.
    pub persist_lag_seconds: Histogram,
    /// Turns held in memory while the database is unreachable (sum over calls).
    pub unsent_turns: Gauge,
    /// Messages waiting in the calls' actor mailboxes (sum over calls), by mailbox.
    pub mailbox_depth: Family<MailboxLabels, Gauge>,
    /// Audio held for replay after an STT reconnect (sum over calls), bytes.
    pub replay_buffer_bytes: Gauge,
    /// Call and STT actors in memory (back to zero when no call is live: a leak shows here).
    pub actors: Family<ActorLabels, Gauge>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            active: Family::default(),
            started: Family::default(),
            ended: Family::default(),
            duration_seconds: Family::new_with_constructor(duration_histogram),
            frames: Family::default(),
            stt_restarts: Family::default(),
            stt_failures: Family::default(),
            turns_persisted: Counter::default(),
            persist_lag_seconds: lag_histogram(),
            unsent_turns: Gauge::default(),
            mailbox_depth: Family::default(),
            replay_buffer_bytes: Gauge::default(),
            actors: Family::default(),
        }
    }
}

impl CallMetrics {
    /// Counts frames of `protocol` with `result`.
    pub fn frames(&self, protocol: &str, result: &str, n: u64) {
        self.frames
            .get_or_create(&FrameLabels {
                protocol: protocol
                    .parse::<crate::store::Protocol>()
                    .map_or("other", |p| p.as_str())
                    .into(),
                result: bounded(result, FRAME_RESULTS),
            })
            .inc_by(n);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "calls_active",
            "Live call actors by protocol",
            self.active.clone(),
        );
        registry.register(
            "calls_started",
            "Calls started by protocol",
            self.started.clone(),
        );
        registry.register(
            "calls_ended",
            "Calls ended by protocol and end reason",
            self.ended.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Duration of ended calls",
            self.duration_seconds.clone(),
        );
        registry.register(
            "audio_frames",
            "Audio frames by protocol and result (ok, invalid, dropped)",
            self.frames.clone(),
        );
        registry.register(
            "stt_restarts",
            "Speech-to-text stream restarts by provider",
            self.stt_restarts.clone(),
        );
        registry.register(
            "stt_failures",
            "Calls whose speech-to-text gave up, by provider",
            self.stt_failures.clone(),
        );
        registry.register(
            "turns_persisted",
            "Turns committed to the database",
            self.turns_persisted.clone(),
        );
        registry.register(
            "persist_lag_seconds",
            "Time from a final turn to its commit",
            self.persist_lag_seconds.clone(),
        );
        registry.register(
            "unsent_turns",
            "Turns held in memory waiting for the database",
            self.unsent_turns.clone(),
        );
        registry.register(
            "actors",
            "Call and STT actors in memory, by kind",
            self.actors.clone(),
        );
        registry.register(
            "replay_buffer_bytes",
            "Audio the STT actors hold to replay after a reconnect (sum over live calls), bytes",
            self.replay_buffer_bytes.clone(),
        );
        registry.register(
            "mailbox_depth",
            "Messages waiting in the call actors' mailboxes (sum over live calls)",
            self.mailbox_depth.clone(),
        );
    }
}

/// `outcome` label (a fixed set of values per family).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Handles to the post-call pipeline's metrics.
#[derive(Clone, Debug, Default)]
pub struct PostcallMetrics {
    /// Job attempts by outcome: `done`, `retry`, `dead`.
    pub jobs: Family<OutcomeLabels, Counter>,
    /// Webhook attempts by outcome: `delivered`, `retry`, `dead`.
    pub webhooks: Family<OutcomeLabels, Counter>,
}

impl PostcallMetrics {
    /// Counts one job attempt's outcome.
    pub fn job(&self, outcome: &str) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: bounded(outcome, JOB_OUTCOMES),
            })
            .inc();
    }

    /// Counts one webhook attempt's outcome.
    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabels {
                outcome: bounded(outcome, WEBHOOK_OUTCOMES),
            })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "postcall_jobs",
            "Post-call job attempts by outcome (done, retry, dead)",
            self.jobs.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Outbound webhook attempts by outcome (delivered, retry, dead)",
            self.webhooks.clone(),
        );
    }
}

/// The node's metrics registry and the handles the components record into.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub whisper: WhisperMetrics,
    pub postcall: PostcallMetrics,
    pub calls: CallMetrics,
    /// TCP sockets by kind and whether `TCP_NODELAY` is on (copied from [`crate::net`]).
    tcp: Family<TcpLabels, Counter>,
}

/// Labels of `callengine_tcp_connections`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub socket: &'static str,
    pub nodelay: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        // The process families keep their conventional unprefixed names; ours are
        // `callengine_*`.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let ours = registry.sub_registry_with_prefix("callengine");
        let whisper = WhisperMetrics::default();
        whisper.register(ours);
        let postcall = PostcallMetrics::default();
        postcall.register(ours);
        let calls = CallMetrics::default();
        calls.register(ours);
        let tcp = Family::<TcpLabels, Counter>::default();
        ours.register(
            "tcp_connections",
            "TCP sockets opened or accepted, by kind and whether TCP_NODELAY is on",
            tcp.clone(),
        );
        Self {
            registry,
            whisper,
            postcall,
            calls,
            tcp,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        for kind in crate::net::SocketKind::ALL {
            for nodelay in [true, false] {
                let labels = TcpLabels {
                    socket: kind.as_str(),
                    nodelay: if nodelay { "true" } else { "false" },
                };
                self.tcp.get_or_create(&labels).inner().store(
                    crate::net::count(kind, nodelay),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_families_are_exposed_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.whisper.workers.set(2);
        metrics.whisper.queue_length.set(3);
        metrics.whisper.record_decode(DecodeKind::Final, 4.0, 1.0);
        metrics.whisper.record_decode(DecodeKind::Final, 2.0, 1.0);
        metrics.whisper.record_decode(DecodeKind::Partial, 1.0, 0.5);
        let text = metrics.encode();
        assert!(text.contains("callengine_whisper_queue_length 3"), "{text}");
        assert!(text.contains("callengine_whisper_workers 2"), "{text}");
        assert!(
            text.contains("callengine_whisper_audio_seconds_total{kind=\"final\"} 6.0"),
            "{text}"
        );
        assert!(
            text.contains("callengine_whisper_decode_seconds_count{kind=\"partial\"} 1"),
            "{text}"
        );
        // 0.8 * 0.25 + 0.2 * 0.5
        assert!(
            text.contains("callengine_whisper_real_time_factor 0.30000000000000004")
                || text.contains("callengine_whisper_real_time_factor 0.3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_outside_their_set_fold_into_other() {
        let metrics = Metrics::default();
        for i in 0..50 {
            let junk = format!("{}-{i}", uuid::Uuid::new_v4());
            metrics.calls.frames(&junk, &junk, 1);
            metrics.calls.actors_of(&junk).inc();
            metrics.postcall.job(&junk);
            metrics.postcall.webhook(&junk);
        }
        metrics.calls.frames("voice", "ok", 1);
        metrics.postcall.job("done");
        let text = metrics.encode();
        let series = |family: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .count()
        };
        assert_eq!(series("callengine_audio_frames_total"), 2, "{text}");
        assert_eq!(series("callengine_actors"), 1, "{text}");
        assert_eq!(series("callengine_postcall_jobs_total"), 2, "{text}");
        for line in [
            "callengine_audio_frames_total{protocol=\"other\",result=\"other\"} 50",
            "callengine_audio_frames_total{protocol=\"voice\",result=\"ok\"} 1",
            "callengine_actors{kind=\"other\"} 50",
            "callengine_postcall_jobs_total{outcome=\"other\"} 50",
            "callengine_postcall_jobs_total{outcome=\"done\"} 1",
            "callengine_webhook_deliveries_total{outcome=\"other\"} 50",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn process_families_are_exposed_unprefixed() {
        let text = Metrics::default().encode();
        for family in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_threads ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(family), "{family} missing from {text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!(rss > 1e6, "{rss}");
        assert!(!text.contains("callengine_process"), "{text}");
    }
}
