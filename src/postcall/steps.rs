//! One post-call job, step by step: wait for an expected recording, the offline transcript,
//! the summary and fields, the webhook, the status. Every step reads the call row first and is
//! skipped when the row shows it done, so a retried job resumes where it stopped. A step that
//! cannot go on returns the job's result as `Err` (retry, wait or dead).

use super::*;
use crate::store::{Tenant, Turn};

/// A step's outcome: go on, or end the job with this result.
type Step<T> = Result<T, JobResult>;

impl Pipeline {
    /// One job: every step skipped when the call row shows it done.
    pub(super) async fn run(self: &Arc<Self>, job: &Job) -> JobResult {
        match self.steps(job).await {
            Ok(result) | Err(result) => result,
        }
    }

    async fn steps(self: &Arc<Self>, job: &Job) -> Step<JobResult> {
        let Some(call_id) = job.call_id else {
            return Ok(JobResult::Dead {
                error: "post-call job without a call".into(),
            });
        };
        let call = match self.store.get_call(call_id).await {
            Ok(Some(call)) => call,
            Ok(None) => {
                return Ok(JobResult::Dead {
                    error: format!("call {call_id} not found"),
                })
            }
            Err(err) => return Err(self.retry(job, err.to_string())),
        };
        if let Some(wait) = self.recording_wait(&call) {
            return Ok(wait);
        }
        let last_attempt = job.attempts >= job.max_attempts;
        let mut failure = self.offline_step(job, &call, last_attempt).await?;
        let (call, tenant, turns) = self.summary_inputs(job, call_id).await?;
        self.summary_step(
            job,
            &call,
            tenant.as_ref(),
            &turns,
            last_attempt,
            &mut failure,
        )
        .await?;
        // 5: the webhook, built only from the row as saved.
        if let Some(url) = tenant.as_ref().and_then(|t| t.webhook_url.clone()) {
            if let Err(error) = self.enqueue_webhook(call_id, tenant.as_ref(), &url).await {
                return Err(self.retry(job, error));
            }
        }
        let status = match failure {
            None => crate::store::POSTCALL_PROCESSED,
            Some(_) => crate::store::POSTCALL_FAILED,
        };
        if let Err(err) = self.store.set_postcall_status(call_id, status).await {
            return Err(self.retry(job, err.to_string()));
        }
        Ok(match failure {
            None => JobResult::Done,
            Some(error) => JobResult::Dead { error },
        })
    }

    /// 0: a carrier recording is on its way: wait for it (its callback wakes the job), up to
    /// `recording_wait_secs` after the call ended; then go on with what there is.
    fn recording_wait(&self, call: &Call) -> Option<JobResult> {
        if !call.recording_expected || call.recording_url.is_some() {
            return None;
        }
        let ended = call.ended_at.unwrap_or(call.updated_at);
        let wait = chrono::Duration::seconds(self.settings.recording_wait_secs as i64);
        (Utc::now() < ended + wait).then_some(JobResult::Wait {
            until: ended + wait,
        })
    }

    /// 1–3: recording → 16 kHz → offline transcript, saved on the row. On the last attempt a
    /// failure is kept (the job goes on and ends `failed`) instead of retried.
    async fn offline_step(
        self: &Arc<Self>,
        job: &Job,
        call: &Call,
        last_attempt: bool,
    ) -> Step<Option<String>> {
        if call.offline_transcript.is_some() || call.recording_url.is_none() {
            return Ok(None);
        }
        match self.offline_transcript(call).await {
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
                match self.store.save_postcall(call.id, &update).await {
                    Ok(_) => Ok(None),
                    Err(err) => Err(self.retry(job, err.to_string())),
                }
            }
            Err(error) if !last_attempt => {
                tracing::warn!(call_id = %call.id, %error, attempt = job.attempts, "offline transcription failed; will retry");
                Err(self.retry(job, error))
            }
            Err(error) => Ok(Some(error)),
        }
    }

    /// The row as saved by the steps before, its tenant and its live turns.
    async fn summary_inputs(
        &self,
        job: &Job,
        call_id: uuid::Uuid,
    ) -> Step<(Call, Option<Tenant>, Vec<Turn>)> {
        let call = match self.store.get_call(call_id).await {
            Ok(Some(call)) => call,
            _ => return Err(self.retry(job, "call row unreadable".into())),
        };
        let tenant = match self.store.get_tenant(call.tenant_id).await {
            Ok(t) => t,
            Err(err) => return Err(self.retry(job, err.to_string())),
        };
        match self.store.list_turns(call_id).await {
            Ok(turns) => Ok((call, tenant, turns)),
            Err(err) => Err(self.retry(job, err.to_string())),
        }
    }

    /// 4: summary and extraction — the tenant's LLM endpoint when it has one, else (or on the
    /// last attempt after it failed) the built-in extractor; saved with any failure noted.
    async fn summary_step(
        &self,
        job: &Job,
        call: &Call,
        tenant: Option<&Tenant>,
        turns: &[Turn],
        last_attempt: bool,
        failure: &mut Option<String>,
    ) -> Step<()> {
        if call.summary.is_some() {
            if let Some(error) = failure.as_ref() {
                let update = PostcallUpdate {
                    postcall_error: Some(error.clone()),
                    ..PostcallUpdate::default()
                };
                if let Err(err) = self.store.save_postcall(call.id, &update).await {
                    return Err(self.retry(job, err.to_string()));
                }
            }
            return Ok(());
        }
        let config = tenant.and_then(|t| t.postcall_config.clone());
        let from_llm = match self.ask_llm(call, turns, config.as_ref()).await {
            None => None,
            Some(Ok(result)) => Some(result),
            Some(Err(error)) if !last_attempt => return Err(self.retry(job, error)),
            Some(Err(error)) => {
                // Last attempt: the built-in extractor, with the failure noted.
                *failure = Some(match failure.take() {
                    Some(earlier) => format!("{earlier}; {error}"),
                    None => error,
                });
                None
            }
        };
        let (summary, fields) = from_llm.unwrap_or_else(|| {
            let (contact_text, transcript) = texts(call, turns);
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
        match self.store.save_postcall(call.id, &update).await {
            Ok(_) => Ok(()),
            Err(err) => Err(self.retry(job, err.to_string())),
        }
    }

    /// The tenant's LLM endpoint's summary and fields (`None`: the tenant has none).
    async fn ask_llm(
        &self,
        call: &Call,
        turns: &[Turn],
        config: Option<&serde_json::Value>,
    ) -> Option<Result<(String, serde_json::Value), String>> {
        let endpoint =
            config.and_then(|c| openai::Endpoint::from_config(&c["llm"], "gpt-4o-mini"))?;
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
        Some(asked)
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
}

/// What the built-in extractor reads: the contact's words (or everything when the contact said
/// nothing), and the whole transcript (the offline one when there is one).
fn texts(call: &Call, turns: &[Turn]) -> (String, String) {
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
    (contact_text, transcript)
}
