//! The post-call pipeline: workers that claim `postcall` jobs from the database queue and, for
//! each ended call, fetch the recording, transcribe it offline (local Whisper), summarise and
//! extract fields (built-in extractor), save everything on the call row and queue the one
//! `call.completed` webhook; and senders that deliver queued webhooks, signed, with retries.
//! Every step checks the call row first, so a retried job resumes where it stopped.
//! See docs/postcall.md.

pub mod audio;
pub mod deliver;
pub mod extract;
pub mod openai;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

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
    stop: Arc<AtomicBool>,
    node: String,
    metrics: crate::metrics::PostcallMetrics,
    /// Every outbound request (recordings, endpoints, webhooks) follows it.
    egress: crate::egress::EgressPolicy,
}

/// Stops the workers (they finish the job in hand).
#[derive(Clone)]
pub struct PostcallHandle {
    stop: Arc<AtomicBool>,
}

impl PostcallHandle {
    /// Asks every worker to stop after its current job.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Pipeline {
    /// Starts `settings.workers` job workers and `settings.webhook_workers` senders on the
    /// current runtime.
    pub fn start(
        store: Store,
        settings: PostcallSettings,
        data_dir: PathBuf,
        model_dir: Option<PathBuf>,
        node: String,
        metrics: crate::metrics::PostcallMetrics,
        egress: crate::egress::EgressPolicy,
    ) -> Result<PostcallHandle, String> {
        let schedule = deliver::parse_schedule(&settings.webhook_retry_secs)
            .map_err(|e| format!("postcall.webhook_retry_secs: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let pipeline = Arc::new(Pipeline {
            store,
            schedule,
            recordings_dir: data_dir.join("recordings"),
            model_dir,
            models_cache: data_dir.join("models"),
            engine: Mutex::new(None),
            stop: stop.clone(),
            node,
            settings,
            metrics,
            egress,
        });
        for i in 0..pipeline.settings.workers {
            let (p, worker) = (pipeline.clone(), format!("{}-job-{i}", pipeline.node));
            actix_web::rt::spawn(async move { p.job_loop(worker).await });
        }
        for _ in 0..pipeline.settings.webhook_workers {
            let p = pipeline.clone();
            actix_web::rt::spawn(async move { p.delivery_loop().await });
        }
        Ok(PostcallHandle { stop })
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.settings.poll_ms.max(10))
    }

    async fn job_loop(self: Arc<Self>, worker: String) {
        let lease = Duration::from_secs(self.settings.lease_secs.max(1));
        while !self.stop.load(Ordering::SeqCst) {
            let job = match self
                .store
                .claim_job(JOB_KIND_POSTCALL, &worker, lease)
                .await
            {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tokio::time::sleep(self.idle()).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim post-call jobs");
                    tokio::time::sleep(self.idle()).await;
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

    /// One job: every step skipped when the call row shows it done.
    async fn run(self: &Arc<Self>, job: &Job) -> JobResult {
        let Some(call_id) = job.call_id else {
            return JobResult::Dead {
                error: "post-call job without a call".into(),
            };
        };
        let call = match self.store.get_call(call_id).await {
            Ok(Some(call)) => call,
            Ok(None) => {
                return JobResult::Dead {
                    error: format!("call {call_id} not found"),
                }
            }
            Err(err) => return self.retry(job, err.to_string()),
        };
        // 0: a carrier recording is on its way: wait for it (its callback wakes the job), up to
        // `recording_wait_secs` after the call ended; then go on with what there is.
        if call.recording_expected && call.recording_url.is_none() {
            let ended = call.ended_at.unwrap_or(call.updated_at);
            let wait = chrono::Duration::seconds(self.settings.recording_wait_secs as i64);
            if Utc::now() < ended + wait {
                return JobResult::Wait {
                    until: ended + wait,
                };
            }
        }
        let last_attempt = job.attempts >= job.max_attempts;
        let mut failure: Option<String> = None;

        // 1–3: recording → 16 kHz → offline transcript.
        if call.offline_transcript.is_none() && call.recording_url.is_some() {
            match self.offline_transcript(&call).await {
                Ok(parts) => {
                    let text = parts
                        .iter()
                        .map(|(_, t)| t.as_str())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let update = PostcallUpdate {
                        offline_transcript: Some(text),
                        offline_turns: parts,
                        ..PostcallUpdate::default()
                    };
                    if let Err(err) = self.store.save_postcall(call_id, &update).await {
                        return self.retry(job, err.to_string());
                    }
                }
                Err(error) if !last_attempt => {
                    tracing::warn!(%call_id, %error, attempt = job.attempts, "offline transcription failed; will retry");
                    return self.retry(job, error);
                }
                Err(error) => failure = Some(error),
            }
        }

        // 4: summary and extraction (reads the summary first, then the transcript).
        let call = match self.store.get_call(call_id).await {
            Ok(Some(call)) => call,
            _ => return self.retry(job, "call row unreadable".into()),
        };
        let tenant = match self.store.get_tenant(call.tenant_id).await {
            Ok(t) => t,
            Err(err) => return self.retry(job, err.to_string()),
        };
        let turns = match self.store.list_turns(call_id).await {
            Ok(t) => t,
            Err(err) => return self.retry(job, err.to_string()),
        };
        if call.summary.is_none() {
            let contact: Vec<&str> = turns
                .iter()
                .filter(|t| t.speaker != "agent" && t.speaker != "callee")
                .map(|t| t.text.as_str())
                .collect();
            let transcript = call.offline_transcript.clone().unwrap_or_else(|| {
                turns
                    .iter()
                    .map(|t| t.text.as_str())
                    .collect::<Vec<_>>()
                    .join(". ")
            });
            let contact_text = if contact.is_empty() {
                transcript.clone()
            } else {
                contact.join(". ")
            };
            let config = tenant.as_ref().and_then(|t| t.postcall_config.clone());
            let llm = config
                .as_ref()
                .and_then(|c| openai::Endpoint::from_config(&c["llm"], "gpt-4o-mini"));
            let from_llm = match llm {
                None => None,
                Some(endpoint) => {
                    let labelled = call.offline_transcript.clone().unwrap_or_else(|| {
                        turns
                            .iter()
                            .map(|t| format!("{}: {}", t.speaker, t.text))
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                    let timeout = Duration::from_secs(self.settings.recording_timeout_secs);
                    let egress = self.egress.clone();
                    let asked = tokio::task::spawn_blocking(move || {
                        openai::summarise(&egress, &endpoint, &labelled, 3, timeout)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    match asked {
                        Ok(result) => Some(result),
                        Err(error) if !last_attempt => return self.retry(job, error),
                        Err(error) => {
                            // Last attempt: the built-in extractor, with the failure noted.
                            failure = Some(match failure {
                                Some(earlier) => format!("{earlier}; {error}"),
                                None => error,
                            });
                            None
                        }
                    }
                }
            };
            let (summary, fields) = from_llm.unwrap_or_else(|| {
                let lists = extract::Lists::from_config(config.as_ref());
                let e = extract::extract(&contact_text, &transcript, &lists);
                (e.summary, e.fields)
            });
            let update = PostcallUpdate {
                summary: Some(summary),
                extracted_fields: Some(fields),
                postcall_error: failure.clone(),
                ..PostcallUpdate::default()
            };
            if let Err(err) = self.store.save_postcall(call_id, &update).await {
                return self.retry(job, err.to_string());
            }
        } else if let Some(error) = &failure {
            let update = PostcallUpdate {
                postcall_error: Some(error.clone()),
                ..PostcallUpdate::default()
            };
            if let Err(err) = self.store.save_postcall(call_id, &update).await {
                return self.retry(job, err.to_string());
            }
        }

        // 5: the webhook, built only from the row as saved.
        if let Some(url) = tenant.as_ref().and_then(|t| t.webhook_url.clone()) {
            if let Err(error) = self.enqueue_webhook(call_id, tenant.as_ref(), &url).await {
                return self.retry(job, error);
            }
        }
        let status = match failure {
            None => crate::store::POSTCALL_PROCESSED,
            Some(_) => crate::store::POSTCALL_FAILED,
        };
        if let Err(err) = self.store.set_postcall_status(call_id, status).await {
            return self.retry(job, err.to_string());
        }
        match failure {
            None => JobResult::Done,
            Some(error) => JobResult::Dead { error },
        }
    }

    /// Queues the call's webhook: `call.completed` the first time; once that went out, a re-run
    /// (a recording that came after it) queues `call.updated` with an event id of its own.
    async fn enqueue_webhook(
        &self,
        call_id: uuid::Uuid,
        tenant: Option<&crate::store::Tenant>,
        url: &str,
    ) -> Result<(), String> {
        let store = &self.store;
        let call = match store.get_call(call_id).await {
            Ok(Some(call)) => call,
            _ => return Err("call row unreadable".into()),
        };
        let turns = store.list_turns(call_id).await.map_err(|e| e.to_string())?;
        let completed_id = deliver::event_id(call_id);
        let mut payload = deliver::payload(&call, tenant, &turns, Utc::now());
        let completed_sent = store
            .delivery_exists(&completed_id)
            .await
            .map_err(|e| e.to_string())?;
        let (event_id, event_type) = match completed_sent {
            false => (completed_id, deliver::CALL_COMPLETED),
            true => {
                payload["event_type"] = deliver::CALL_UPDATED.into();
                (deliver::update_event_id(&call), deliver::CALL_UPDATED)
            }
        };
        store
            .enqueue_delivery(&event_id, Some(call_id), event_type, &payload, url)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Downloads (or reuses) the recording and transcribes it with the local engine.
    /// The recording's transcript as `(start_ms, text)` parts (30 s windows, or one part from a
    /// remote endpoint).
    async fn offline_transcript(
        self: &Arc<Self>,
        call: &Call,
    ) -> Result<Vec<(i64, String)>, String> {
        let url = call.recording_url.clone().unwrap_or_default();
        let tenant = self.store.get_tenant(call.tenant_id).await.ok().flatten();
        let auth = tenant
            .as_ref()
            .and_then(|t| t.postcall_config.as_ref())
            .and_then(|c| {
                let a = &c["recording_auth"];
                Some((
                    a["username"].as_str()?.to_string(),
                    a["password"].as_str()?.to_string(),
                ))
            });
        let cached = self.recordings_dir.join(format!("{}.rec", call.id));
        let (max, timeout) = (
            self.settings.recording_max_bytes,
            Duration::from_secs(self.settings.recording_timeout_secs),
        );
        let local = url.strip_prefix("file://").map(PathBuf::from);
        let bytes = match (local, std::fs::read(&cached)) {
            // The engine's own recording of this very call, nothing else on this disk.
            (Some(path), _) => {
                let own = self.recordings_dir.join(format!("{}.wav", call.id));
                let same = match (path.canonicalize(), own.canonicalize()) {
                    (Ok(file), Ok(own)) => file == own,
                    _ => false,
                };
                if !same {
                    return Err(
                        "a file:// recording must be the engine's own recording of this call"
                            .into(),
                    );
                }
                std::fs::read(&own).map_err(|e| format!("reading the recording: {e}"))?
            }
            (None, Ok(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                let source = match call.protocol {
                    crate::store::Protocol::Twilio => crate::egress::RecordingSource::Twilio,
                    crate::store::Protocol::Vonage => crate::egress::RecordingSource::Vonage,
                    _ => crate::egress::RecordingSource::Other,
                };
                let tenant_hosts = tenant
                    .as_ref()
                    .map(|t| t.recording_hosts.clone())
                    .unwrap_or_default();
                let checked = self
                    .egress
                    .check_recording_url(&url, source, &tenant_hosts)
                    .map_err(|e| format!("recording fetch: {e}"))?;
                let (egress, dir, file) = (
                    self.egress.clone(),
                    self.recordings_dir.clone(),
                    cached.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let basic = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                    let bytes = egress
                        .get(&checked, basic, max, timeout)
                        .map_err(|e| format!("recording fetch failed: {e}"))?;
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("recordings directory: {e}"))?;
                    let partial = file.with_extension("part");
                    std::fs::write(&partial, &bytes)
                        .map_err(|e| format!("saving the recording: {e}"))?;
                    std::fs::rename(&partial, &file)
                        .map_err(|e| format!("saving the recording: {e}"))?;
                    Ok::<_, String>(bytes)
                })
                .await
                .map_err(|e| e.to_string())??
            }
        };
        let extension = url
            .rsplit('/')
            .next()
            .and_then(|last| last.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase());
        let remote = tenant
            .as_ref()
            .and_then(|t| t.postcall_config.as_ref())
            .and_then(|c| openai::Endpoint::from_config(&c["offline_stt"], "whisper-1"));
        if let Some(endpoint) = remote {
            let filename = url
                .rsplit('/')
                .next()
                .filter(|n| n.contains('.'))
                .unwrap_or("recording.wav")
                .to_string();
            let timeout = Duration::from_secs(self.settings.recording_timeout_secs);
            let egress = self.egress.clone();
            let text = tokio::task::spawn_blocking(move || {
                openai::transcribe(&egress, &endpoint, &bytes, &filename, timeout)
            })
            .await
            .map_err(|e| e.to_string())??;
            return Ok(vec![(0, text)]);
        }
        let max_secs = self.egress.max_recording.as_secs();
        let samples = tokio::task::spawn_blocking(move || {
            audio::decode_to_16k_mono_capped(&bytes, extension.as_deref(), max_secs)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.transcribe(samples).await
    }

    async fn transcribe(self: &Arc<Self>, samples: Vec<f32>) -> Result<Vec<(i64, String)>, String> {
        let beam = self.settings.offline_beam.max(1);
        // The engine is loaded once per process, on first use, and used by one job at a time.
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut guard = this
                .engine
                .lock()
                .map_err(|_| "whisper engine poisoned".to_string())?;
            if guard.is_none() {
                let dir = crate::stt::whisper::fetch::resolve_model_dir(
                    this.model_dir.as_deref(),
                    &this.models_cache,
                )
                .map_err(|e| e.to_string())?;
                *guard = Some(WhisperEngine::load(&dir).map_err(|e| e.to_string())?);
            }
            let engine = guard.as_mut().ok_or("whisper engine missing")?;
            let mut parts = Vec::new();
            let window_ms = (crate::stt::whisper::mel::N_SAMPLES / 16) as i64;
            for (i, window) in samples
                .chunks(crate::stt::whisper::mel::N_SAMPLES)
                .enumerate()
            {
                let text = engine.decode(window, beam).map_err(|e| e.to_string())?.text;
                if !text.trim().is_empty() {
                    parts.push((i as i64 * window_ms, text.trim().to_string()));
                }
            }
            Ok(parts)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The signing secret of a delivery's tenant. An error when it cannot be read now or the
    /// tenant has none: a webhook is never sent unsigned.
    async fn webhook_secret(&self, call_id: Option<uuid::Uuid>) -> Result<String, String> {
        let call_id = call_id.ok_or("the delivery names no call")?;
        let call = self
            .store
            .get_call(call_id)
            .await
            .map_err(|e| format!("cannot read the call: {e}"))?
            .ok_or("the delivery's call is gone")?;
        let tenant = self
            .store
            .get_tenant(call.tenant_id)
            .await
            .map_err(|e| format!("cannot read the tenant's webhook secret: {e}"))?
            .ok_or("the call's tenant is gone")?;
        tenant
            .webhook_secret
            .map(|s| s.expose().to_string())
            .ok_or_else(|| {
                "the tenant has no webhook secret; webhooks are never sent unsigned".into()
            })
    }

    async fn delivery_loop(self: Arc<Self>) {
        let timeout = Duration::from_millis(self.settings.webhook_timeout_ms.max(1));
        // A sender that crashed mid-attempt leaves the delivery `sending`; it is due again
        // after this long.
        let lease = timeout * 3;
        while !self.stop.load(Ordering::SeqCst) {
            let delivery = match self.store.claim_delivery(lease).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    tokio::time::sleep(self.idle()).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim webhook deliveries");
                    tokio::time::sleep(self.idle()).await;
                    continue;
                }
            };
            // Never sent unsigned: a secret that cannot be looked up now is a failed attempt,
            // retried on the schedule like any other.
            let secret = match self.webhook_secret(delivery.call_id).await {
                Ok(secret) => secret,
                Err(error) => {
                    tracing::warn!(delivery = %delivery.id, %error, "webhook not sent");
                    let retry_at = deliver::next_attempt(
                        &self.schedule,
                        delivery.attempts as usize,
                        Utc::now(),
                    );
                    self.metrics
                        .webhook(if retry_at.is_some() { "retry" } else { "dead" });
                    if let Err(err) = self
                        .store
                        .record_delivery_attempt(
                            delivery.id,
                            false,
                            None,
                            None,
                            Some(error),
                            retry_at,
                        )
                        .await
                    {
                        tracing::warn!(error = %err, "cannot record a webhook attempt");
                    }
                    continue;
                }
            };
            let (url, event, payload) = (
                delivery.url.clone(),
                delivery.event_id.clone(),
                delivery.payload.clone(),
            );
            let egress = self.egress.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                deliver::attempt(&egress, &url, &event, &payload, &secret, timeout)
            })
            .await
            .unwrap_or_else(|e| deliver::AttemptResult {
                delivered: false,
                status: None,
                body: None,
                error: Some(e.to_string()),
            });
            let retry_at = (!outcome.delivered)
                .then(|| {
                    deliver::next_attempt(&self.schedule, delivery.attempts as usize, Utc::now())
                })
                .flatten();
            tracing::info!(event_id = %delivery.event_id, attempt = delivery.attempts,
                delivered = outcome.delivered, status = ?outcome.status, error = ?outcome.error,
                dead = !outcome.delivered && retry_at.is_none(), "webhook attempt");
            self.metrics
                .webhook(match (outcome.delivered, retry_at.is_some()) {
                    (true, _) => "delivered",
                    (false, true) => "retry",
                    (false, false) => "dead",
                });
            if let Err(err) = self
                .store
                .record_delivery_attempt(
                    delivery.id,
                    outcome.delivered,
                    outcome.status.map(i32::from),
                    outcome.body,
                    outcome.error,
                    retry_at,
                )
                .await
            {
                tracing::error!(error = %err, "cannot record a webhook attempt");
            }
        }
    }
}

/// The HTTP client of the post-call steps (OpenAI-compatible endpoints, webhook receivers):
/// bound by the egress policy, one overall `timeout`, non-2xx answers returned rather than
/// raised, the system's certificate store.
pub(crate) fn http_agent(egress: &crate::egress::EgressPolicy, timeout: Duration) -> ureq::Agent {
    egress.agent(timeout)
}
