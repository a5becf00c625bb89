//! The post-call pipeline: workers that claim `postcall` jobs from the database queue and, for
//! each ended call, fetch the recording, transcribe it offline (local Whisper), summarise and
//! extract fields (built-in extractor), save everything on the call row and queue the one
//! `call.completed` webhook; and senders that deliver queued webhooks, signed, with retries.
//! Every step checks the call row first, so a retried job resumes where it stopped.
//! See docs/postcall.md.

pub mod audio;
pub mod deliver;
mod delivery;
pub mod extract;
mod offline;
pub mod openai;
mod steps;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Call, Job, JobResult, PostcallUpdate, Store, JOB_KIND_POSTCALL};
use crate::stt::whisper::engine::WhisperEngine;

/// Settings of the post-call workers and webhook senders (`[postcall]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostcallSettings {
    /// Job workers in this process (0: none; run `callengine worker` elsewhere).
    pub workers: usize,
    /// Webhook senders in this process.
    pub webhook_workers: usize,
    /// A claimed job's lease; renewed while it runs, rescued by another worker after it lapses.
    pub lease_secs: u64,
    /// Pause between polls of an empty queue.
    pub poll_ms: u64,
    /// First retry delay of a failed job (doubles per attempt, jittered).
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Largest recording fetched.
    pub recording_max_bytes: u64,
    /// Time allowed for a recording download.
    pub recording_timeout_secs: u64,
    /// How long a call's post-call job (and so its `call.completed`) waits for a carrier
    /// recording that is expected (`expect_recording` in the tenant's post-call config, or a
    /// carrier callback announcing one); then it runs with what it has, and a recording that
    /// comes later is sent as `call.updated`.
    pub recording_wait_secs: u64,
    /// Beam width of the offline transcription.
    pub offline_beam: usize,
    /// Time a webhook receiver has to answer.
    pub webhook_timeout_ms: u64,
    /// Delays before each webhook retry, seconds, comma-separated; after the last, `dead`.
    pub webhook_retry_secs: String,
    /// TEST-ONLY fault injection, never configurable (skipped by serde, `None` by default):
    /// every attempt of the post-call job of this call panics, so tests can check that a
    /// panicking job fails only its own attempt (see `job_loop`).
    #[doc(hidden)]
    #[serde(skip)]
    pub test_panic_call: Option<uuid::Uuid>,
}

impl Default for PostcallSettings {
    fn default() -> Self {
        Self {
            workers: 1,
            webhook_workers: 1,
            lease_secs: 300,
            poll_ms: 500,
            retry_base_ms: 5_000,
            retry_max_ms: 600_000,
            recording_max_bytes: 200 * 1024 * 1024,
            recording_timeout_secs: 120,
            recording_wait_secs: 300,
            offline_beam: crate::stt::whisper::engine::DEFAULT_BEAM,
            webhook_timeout_ms: 10_000,
            webhook_retry_secs: "5,300,1800,7200,18000,36000,36000".into(),
            test_panic_call: None,
        }
    }
}

/// The text of a caught panic (`panic!` with a literal or a formatted message).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_string(), |s| (*s).to_string()),
    }
}

/// What the workers share.
pub struct Pipeline {
    store: Store,
    settings: PostcallSettings,
    schedule: Vec<Duration>,
    recordings_dir: PathBuf,
    model_dir: Option<PathBuf>,
    models_cache: PathBuf,
    engine: Mutex<Option<WhisperEngine>>,
    /// Cancelled when the process stops: workers finish the job in hand and return.
    cancel: CancellationToken,
    node: String,
    metrics: crate::metrics::PostcallMetrics,
    /// Every outbound request (recordings, endpoints, webhooks) follows it.
    egress: crate::egress::EgressPolicy,
}

/// Stops the workers (they finish the job in hand) and waits for them.
#[derive(Clone)]
pub struct PostcallHandle {
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl PostcallHandle {
    /// Asks every worker to stop after its current job (an idle one stops at once).
    pub fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
    }

    /// Stops the workers and waits up to `patience` for each to finish the job in hand.
    /// `false`: some were still working (their leases bring the jobs back to another worker).
    pub async fn stop_and_join(&self, patience: Duration) -> bool {
        self.stop();
        let joined = tokio::time::timeout(patience, self.tasks.wait())
            .await
            .is_ok();
        if !joined {
            tracing::warn!(
                workers = self.tasks.len(),
                patience_s = patience.as_secs(),
                "post-call workers still busy at exit; their jobs return when the leases lapse"
            );
        }
        joined
    }
}

/// Where the workers run: the node's name (their job leases carry it), its data directory
/// (recordings, the model cache) and the Whisper model, when one is configured.
#[derive(Debug, Clone)]
pub struct Workplace {
    pub node: String,
    pub data_dir: PathBuf,
    pub model_dir: Option<PathBuf>,
}

impl Pipeline {
    /// Starts `settings.workers` job workers and `settings.webhook_workers` senders on the
    /// current runtime; they stop when `cancel` is cancelled (or through the handle).
    pub fn start(
        store: Store,
        settings: PostcallSettings,
        place: Workplace,
        metrics: crate::metrics::PostcallMetrics,
        egress: crate::egress::EgressPolicy,
        cancel: CancellationToken,
    ) -> Result<PostcallHandle, String> {
        let schedule = deliver::parse_schedule(&settings.webhook_retry_secs)
            .map_err(|e| format!("postcall.webhook_retry_secs: {e}"))?;
        let tasks = TaskTracker::new();
        let Workplace {
            node,
            data_dir,
            model_dir,
        } = place;
        let pipeline = Arc::new(Pipeline {
            store,
            schedule,
            recordings_dir: data_dir.join("recordings"),
            model_dir,
            models_cache: data_dir.join("models"),
            engine: Mutex::new(None),
            cancel: cancel.clone(),
            node,
            settings,
            metrics,
            egress,
        });
        for i in 0..pipeline.settings.workers {
            let (p, worker) = (pipeline.clone(), format!("{}-job-{i}", pipeline.node));
            tasks.spawn_local(async move { p.job_loop(worker).await });
        }
        for _ in 0..pipeline.settings.webhook_workers {
            let p = pipeline.clone();
            tasks.spawn_local(async move { p.delivery_loop().await });
        }
        Ok(PostcallHandle { cancel, tasks })
    }

    /// Waits the poll interval, or less if the process stops meanwhile.
    async fn idle(&self) {
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = self.cancel.cancelled() => {}
        }
    }

    async fn job_loop(self: Arc<Self>, worker: String) {
        let lease = Duration::from_secs(self.settings.lease_secs.max(1));
        while !self.cancel.is_cancelled() {
            let job = match self
                .store
                .claim_job(JOB_KIND_POSTCALL, &worker, lease)
                .await
            {
                Ok(Some(job)) => job,
                Ok(None) => {
                    self.idle().await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim post-call jobs");
                    self.idle().await;
                    continue;
                }
            };
            tracing::info!(job_id = %job.id, call_id = ?job.call_id, attempt = job.attempts, %worker, "post-call job claimed");
            // Keep the lease while working.
            let (store, id, w) = (self.store.clone(), job.id, worker.clone());
            let heartbeat = actix_web::rt::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if !matches!(store.extend_lease(id, &w, lease).await, Ok(true)) {
                        return;
                    }
                }
            });
            // Each attempt is a task of its own: a panic fails this attempt only (retried or
            // dead like any failure), never the worker, and the heartbeat stops with it.
            let (p, j) = (self.clone(), job.clone());
            let attempt = actix_web::rt::spawn(async move {
                if p.settings.test_panic_call.is_some() && p.settings.test_panic_call == j.call_id {
                    panic!("test fault: post-call job {} panics", j.id);
                }
                p.run(&j).await
            });
            let result = match attempt.await {
                Ok(result) => result,
                Err(err) => {
                    let error = if err.is_panic() {
                        format!("the attempt panicked: {}", panic_message(err.into_panic()))
                    } else {
                        "the attempt was cancelled".to_string()
                    };
                    tracing::error!(job_id = %job.id, call_id = ?job.call_id, attempt = job.attempts, %error, "post-call attempt failed");
                    self.retry(&job, error)
                }
            };
            heartbeat.abort();
            // Recording the end must not be lost to a busy database: retry (the lease is the
            // backstop if this process dies meanwhile).
            let mut wait = Duration::from_millis(50);
            for attempt in 1..=20 {
                match self.store.finish_job(job.id, &worker, &result).await {
                    Ok(status) => {
                        tracing::info!(job_id = %job.id, %status, ?result, "post-call job finished");
                        self.metrics.job(match status.as_str() {
                            "queued" => "retry",
                            "done" => "done",
                            "dead" => "dead",
                            "waiting" => "waiting",
                            _ => "not_owned",
                        });
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(job_id = %job.id, error = %err, attempt, "cannot record the job's end; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    fn retry(&self, job: &Job, error: String) -> JobResult {
        let exp = 2u64.saturating_pow(job.attempts.saturating_sub(1).max(0) as u32);
        let delay = self
            .settings
            .retry_base_ms
            .saturating_mul(exp)
            .min(self.settings.retry_max_ms);
        let jittered = (delay as f64 * (0.8 + 0.4 * fastrand::f64())) as i64;
        JobResult::Retry {
            error,
            at: Utc::now() + chrono::Duration::milliseconds(jittered),
        }
    }
}

/// The HTTP client of the post-call steps (OpenAI-compatible endpoints, webhook receivers):
/// bound by the egress policy, one overall `timeout`, non-2xx answers returned rather than
/// raised, the system's certificate store.
pub(crate) fn http_agent(egress: &crate::egress::EgressPolicy, timeout: Duration) -> ureq::Agent {
    egress.agent(timeout)
}
