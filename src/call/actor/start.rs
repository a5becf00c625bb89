//! A call's start: the persister, the row created or linked, then live — the STT and
//! transcript actors of each channel, the metrics, the idle watch.

use std::time::Duration;

use super::*;
use crate::call::persist::{StartCall, StartedCall};
use crate::call::session::Started;
use crate::store::{Direction, LinkOutcome, NewCall, StoreError};
use crate::stt::actor::{SttLinks, SttPolicy};
use crate::stt::SttProvider;

impl CallActor {
    pub(super) fn new_call(&self) -> NewCall {
        let p = self.session.params();
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
                .map(|result, act, ctx| {
                    let started = match result {
                        Ok(Ok(started)) => Ok(act.started(started)),
                        Ok(Err(err)) => Err(err),
                        Err(err) => Err(StoreError::InvalidInput(format!(
                            "persister unavailable: {err}"
                        ))),
                    };
                    act.feed(Input::Started(started), ctx)
                }),
        );
    }

    /// The row exists: keep what the tenant chose (its STT provider, key and recording).
    fn started(&mut self, started: StartedCall) -> Started {
        let stt = match self.deps.stt.pick(started.stt_provider.as_deref()) {
            Ok(provider) => {
                self.provider = Some(provider);
                Ok(())
            }
            Err(reason) => Err(reason),
        };
        self.tenant = TenantChoices {
            stt_api_key: started.stt_api_key,
            record_calls: started.record_calls,
        };
        Started {
            call_id: started.call.id,
            linked: started.outcome == LinkOutcome::Linked,
            stt,
        }
    }

    /// Live: the recording, each channel's streams, the counts, the idle watch.
    pub(super) fn start_channels(&mut self, call_id: Uuid, ctx: &mut Context<Self>) {
        let (Some(persister), Some(provider)) = (self.persister.clone(), self.provider.clone())
        else {
            return;
        };
        if self.tenant.record_calls {
            let path = self.deps.recordings_dir.join(format!("{call_id}.wav"));
            self.recorder = Some(crate::call::recorder::Recorder::start(path));
        }
        let mut policy = self.deps.stt_policy.clone();
        policy.api_key = self.tenant.stt_api_key.take();
        let me = ctx.address();
        self.spawn_channels(call_id, &provider, &policy, &persister, &me);
        self.count_started();
        let params = self.session.params();
        tracing::info!(%call_id, tenant_id = %params.tenant_id, protocol = %params.protocol, "call started");
        self.watch_idle(ctx);
    }

    /// One `TranscriptBuffer` and one supervised `SttActor` per audio channel (its speaker).
    fn spawn_channels(
        &mut self,
        call_id: Uuid,
        provider: &Arc<dyn SttProvider>,
        policy: &SttPolicy,
        persister: &Addr<Persister>,
        me: &Addr<Self>,
    ) {
        for speaker in self.session.params().speakers.clone() {
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
        let protocol = self.session.params().protocol.to_string();
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

    /// Ticks the session's idle rule (`calls.idle_timeout_secs` without audio ends the call).
    fn watch_idle(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_millis(250).min(self.deps.idle_timeout);
        ctx.run_interval(every, |act, ctx| act.feed(Input::Tick, ctx));
    }
}
