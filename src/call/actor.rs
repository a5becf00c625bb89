//! The `CallActor`: one per call. Owns the media session, the call's children (`SttActor` under
//! a supervisor, `TranscriptBuffer`, `Persister`), its lifecycle and its counters.
//!
//! Every end of a call goes through one [`Finish`] message and one finish sequence: finalize
//! STT (bounded), flush the transcript buffer's pending partial, have the persister drain its
//! queue and complete the call in one transaction (bounded wait; the persister keeps going on
//! its own arbiter if the database is slow), then send the single Close frame and stop. The
//! sequence runs as a spawned future rather than under `ctx.wait`, so commit acknowledgements
//! that arrive meanwhile still reach the client before the close. A second `Finish` is ignored;
//! `stopping` is a synchronous backstop for an actor stopped any other way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{Message as WsMessage, MessageStream, ProtocolError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::end::EndReason;
use super::outbound::{spawn_writer, Outbound};
use super::registry::{Register, Unregister};
use super::CallDeps;
use crate::audio::pcm::{validate_frame, PcmFormat};
use crate::persist::{
    FinishCall, PersistBacklog, Persister, StartCall, StartedCall, TurnsCommitted,
};
use crate::store::{CompletionOutcome, Direction, LinkOutcome, NewCall, Protocol, StoreError};
use crate::stt::actor::{SttActor, SttAudio, SttFinish, SttGaveUp, SttLinks, SttState, SttStatus};
use crate::transcript::buffer::{FlushTranscript, PartialUpdate, TranscriptBuffer};

/// Invalid frames logged per call (all are counted).
const INVALID_LOG_LIMIT: u64 = 5;

/// What the transport told us about a call.
#[derive(Debug, Clone)]
pub struct CallParams {
    pub call_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub phone_number: Option<String>,
    pub external_id: Option<String>,
    pub protocol: Protocol,
    /// Role of the audio's speaker (`contact` for the person called or calling in).
    pub speaker: String,
}

/// End the call (any reason). Idempotent.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Finish(pub EndReason);

/// The call's live figures.
#[derive(Message)]
#[rtype(result = "CallSnapshot")]
pub struct Snapshot;

/// Live figures of one call actor, for the operator surface.
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    pub call_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub protocol: Protocol,
    pub external_id: Option<String>,
    pub state: &'static str,
    pub uptime_ms: u64,
    pub frames_in: u64,
    pub frames_invalid: u64,
    pub frames_dropped: u64,
    pub text_ignored: u64,
    pub client_events_dropped: u64,
    pub stt_provider: &'static str,
    pub stt_state: &'static str,
    pub stt_restarts: u32,
    pub turns: u64,
    pub last_persist_at: Option<DateTime<Utc>>,
    pub persist_lag_ms: u64,
    pub unsent_turns: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Live,
    Finishing,
    Done,
}

#[derive(Debug, Default)]
struct Counters {
    frames_in: u64,
    frames_invalid: u64,
    frames_dropped: u64,
    text_ignored: u64,
    client_events_dropped: u64,
    turns: u64,
    last_persist_at: Option<DateTime<Utc>>,
    persist_lag: Duration,
    unsent_turns: usize,
    stt_state: Option<SttState>,
    stt_restarts: u32,
    stt_dropped: u64,
}

/// One live call.
pub struct CallActor {
    deps: Arc<CallDeps>,
    params: CallParams,
    stream: Option<MessageStream>,
    out: mpsc::Sender<Outbound>,
    phase: Phase,
    call_id: Option<Uuid>,
    created: Instant,
    last_audio: Instant,
    persister: Option<Addr<Persister>>,
    transcript: Option<Addr<TranscriptBuffer>>,
    stt: Option<Addr<SttActor>>,
    provider: Option<Arc<dyn crate::stt::SttProvider>>,
    counters: Counters,
}

impl CallActor {
    /// A call actor for an accepted WebSocket session.
    pub fn new(
        deps: Arc<CallDeps>,
        params: CallParams,
        session: actix_ws::Session,
        stream: MessageStream,
    ) -> Self {
        let now = crate::clock::now();
        Self {
            deps,
            params,
            stream: Some(stream),
            out: spawn_writer(session),
            phase: Phase::Starting,
            call_id: None,
            created: now,
            last_audio: now,
            persister: None,
            transcript: None,
            stt: None,
            provider: None,
            counters: Counters::default(),
        }
    }

    fn send_event(&mut self, event: serde_json::Value) {
        if self
            .out
            .try_send(Outbound::Text(event.to_string()))
            .is_err()
        {
            self.counters.client_events_dropped += 1;
        }
    }

    /// Sends the single Close frame (after everything queued before it).
    fn send_close(&mut self, code: u16, description: String) {
        let out = self.out.clone();
        actix_web::rt::spawn(async move {
            let _ = out.send(Outbound::Close(code, description)).await;
        });
    }

    fn new_call(&self) -> NewCall {
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
        }
    }

    fn go_live(&mut self, started: StartedCall, ctx: &mut Context<Self>) {
        let (call, outcome) = (started.call, started.outcome);
        let call_id = call.id;
        self.call_id = Some(call_id);
        self.phase = Phase::Live;
        self.last_audio = crate::clock::now();
        let me = ctx.address();
        self.deps.registry.do_send(Register {
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
        let transcript = TranscriptBuffer::new(
            &self.params.speaker,
            provider
                .promotes_stale_partials()
                .then_some(self.deps.partial_promote),
            persister.recipient(),
            me.clone().recipient(),
        )
        .start();
        let (provider, policy, links_tb) =
            (provider, self.deps.stt_policy.clone(), transcript.clone());
        let (status, gave_up) = (me.clone().recipient(), me.recipient());
        self.stt = Some(actix::Supervisor::start(move |_| {
            SttActor::new(
                call_id,
                provider,
                policy,
                SttLinks {
                    transcript: links_tb,
                    status,
                    gave_up,
                },
            )
        }));
        self.transcript = Some(transcript);
        tracing::info!(%call_id, tenant_id = %self.params.tenant_id, protocol = %self.params.protocol,
            linked = outcome == LinkOutcome::Linked, "call started");
        self.send_event(json!({
            "type": "call", "call_id": call_id, "status": "active",
            "linked": outcome == LinkOutcome::Linked,
        }));
        let idle = self.deps.idle_timeout;
        ctx.run_interval(Duration::from_millis(250).min(idle), move |act, ctx| {
            if act.phase == Phase::Live
                && crate::clock::now().duration_since(act.last_audio) >= idle
            {
                ctx.notify(Finish(EndReason::IdleTimeout));
            }
        });
    }

    fn fail_start(&mut self, err: StoreError, ctx: &mut Context<Self>) {
        let (code, message) = match &err {
            StoreError::CallNotActive { .. }
            | StoreError::ExternalIdInUse { .. }
            | StoreError::InvalidInput(_) => (4000, err.to_string()),
            _ => (1011, format!("could not start the call: {err}")),
        };
        tracing::warn!(error = %err, code, "call refused at start");
        self.send_event(json!({ "type": "error", "message": message }));
        self.send_close(code, message);
        self.phase = Phase::Done;
        ctx.stop();
    }

    fn on_binary(&mut self, data: Bytes) {
        if self.phase != Phase::Live {
            return;
        }
        self.counters.frames_in += 1;
        match validate_frame(PcmFormat::WIDEBAND, &data) {
            Err(reason) => {
                self.counters.frames_invalid += 1;
                if self.counters.frames_invalid <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %reason, "invalid audio frame skipped");
                }
            }
            Ok(millis) => {
                self.last_audio = crate::clock::now();
                let delivered = self
                    .stt
                    .as_ref()
                    .is_some_and(|stt| stt.try_send(SttAudio { pcm: data, millis }).is_ok());
                if !delivered {
                    self.counters.frames_dropped += 1;
                }
            }
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let kind = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("type")
                    .or_else(|| v.get("event"))
                    .and_then(|t| t.as_str())
                    .map(String::from)
            });
        match kind.as_deref() {
            Some("stop") => ctx.notify(Finish(EndReason::ClientStop)),
            _ => {
                self.counters.text_ignored += 1;
                if self.counters.text_ignored <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, len = text.len(), "unknown text message ignored");
                }
            }
        }
    }

    fn begin_finish(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Finishing | Phase::Done) {
            return;
        }
        self.phase = Phase::Finishing;
        let ended_at = Utc::now();
        let (stt, transcript, persister) = (
            self.stt.clone(),
            self.transcript.clone(),
            self.persister.clone(),
        );
        let finish_timeout = self.deps.finish_timeout;
        let (status, end_reason) = (reason.status(), reason.code_name().to_string());
        let sequence = async move {
            if let Some(stt) = stt {
                let _ = stt.send(SttFinish).await;
            }
            let pending_partial = match transcript {
                Some(tb) => tb.send(FlushTranscript).await.ok().flatten(),
                None => None,
            };
            let persister = persister.ok_or_else(|| "no persister".to_string())?;
            let finish = FinishCall {
                status,
                end_reason,
                ended_at,
                pending_partial,
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

    fn complete(
        &mut self,
        reason: EndReason,
        result: Result<CompletionOutcome, String>,
        ctx: &mut Context<Self>,
    ) {
        match &result {
            Ok(outcome) => {
                let call = outcome.call();
                tracing::info!(call_id = %call.id, status = %call.status, end_reason = reason.code_name(),
                    duration_seconds = ?call.duration_seconds, turns = self.counters.turns,
                    frames_invalid = self.counters.frames_invalid, frames_dropped = self.counters.frames_dropped, "call finished");
            }
            Err(err) => {
                tracing::error!(call_id = ?self.call_id, error = %err, "call finished without confirmed flush")
            }
        }
        let (code, description) = reason.close();
        self.send_close(code, description);
        if let Some(call_id) = self.call_id {
            self.deps.registry.do_send(Unregister { call_id });
        }
        self.phase = Phase::Done;
        ctx.stop();
    }

    fn snapshot(&self) -> CallSnapshot {
        let c = &self.counters;
        CallSnapshot {
            call_id: self.call_id,
            tenant_id: self.params.tenant_id,
            protocol: self.params.protocol,
            external_id: self.params.external_id.clone(),
            state: match self.phase {
                Phase::Starting => "starting",
                Phase::Live => "live",
                Phase::Finishing => "finishing",
                Phase::Done => "done",
            },
            uptime_ms: crate::clock::now().duration_since(self.created).as_millis() as u64,
            frames_in: c.frames_in,
            frames_invalid: c.frames_invalid,
            frames_dropped: c.frames_dropped + c.stt_dropped,
            text_ignored: c.text_ignored,
            client_events_dropped: c.client_events_dropped,
            stt_provider: self.provider.as_ref().map_or("none", |p| p.name()),
            stt_state: c.stt_state.unwrap_or(SttState::Connecting).as_str(),
            stt_restarts: c.stt_restarts,
            turns: c.turns,
            last_persist_at: c.last_persist_at,
            persist_lag_ms: c.persist_lag.as_millis() as u64,
            unsent_turns: c.unsent_turns,
        }
    }
}

impl Actor for CallActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        let (store, registry, me) = (
            self.deps.store.clone(),
            self.deps.registry.clone(),
            ctx.address(),
        );
        let max_unsent = self.deps.max_unsent_turns;
        let persister = Persister::start_in_arbiter(&self.deps.persist_arbiter, move |_| {
            Persister::new(
                store,
                registry,
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

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if matches!(self.phase, Phase::Live | Phase::Finishing) {
            // Backstop: stopped without completing the finish sequence. Hand the end to the
            // persister synchronously; it finishes the call on its own arbiter.
            tracing::error!(call_id = ?self.call_id, "call actor stopping without a finished flush");
            if let Some(persister) = &self.persister {
                persister.do_send(FinishCall {
                    status: crate::store::CallStatus::Completed,
                    end_reason: "call_actor_stopped".into(),
                    ended_at: Utc::now(),
                    pending_partial: None,
                });
            }
            self.send_close(1011, "internal error".into());
            if let Some(call_id) = self.call_id {
                self.deps.registry.do_send(Unregister { call_id });
            }
            self.phase = Phase::Done;
        }
        Running::Stop
    }
}

impl StreamHandler<Result<WsMessage, ProtocolError>> for CallActor {
    fn handle(&mut self, item: Result<WsMessage, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(WsMessage::Binary(data)) => self.on_binary(data),
            Ok(WsMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(WsMessage::Ping(payload)) => {
                let _ = self.out.try_send(Outbound::Pong(payload));
            }
            Ok(WsMessage::Close(_)) => self.begin_finish(EndReason::ClientClosed, ctx),
            Ok(WsMessage::Pong(_) | WsMessage::Nop) => {}
            Ok(WsMessage::Continuation(_)) => self.counters.text_ignored += 1,
            // A reset connection surfaces as an I/O error: the caller is gone, not misbehaving.
            Err(ProtocolError::Io(err)) => {
                tracing::info!(call_id = ?self.call_id, error = %err, "connection lost");
                self.begin_finish(EndReason::ConnectionLost, ctx)
            }
            Err(err) => {
                tracing::warn!(call_id = ?self.call_id, error = %err, "WebSocket protocol error");
                let message_too_big = matches!(err, ProtocolError::Overflow);
                self.begin_finish(
                    EndReason::ProtocolError {
                        message_too_big,
                        detail: err.to_string(),
                    },
                    ctx,
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The socket ended without a Close frame (TCP reset, network loss).
        self.begin_finish(EndReason::ConnectionLost, ctx);
    }
}

impl Handler<Finish> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: Finish, ctx: &mut Self::Context) {
        self.begin_finish(msg.0, ctx);
    }
}

impl Handler<PartialUpdate> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PartialUpdate, _ctx: &mut Self::Context) {
        self.send_event(json!({ "type": "partial", "seq": msg.seq, "text": msg.text }));
    }
}

impl Handler<TurnsCommitted> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: TurnsCommitted, _ctx: &mut Self::Context) {
        self.counters.turns += msg.turns.len() as u64;
        self.counters.last_persist_at = Some(Utc::now());
        self.counters.persist_lag = msg.lag;
        self.counters.unsent_turns = msg.unsent;
        for (seq, text) in msg.turns {
            // Sent only after the commit: a client's `final` means the turn is durable.
            self.send_event(json!({ "type": "final", "seq": seq, "text": text }));
        }
    }
}

impl Handler<PersistBacklog> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PersistBacklog, _ctx: &mut Self::Context) {
        self.counters.unsent_turns = msg.unsent;
    }
}

impl Handler<SttStatus> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttStatus, _ctx: &mut Self::Context) {
        self.counters.stt_state = Some(msg.state);
        self.counters.stt_restarts = msg.restarts;
        self.counters.stt_dropped = msg.dropped_frames;
    }
}

impl Handler<SttGaveUp> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttGaveUp, ctx: &mut Self::Context) {
        self.begin_finish(EndReason::SttFailed(msg.reason), ctx);
    }
}

impl Handler<Snapshot> for CallActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}
