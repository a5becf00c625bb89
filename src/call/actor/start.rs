//! A call's start: the persister, the row created or linked, then live — the STT and
//! transcript actors of each channel, the metrics, the idle watch.

use super::*;
use crate::stt::actor::SttPolicy;
use crate::stt::SttProvider;

impl CallActor {
    pub(super) fn new_call(&self) -> NewCall {
        let p = &self.params;
        NewCall {
            id: p.call_id,
            tenant_id: p.tenant_id,
            campaign_id: p.campaign_id,
            lead_id: p.lead_id,
            phone_number: p.phone_number.clone(),
            external_id: p.external_id.clone(),
            protocol: p.protocol,
            direction: Direction::Inbound,
            started_at: Utc::now(),
            media_metadata: p.metadata.clone(),
        }
    }

    /// Starts the persister and creates or links the call row; media waits meanwhile.
    pub(super) fn start_call(&mut self, ctx: &mut Context<Self>) {
        let (store, roster, me) = (
            self.deps.store.clone(),
            self.deps.roster.clone(),
            ctx.address(),
        );
        let max_unsent = self.deps.max_unsent_turns;
        let persister = Persister::start_in_arbiter(&self.deps.persist_arbiter, move |_| {
            Persister::new(
                store,
                (roster.persister_up, roster.persister_down),
                (me.clone().recipient(), me.recipient()),
                max_unsent,
            )
        });
        self.persister = Some(persister.clone());
        let start = StartCall {
            new_call: self.new_call(),
            patience: self.deps.start_timeout,
        };
        // Media waits (in the socket's buffers) until the call row exists.
        ctx.wait(
            persister
                .send(start)
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(Ok(started)) => act.go_live(started, ctx),
                    Ok(Err(err)) => act.fail_start(err, ctx),
                    Err(err) => act.fail_start(
                        StoreError::InvalidInput(format!("persister unavailable: {err}")),
                        ctx,
                    ),
                }),
        );
    }

    /// A live actor already carries this transport call: refuse without touching its row.
    pub(super) fn refuse_twin(&mut self, ctx: &mut Context<Self>) {
        let message = format!(
            "{} call {} is already live on another stream",
            self.params.protocol,
            crate::text::bounded(self.params.external_id.as_deref().unwrap_or_default(), 64)
        );
        tracing::warn!(%message, "twin stream refused");
        self.send_event(json!({ "type": "error", "message": message }));
        self.send_close(1008, message);
        self.phase = Phase::Done;
        ctx.stop();
    }

    pub(super) fn fail_start(&mut self, err: StoreError, ctx: &mut Context<Self>) {
        let (code, message) = match &err {
            // Another tenant's call and an ended one are refused alike, naming neither.
            StoreError::CallUnavailable => (1008, err.to_string()),
            StoreError::CallNotActive { .. }
            | StoreError::ExternalIdInUse { .. }
            | StoreError::InvalidInput(_) => (4000, err.to_string()),
            _ => (1011, format!("could not start the call: {err}")),
        };
        tracing::warn!(error = %err, code, "call refused at start");
        let Claim { external, call_id } = self.claim();
        self.deps
            .roster
            .release
            .do_send(ReleaseClaim { external, call_id });
        self.send_event(json!({ "type": "error", "message": message }));
        self.send_close(code, message);
        self.phase = Phase::Done;
        ctx.stop();
    }

    pub(super) fn go_live(&mut self, started: StartedCall, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let (call, outcome) = (started.call, started.outcome);
        let call_id = call.id;
        self.call_id = Some(call_id);
        self.span
            .record("call_id", tracing::field::display(call_id));
        self.phase = Phase::Live;
        self.last_audio = crate::clock::now();
        let me = ctx.address();
        self.deps.roster.register.do_send(Register {
            call_id,
            tenant_id: self.params.tenant_id,
            protocol: self.params.protocol,
            external_id: self.params.external_id.clone(),
            addr: me.clone(),
        });
        let Some(persister) = self.persister.clone() else {
            return;
        };
        let provider = match self.deps.stt.pick(started.stt_provider.as_deref()) {
            Ok(provider) => provider,
            Err(reason) => {
                // The row exists: end the call through the normal path, failed, with the reason.
                tracing::error!(%call_id, %reason, "no STT provider for this call");
                self.send_event(json!({ "type": "call", "call_id": call_id, "status": "active" }));
                self.send_event(json!({ "type": "error", "message": reason }));
                return self.begin_finish(EndReason::SttFailed(reason), ctx);
            }
        };
        self.provider = Some(provider.clone());
        if started.record_calls {
            let path = self.deps.recordings_dir.join(format!("{call_id}.wav"));
            self.recorder = Some(crate::call::recorder::Recorder::start(path));
        }
        let mut policy = self.deps.stt_policy.clone();
        policy.api_key = started.stt_api_key;
        self.start_channels(call_id, &provider, &policy, &persister, &me);
        self.count_started();
        tracing::info!(%call_id, tenant_id = %self.params.tenant_id, protocol = %self.params.protocol,
            linked = outcome == LinkOutcome::Linked, "call started");
        self.send_event(json!({
            "type": "call", "call_id": call_id, "status": "active",
            "linked": outcome == LinkOutcome::Linked,
        }));
        self.deps.events.publish(LiveEvent::CallStarted {
            call_id,
            tenant_id: self.params.tenant_id,
            protocol: self.params.protocol.to_string(),
            external_id: self.params.external_id.clone(),
        });
        self.watch_idle(ctx);
    }

    /// One `TranscriptBuffer` and one supervised `SttActor` per audio channel (its speaker).
    fn start_channels(
        &mut self,
        call_id: Uuid,
        provider: &Arc<dyn SttProvider>,
        policy: &SttPolicy,
        persister: &Addr<Persister>,
        me: &Addr<Self>,
    ) {
        for speaker in self.params.speakers.clone() {
            let transcript = TranscriptBuffer::new(
                &speaker,
                provider
                    .promotes_stale_partials()
                    .then_some(self.deps.partial_promote),
                persister.clone().recipient(),
                me.clone().recipient(),
            )
            .start();
            let (provider, policy, links_tb) =
                (provider.clone(), policy.clone(), transcript.clone());
            let (status, gave_up) = (me.clone().recipient(), me.clone().recipient());
            let mailbox = self.stt_mailbox.clone();
            let replay_bytes = self.replay_bytes.clone();
            let live = self.deps.metrics.actors_of("stt");
            self.stt.push(actix::Supervisor::start(move |_| {
                SttActor::new(
                    call_id,
                    provider,
                    policy,
                    SttLinks {
                        transcript: links_tb,
                        status,
                        gave_up,
                        mailbox: mailbox.clone(),
                        replay_bytes: replay_bytes.clone(),
                        live: live.clone(),
                    },
                )
            }));
            self.transcripts.push(transcript);
        }
    }

    /// The call counts as started (`calls_started_total`) and live (`calls_active`).
    fn count_started(&mut self) {
        let metrics = &self.deps.metrics;
        let protocol = self.params.protocol.to_string();
        metrics
            .started
            .get_or_create(&crate::metrics::ProtocolLabels {
                protocol: protocol.clone(),
            })
            .inc();
        let active = metrics
            .active
            .get_or_create(&crate::metrics::ActiveLabels { protocol })
            .clone();
        active.inc();
        self.active_gauge = Some(active);
    }

    /// Ends the call (`idle_timeout`) once no audio arrived for `calls.idle_timeout_secs`.
    fn watch_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = self.deps.idle_timeout;
        ctx.run_interval(Duration::from_millis(250).min(idle), move |act, ctx| {
            if act.phase == Phase::Live
                && crate::clock::now().duration_since(act.last_audio) >= idle
            {
                ctx.notify(Finish(EndReason::IdleTimeout));
            }
        });
    }
}
