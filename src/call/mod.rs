//! Calls: the per-call [`actor::CallActor`], the process-wide [`registry::CallRegistry`], and
//! the pure pieces they use (end reasons, the outbound writer).

pub mod actor;
pub mod client;
pub mod end;
pub mod events;
pub mod limits;
pub mod outbound;
pub mod persist;
pub mod recorder;
pub mod registry;
pub mod session;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;

use crate::store::Store;
use crate::stt::actor::SttPolicy;
use crate::stt::SttProvider;
use crate::stt::SttSettings;
pub use settings::CallSettings;

/// The STT providers this node has, and the default. A tenant's `stt_provider` picks one.
pub struct SttProviders {
    default: Arc<dyn SttProvider>,
    by_name: std::collections::HashMap<&'static str, Arc<dyn SttProvider>>,
}

impl SttProviders {
    /// The default provider plus others available on this node.
    pub fn new(default: Arc<dyn SttProvider>, others: Vec<Arc<dyn SttProvider>>) -> Self {
        let mut by_name = std::collections::HashMap::new();
        for provider in others.into_iter().chain(std::iter::once(default.clone())) {
            by_name.insert(provider.name(), provider);
        }
        Self { default, by_name }
    }

    /// The provider for a tenant's choice (`None`: the default). An unknown or unconfigured
    /// choice is an error naming it, so the call fails at its start rather than later.
    pub fn pick(&self, choice: Option<&str>) -> Result<Arc<dyn SttProvider>, String> {
        match choice.map(str::trim).filter(|c| !c.is_empty()) {
            None => Ok(self.default.clone()),
            Some(name) => self.by_name.get(name).cloned().ok_or_else(|| {
                let mut available: Vec<&str> = self.by_name.keys().copied().collect();
                available.sort_unstable();
                format!("the tenant's STT provider {name:?} is not configured on this node (available: {})", available.join(", "))
            }),
        }
    }
}

/// What every call needs, shared read-only by all of them.
pub struct CallDeps {
    pub store: Store,
    pub stt: SttProviders,
    pub stt_policy: SttPolicy,
    /// How calls reach the registry that supervises them.
    pub roster: actor::roster::Roster,
    /// Arbiter the persisters run on (outlives the HTTP workers).
    pub persist_arbiter: ArbiterHandle,
    pub idle_timeout: Duration,
    pub partial_promote: Duration,
    pub finish_timeout: Duration,
    pub start_timeout: Duration,
    pub max_unsent_turns: usize,
    /// Where the engine's own call recordings go.
    pub recordings_dir: std::path::PathBuf,
    /// The call path's metrics.
    pub metrics: crate::metrics::CallMetrics,
    /// Live events of every call (`GET /api/v1/events`).
    pub events: events::EventBus,
}

impl CallDeps {
    /// Builds the shared call dependencies from settings.
    pub fn new(
        s: &SttSettings,
        c: &CallSettings,
        data_dir: &std::path::Path,
        store: Store,
        stt: SttProviders,
        roster: actor::roster::Roster,
        persist_arbiter: ArbiterHandle,
    ) -> Self {
        Self {
            store,
            stt,
            stt_policy: SttPolicy {
                restart_max: s.restart_max,
                restart_window: Duration::from_secs(s.restart_window_secs),
                backoff_initial: Duration::from_millis(s.backoff_initial_ms),
                backoff_max: Duration::from_millis(s.backoff_max_ms),
                replay_buffer_ms: s.replay_buffer_ms as i64,
                audio_queue_frames: s.audio_queue_frames,
                finalize_timeout: Duration::from_millis(s.finalize_timeout_ms),
                sample_rate: 16_000,
                api_key: None,
            },
            roster,
            persist_arbiter,
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            partial_promote: Duration::from_millis(c.partial_promote_ms),
            finish_timeout: Duration::from_secs(c.finish_timeout_secs),
            start_timeout: Duration::from_secs(c.start_timeout_secs),
            max_unsent_turns: c.max_unsent_turns,
            recordings_dir: data_dir.join("recordings"),
            metrics: crate::metrics::CallMetrics::default(),
            events: events::EventBus::default(),
        }
    }
}
