//! A call's end: the finish sequence (STT finalize → transcript flush → the persister's
//! completion → the one Close) and the backstop for an actor that stops without it.

use super::*;

impl CallActor {
    pub(super) fn begin_finish(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Finishing | Phase::Done) {
            return;
        }
        self.phase = Phase::Finishing;
        let ended_at = Utc::now();
        let (stt, transcripts, persister) = (
            self.stt.clone(),
            self.transcripts.clone(),
            self.persister.clone(),
        );
        let finish_timeout = self.deps.finish_timeout;
        let (status, end_reason) = (reason.status(), reason.code_name().to_string());
        let dtmf = Some(self.dtmf.clone()).filter(|d| !d.is_empty());
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
        ctx.spawn(
            sequence
                .into_actor(self)
                .map(move |result, act, ctx| act.complete(reason, result, ctx)),
        );
    }

    pub(super) fn complete(
        &mut self,
        reason: EndReason,
        result: Result<CompletionOutcome, String>,
        ctx: &mut Context<Self>,
    ) {
        let _span = self.span.clone().entered();
        let metrics = &self.deps.metrics;
        let protocol = self.params.protocol.to_string();
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
        if let EndReason::SttFailed(_) = &reason {
            let provider = self.provider.as_ref().map_or("none", |p| p.name());
            metrics
                .stt_failures
                .get_or_create(&crate::metrics::ProviderLabels {
                    provider: provider.into(),
                })
                .inc();
        }
        metrics
            .unsent_turns
            .dec_by(self.counters.unsent_turns as i64);
        self.counters.unsent_turns = 0;
        match &result {
            Ok(outcome) => {
                let call = outcome.call();
                if let Some(seconds) = call.duration_seconds {
                    metrics
                        .duration_seconds
                        .get_or_create(&crate::metrics::ProtocolLabels {
                            protocol: protocol.clone(),
                        })
                        .observe(seconds as f64);
                }
                tracing::info!(call_id = %call.id, status = %call.status, end_reason = reason.code_name(),
                    duration_seconds = ?call.duration_seconds, turns = self.counters.turns,
                    frames_invalid = self.counters.frames_invalid, frames_dropped = self.counters.frames_dropped, "call finished");
            }
            Err(err) => {
                tracing::error!(call_id = ?self.call_id, error = %err, "call finished without confirmed flush")
            }
        }
        let (code, description) = reason.close();
        if let Some(call_id) = self.call_id {
            self.deps.events.publish(LiveEvent::CallEnded {
                call_id,
                tenant_id: self.params.tenant_id,
                external_id: self.params.external_id.clone(),
                reason: reason.code_name().into(),
                turns: self.counters.turns,
            });
        }
        self.send_close(code, description);
        if let Some(call_id) = self.call_id {
            self.deps.roster.unregister.do_send(Unregister { call_id });
        }
        self.phase = Phase::Done;
        ctx.stop();
    }

    /// The end of a call whose actor stops (or is dropped: a panic in a handler, its arbiter
    /// gone) without finishing: the persister completes the row with `end_reason` on its own
    /// arbiter (committed turns stay; queued ones are written first), the client gets the one
    /// Close (1011), and the registry forgets the call. A no-op once the call finished.
    pub(super) fn backstop(&mut self, end_reason: &str) {
        if !matches!(self.phase, Phase::Live | Phase::Finishing) {
            return;
        }
        tracing::error!(call_id = ?self.call_id, end_reason, "call actor ended without a finished flush");
        if let Some(persister) = &self.persister {
            persister.do_send(FinishCall {
                status: crate::store::CallStatus::Completed,
                end_reason: end_reason.into(),
                ended_at: Utc::now(),
                pending_partial: None,
                dtmf: Some(self.dtmf.clone()).filter(|d| !d.is_empty()),
                recording_url: None,
            });
        }
        // No task spawned here (this may run in `Drop`): a full queue leaves the close to the
        // writer, which sends 1011 once the call's sender is gone.
        let _ = self
            .out
            .try_send(Outbound::Close(1011, "internal error".into()));
        if let Some(call_id) = self.call_id {
            self.deps.roster.unregister.do_send(Unregister { call_id });
        }
        self.phase = Phase::Done;
    }
}
