//! The shell's half of the session: each [`Effect`] the call's session asks for, done with the
//! actor's sockets, children and metrics.

use super::*;
use crate::call::client::ClientEvent;
use crate::call::events::LiveEvent;
use crate::stt::actor::SttAudio;

impl CallActor {
    /// Performs one effect. `ctx` is `None` only for the backstop, whose effects need none.
    pub(super) fn perform(&mut self, effect: Effect, ctx: Option<&mut Context<Self>>) {
        match effect {
            Effect::Send(event) => self.send_event(&event),
            Effect::Publish(event) => self.publish(event),
            Effect::Forward {
                channel,
                pcm,
                millis,
                source,
            } => self.forward(channel, pcm, millis, source),
            Effect::Pong(payload) => {
                let _ = self.out.try_send(Outbound::Pong(payload));
            }
            Effect::Completed { reason, result } => self.completed(&reason, result.as_ref()),
            Effect::Close { code, description } if ctx.is_some() => {
                // After everything queued before it: wait for room rather than drop it.
                let out = self.out.clone();
                actix_web::rt::spawn(async move {
                    let _ = out.send(Outbound::Close(code, description)).await;
                });
            }
            // Without a context (the backstop, maybe in `Drop`) no task is spawned.
            Effect::Close { code, description } | Effect::CloseNow { code, description } => {
                // No task spawned here (this may run in `Drop`): a full queue leaves the close
                // to the writer, which sends 1011 once the call's sender is gone.
                let _ = self.out.try_send(Outbound::Close(code, description));
            }
            Effect::ReleaseClaim => {
                let Claim { external, call_id } = self.claim();
                self.deps
                    .roster
                    .release
                    .do_send(ReleaseClaim { external, call_id });
            }
            Effect::Abandon { end_reason, dtmf } => self.abandon(end_reason, dtmf),
            Effect::Unregister(call_id) => {
                self.deps.roster.unregister.do_send(Unregister { call_id });
            }
            Effect::StartCall
            | Effect::Register(_)
            | Effect::StartChannels(_)
            | Effect::RunFinish { .. }
            | Effect::Stop => {
                let Some(ctx) = ctx else {
                    // Only left over when a handler panicked mid-way: the backstop ends the call.
                    if !matches!(effect, Effect::Stop) {
                        tracing::warn!(?effect, "effect needs the actor's context; skipped");
                    }
                    return;
                };
                match effect {
                    Effect::StartCall => self.start_call(ctx),
                    Effect::Register(call_id) => self.register(call_id, ctx),
                    Effect::StartChannels(call_id) => self.start_channels(call_id, ctx),
                    Effect::RunFinish { reason, dtmf } => self.run_finish(reason, dtmf, ctx),
                    _ => ctx.stop(),
                }
            }
        }
    }

    /// The registry learns the live call's id and address; the call's log lines carry the id.
    fn register(&mut self, call_id: Uuid, ctx: &mut Context<Self>) {
        self.span
            .record("call_id", tracing::field::display(call_id));
        let params = self.session.params();
        self.deps.roster.register.do_send(Register {
            call_id,
            tenant_id: params.tenant_id,
            protocol: params.protocol,
            external_id: params.external_id.clone(),
            addr: ctx.address(),
        });
    }

    fn send_event(&mut self, event: &ClientEvent) {
        if self.out.try_send(Outbound::Text(event.to_json())).is_err() {
            self.client_events_dropped += 1;
        }
    }

    /// Turn events are built for the feed only while someone listens to it.
    fn publish(&self, event: LiveEvent) {
        if matches!(event, LiveEvent::TurnFinal { .. }) && !self.deps.events.listened() {
            return;
        }
        self.deps.events.publish(event);
    }

    /// Audio to its channel's STT actor (a full mailbox drops the frame, counted), and
    /// channel 0 to the recording.
    fn forward(
        &mut self,
        channel: usize,
        pcm: bytes::Bytes,
        millis: u32,
        source: Option<crate::media::SourceAudio>,
    ) {
        if channel == 0 {
            if let Some(recorder) = &mut self.recorder {
                recorder.push(pcm.clone());
            }
        }
        let delivered = self.stt.get(channel).is_some_and(|stt| {
            stt.try_send(SttAudio {
                pcm,
                millis,
                source,
            })
            .is_ok()
        });
        if delivered {
            self.stt_mailbox.sent();
            self.frames_ok.inc();
        } else {
            self.frames_lost.inc();
            self.session
                .handle_input(Input::Dropped, crate::clock::now());
        }
    }
}
