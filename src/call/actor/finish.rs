//! A call's end: the finish sequence (STT finalize → transcript flush → the persister's
//! completion → the one Close) and the backstop for an actor that stops without it.

use super::*;
use crate::store::CompletionOutcome;
use crate::stt::actor::SttFinish;
use crate::transcript::buffer::{FlushTranscript, PersistTurn};

impl CallActor {
    /// The finish sequence, spawned (not under `ctx.wait`, so commit acknowledgements that
    /// arrive meanwhile still reach the client before the close); its result goes back to the
    /// session.
    pub(super) fn run_finish(
        &mut self,
        reason: EndReason,
        dtmf: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let ended_at = Utc::now();
        let (stt, transcripts, persister) = (
            self.stt.clone(),
            self.transcripts.clone(),
            self.persister.clone(),
        );
        let finish_timeout = self.deps.finish_timeout;
        let (status, end_reason) = (reason.status(), reason.code_name().to_string());
        let recording = self.recorder.as_mut().map(|r| r.finish());
        let sequence = async move {
            // Every channel's stream finalizes at once (each bounded by its own timeout).
            futures_util::future::join_all(stt.iter().map(|s| s.send(SttFinish))).await;
            let mut partials = Vec::new();
            for tb in transcripts {
                partials.push(tb.send(FlushTranscript).await.ok().flatten());
            }
            let persister = persister.ok_or_else(|| "no persister".to_string())?;
            let mut partials = partials.into_iter();
            let pending_partial = partials.next().flatten();
            // Other channels' partials go ahead of the completion, in the same mailbox.
            for turn in partials.flatten() {
                persister.do_send(PersistTurn {
                    turn,
                    assembled_at: crate::clock::now(),
                });
            }
            let recording_url = match recording {
                Some(done) => match done.await {
                    Ok(path) => Some(format!("file://{}", path.display())),
                    Err(error) => {
                        tracing::error!(%error, "the call's recording could not be finished");
                        None
                    }
                },
                None => None,
            };
            let finish = FinishCall {
                status,
                end_reason,
                ended_at,
                pending_partial,
                dtmf,
                recording_url,
            };
            match tokio::time::timeout(finish_timeout, persister.send(finish)).await {
                Ok(Ok(result)) => result,
                Ok(Err(err)) => Err(format!("persister unreachable: {err}")),
                Err(_) => Err(format!(
                    "final flush still running after {} s",
                    finish_timeout.as_secs()
                )),
            }
        };
        ctx.spawn(sequence.into_actor(self).map(|result, act, ctx| {
            let _span = act.span.clone().entered();
            act.feed(Input::Finished(Box::new(result)), ctx)
        }));
    }

    /// The finish sequence ended: the call's metrics and its last log line.
    pub(super) fn completed(
        &mut self,
        reason: &EndReason,
        result: &Result<CompletionOutcome, String>,
    ) {
        let metrics = &self.deps.metrics;
        let protocol = self.session.params().protocol.to_string();
        if let Some(active) = self.active_gauge.take() {
            active.dec();
        }
        metrics
            .ended
            .get_or_create(&crate::metrics::EndLabels {
                protocol: protocol.clone(),
                reason: reason.code_name().into(),
            })
            .inc();
        if let EndReason::SttFailed(_) = reason {
            let provider = self.provider.as_ref().map_or("none", |p| p.name());
            metrics
                .stt_failures
                .get_or_create(&crate::metrics::ProviderLabels {
                    provider: provider.into(),
                })
                .inc();
        }
        let c = self.session.counters();
        match result {
            Ok(outcome) => {
                let call = outcome.call();
                if let Some(seconds) = call.duration_seconds {
                    metrics
                        .duration_seconds
                        .get_or_create(&crate::metrics::ProtocolLabels { protocol })
                        .observe(seconds as f64);
                }
                tracing::info!(call_id = %call.id, status = %call.status, end_reason = reason.code_name(),
                    duration_seconds = ?call.duration_seconds, turns = c.turns,
                    frames_invalid = c.frames_invalid, frames_dropped = c.frames_dropped, "call finished");
            }
            Err(err) => {
                tracing::error!(call_id = ?self.session.call_id(), error = %err, "call finished without confirmed flush")
            }
        }
    }

    /// The backstop's completion: the persister completes the row with `end_reason` on its
    /// own arbiter (committed turns stay; queued ones are written first).
    pub(super) fn abandon(&mut self, end_reason: &'static str, dtmf: Option<String>) {
        if let Some(persister) = &self.persister {
            persister.do_send(FinishCall {
                status: crate::store::CallStatus::Completed,
                end_reason: end_reason.into(),
                ended_at: Utc::now(),
                pending_partial: None,
                dtmf,
                recording_url: None,
            });
        }
    }
}
