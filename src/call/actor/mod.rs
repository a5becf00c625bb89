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

pub mod roster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::end::EndReason;
use super::events::LiveEvent;
use super::limits::CallPermit;
use super::outbound::Outbound;
use super::CallDeps;
use crate::call::persist::{
    CommittedTurn, FinishCall, PersistBacklog, Persister, StartCall, StartedCall, TurnsCommitted,
};
use crate::media::{MediaEvent, MediaInput};
use crate::store::{CompletionOutcome, Direction, LinkOutcome, NewCall, Protocol, StoreError};
use crate::stt::actor::{SttActor, SttAudio, SttFinish, SttGaveUp, SttLinks, SttState, SttStatus};
use crate::transcript::buffer::PersistTurn;
use crate::transcript::buffer::{FlushTranscript, PartialUpdate, TranscriptBuffer};
use roster::{Claim, Register, ReleaseClaim, Unregister};

/// Invalid frames logged per call (all are counted).
const INVALID_LOG_LIMIT: u64 = 5;

pub use crate::media::CallParams;

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
    pub frames_missing: u64,
    pub dtmf: String,
    /// True once audio ran far ahead of real time.
    pub audio_too_fast: bool,
    /// Messages waiting in the call's mailboxes.
    pub mailbox: MailboxDepths,
    /// Audio its STT actors hold to replay after a reconnect, bytes (16 kHz PCM: 32 KB/s).
    pub replay_bytes: i64,
}

/// Messages waiting in a call's mailboxes (actix does not expose mailbox lengths: the call
/// counts what it queues and its actors what they take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MailboxDepths {
    /// Audio frames queued for the STT actors, now and at most so far.
    pub stt_audio: i64,
    pub stt_audio_peak: i64,
    /// Events and the close queued for the client's socket writer.
    pub outbound: i64,
    /// Turns waiting for the database.
    pub persister: i64,
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
    /// Highest turn number acknowledged to this call (numbers come from the database).
    last_seq: i32,
    last_persist_at: Option<DateTime<Utc>>,
    persist_lag: Duration,
    unsent_turns: usize,
    stt_state: Option<SttState>,
    stt_restarts: u32,
    stt_dropped: u64,
    frames_missing: u64,
    audio_ms: u64,
    audio_too_fast: bool,
}

/// Audio this far ahead of the wall clock is flagged (logged once, shown in the snapshot).
const TOO_FAST_AHEAD_MS: u64 = 5_000;

/// One live call.
pub struct CallActor {
    deps: Arc<CallDeps>,
    params: CallParams,
    input: Option<MediaInput>,
    out: mpsc::Sender<Outbound>,
    /// Held while the call lives: counts towards the node's and the tenant's limits.
    _permit: Option<CallPermit>,
    /// The engine's own recording, when the tenant asks for one.
    recorder: Option<super::recorder::Recorder>,
    /// This call's frame counters in `/metrics` (handles resolved once, not per frame).
    frames_ok: prometheus_client::metrics::counter::Counter,
    frames_bad: prometheus_client::metrics::counter::Counter,
    frames_lost: prometheus_client::metrics::counter::Counter,
    /// Frames waiting in this call's STT actors' mailboxes.
    stt_mailbox: crate::metrics::mailbox::Depth,
    /// Replay-buffer bytes of this call's STT actors.
    replay_bytes: crate::metrics::mailbox::Bytes,
    /// Finals each speaker's transcript buffer has assembled (from its partial updates).
    finals_assembled: std::collections::HashMap<String, u32>,
    /// This actor in `callengine_actors{kind="call"}` (undone on drop).
    live: prometheus_client::metrics::gauge::Gauge,
    /// Counted in `calls_active` (undone exactly once at the end).
    active_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    /// One span per call (`call_id`, `tenant_id`, `protocol`), entered by every handler, so
    /// each log line of the call carries them (JSON logs: under `span`).
    span: tracing::Span,
    dtmf: String,
    phase: Phase,
    call_id: Option<Uuid>,
    created: Instant,
    last_audio: Instant,
    persister: Option<Addr<Persister>>,
    /// One transcript buffer and one STT stream per audio channel.
    transcripts: Vec<Addr<TranscriptBuffer>>,
    stt: Vec<Addr<SttActor>>,
    provider: Option<Arc<dyn crate::stt::SttProvider>>,
    counters: Counters,
}

impl CallActor {
    /// A call actor for an accepted media session: `input` is the transport's events, `out`
    /// its writer.
    pub fn new(
        deps: Arc<CallDeps>,
        params: CallParams,
        input: MediaInput,
        out: mpsc::Sender<Outbound>,
        permit: Option<CallPermit>,
    ) -> Self {
        let now = crate::clock::now();
        let frame_counter = |result: &str| {
            deps.metrics
                .frames
                .get_or_create(&crate::metrics::FrameLabels {
                    protocol: params.protocol.to_string(),
                    result: result.into(),
                })
                .clone()
        };
        let (frames_ok, frames_bad, frames_lost) = (
            frame_counter("ok"),
            frame_counter("invalid"),
            frame_counter("dropped"),
        );
        let span = tracing::info_span!(
            "call",
            call_id = tracing::field::Empty,
            tenant_id = %params.tenant_id,
            protocol = %params.protocol,
        );
        let stt_mailbox = crate::metrics::mailbox::Depth::new(
            deps.metrics
                .mailbox_depth
                .get_or_create(&crate::metrics::MailboxLabels {
                    mailbox: "stt_audio".into(),
                })
                .clone(),
        );
        let live = deps.metrics.actors_of("call");
        live.inc();
        let replay_bytes =
            crate::metrics::mailbox::Bytes::new(deps.metrics.replay_buffer_bytes.clone());
        Self {
            frames_ok,
            frames_bad,
            frames_lost,
            stt_mailbox,
            replay_bytes,
            finals_assembled: std::collections::HashMap::new(),
            live,
            active_gauge: None,
            span,
            deps,
            params,
            input: Some(input),
            out,
            _permit: permit,
            recorder: None,
            dtmf: String::new(),
            phase: Phase::Starting,
            call_id: None,
            created: now,
            last_audio: now,
            persister: None,
            transcripts: Vec::new(),
            stt: Vec::new(),
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
            media_metadata: p.metadata.clone(),
        }
    }

    fn go_live(&mut self, started: StartedCall, ctx: &mut Context<Self>) {
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
            self.recorder = Some(super::recorder::Recorder::start(path));
        }
        let mut policy = self.deps.stt_policy.clone();
        policy.api_key = started.stt_api_key;
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
        let idle = self.deps.idle_timeout;
        ctx.run_interval(Duration::from_millis(250).min(idle), move |act, ctx| {
            if act.phase == Phase::Live
                && crate::clock::now().duration_since(act.last_audio) >= idle
            {
                ctx.notify(Finish(EndReason::IdleTimeout));
            }
        });
    }

    /// Starts the persister and creates or links the call row; media waits meanwhile.
    fn start_call(&mut self, ctx: &mut Context<Self>) {
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
    fn refuse_twin(&mut self, ctx: &mut Context<Self>) {
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

    fn fail_start(&mut self, err: StoreError, ctx: &mut Context<Self>) {
        let (code, message) = match &err {
            // Another tenant's call and an ended one are refused alike, naming neither.
            StoreError::CallUnavailable => (1008, err.to_string()),
            StoreError::CallNotActive { .. }
            | StoreError::ExternalIdInUse { .. }
            | StoreError::InvalidInput(_) => (4000, err.to_string()),
            _ => (1011, format!("could not start the call: {err}")),
        };
        tracing::warn!(error = %err, code, "call refused at start");
        self.deps.roster.release.do_send(ReleaseClaim {
            external: self
                .params
                .external_id
                .clone()
                .map(|id| (self.params.protocol, id)),
            call_id: self.params.call_id,
        });
        self.send_event(json!({ "type": "error", "message": message }));
        self.send_close(code, message);
        self.phase = Phase::Done;
        ctx.stop();
    }

    fn on_audio(
        &mut self,
        channel: usize,
        pcm: bytes::Bytes,
        source: Option<crate::media::SourceAudio>,
    ) {
        if self.phase != Phase::Live {
            return;
        }
        self.counters.frames_in += 1;
        let millis = (pcm.len() / 32) as u32;
        let now = crate::clock::now();
        self.last_audio = now;
        self.counters.audio_ms += u64::from(millis);
        if !self.counters.audio_too_fast && channel == 0 {
            let wall = now.duration_since(self.created).as_millis() as u64;
            if self.counters.audio_ms > wall + TOO_FAST_AHEAD_MS {
                self.counters.audio_too_fast = true;
                tracing::warn!(call_id = ?self.call_id, audio_ms = self.counters.audio_ms, wall_ms = wall,
                    "audio is arriving far faster than real time");
            }
        }
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
            self.counters.frames_dropped += 1;
            self.frames_lost.inc();
        }
    }

    fn on_media(&mut self, event: MediaEvent, ctx: &mut Context<Self>) {
        match event {
            MediaEvent::Audio {
                channel,
                pcm,
                source,
            } => self.on_audio(channel, pcm, source),
            MediaEvent::Invalid(reason) => {
                self.counters.frames_in += 1;
                self.counters.frames_invalid += 1;
                self.frames_bad.inc();
                if self.counters.frames_invalid <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %reason, "invalid audio skipped");
                }
            }
            MediaEvent::Gap(missing) => self.counters.frames_missing += missing,
            MediaEvent::Ignored(what) => {
                self.counters.text_ignored += 1;
                if self.counters.text_ignored <= INVALID_LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %what, "message ignored");
                }
            }
            MediaEvent::Dtmf(digit) => {
                if self.dtmf.len() < 256 {
                    self.dtmf.push_str(&digit);
                }
                tracing::info!(call_id = ?self.call_id, %digit, "DTMF");
            }
            MediaEvent::Ping(payload) => {
                let _ = self.out.try_send(Outbound::Pong(payload));
            }
            MediaEvent::Stop => self.begin_finish(EndReason::ClientStop, ctx),
            MediaEvent::Closed => self.begin_finish(EndReason::ClientClosed, ctx),
            MediaEvent::Lost(detail) => {
                tracing::info!(call_id = ?self.call_id, %detail, "connection lost");
                self.begin_finish(EndReason::ConnectionLost, ctx)
            }
            MediaEvent::ProtocolError { too_big, detail } => {
                tracing::warn!(call_id = ?self.call_id, %detail, "media protocol error");
                self.begin_finish(
                    EndReason::ProtocolError {
                        message_too_big: too_big,
                        detail,
                    },
                    ctx,
                );
            }
        }
    }

    fn begin_finish(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
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

    fn complete(
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
    fn backstop(&mut self, end_reason: &str) {
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

    /// Tells the client and the event feed that `turn` is durable (only after its commit: a
    /// client's `final` means the turn is stored).
    fn announce_final(&mut self, committed: &CommittedTurn) {
        let CommittedTurn { seq, turn } = committed;
        if let (true, Some(call_id)) = (self.deps.events.listened(), self.call_id) {
            self.deps.events.publish(LiveEvent::TurnFinal {
                call_id,
                tenant_id: self.params.tenant_id,
                external_id: self.params.external_id.clone(),
                seq: i64::from(*seq),
                speaker: turn.speaker.clone(),
                text: turn.text.clone(),
                start_ms: turn.start_ms,
                end_ms: turn.end_ms,
            });
        }
        self.send_event(json!({
            "type": "final",
            "seq": seq,
            "text": turn.text,
            "speaker": turn.speaker,
            "start_ms": turn.start_ms,
            "end_ms": turn.end_ms,
        }));
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
            frames_missing: c.frames_missing,
            dtmf: self.dtmf.clone(),
            audio_too_fast: c.audio_too_fast,
            mailbox: MailboxDepths {
                stt_audio: self.stt_mailbox.get(),
                stt_audio_peak: self.stt_mailbox.peak(),
                outbound: (self.out.max_capacity() - self.out.capacity()) as i64,
                persister: c.unsent_turns as i64,
            },
            replay_bytes: self.replay_bytes.get(),
        }
    }
}

impl Drop for CallActor {
    fn drop(&mut self) {
        // Last resort: a panic in a handler is caught by tokio for this actor's task alone, and
        // actix runs `stopping` as it drops the context (the backstop then ends the call as
        // `call_actor_stopped`); should an actor ever be dropped without it, end it here.
        self.backstop("call_actor_lost");
        self.live.dec();
    }
}

/// Fault hook for the supervision test: the call's handler panics. Only code in this process
/// holding the call's address can send it; nothing on the network maps to it.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

impl Handler<InjectPanic> for CallActor {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        panic!("fault injected into call {:?}", self.call_id);
    }
}

impl Actor for CallActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        if let Some(input) = self.input.take() {
            ctx.add_stream(input);
        }
        // One actor per call: a second stream for a live transport id, or one linking into a
        // call another stream carries, is refused before it touches the row (media waits
        // meanwhile).
        let claim = Claim {
            external: self
                .params
                .external_id
                .clone()
                .map(|id| (self.params.protocol, id)),
            call_id: self.params.call_id,
        };
        if claim.external.is_none() && claim.call_id.is_none() {
            return self.start_call(ctx);
        }
        ctx.wait(
            self.deps
                .roster
                .claim
                .send(claim)
                .into_actor(self)
                .map(|claimed, act, ctx| match claimed {
                    Ok(true) => act.start_call(ctx),
                    _ => act.refuse_twin(ctx),
                }),
        );
    }
    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        let _span = self.span.clone().entered();
        if let Some(active) = self.active_gauge.take() {
            active.dec();
        }
        self.backstop("call_actor_stopped");
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Frames its STT actors never took leave the node's mailbox figure with the call.
        self.stt_mailbox.release();
    }
}

impl StreamHandler<MediaEvent> for CallActor {
    fn handle(&mut self, event: MediaEvent, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.on_media(event, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The transport ended without saying so (TCP reset, network loss).
        self.begin_finish(EndReason::ConnectionLost, ctx);
    }
}

impl Handler<Finish> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: Finish, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.begin_finish(msg.0, ctx);
    }
}

impl Handler<PartialUpdate> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PartialUpdate, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        // The number this turn should get: a hint (another writer of the call may take it
        // first); the `final` carries the number the database gave. Finals this call assembled
        // but the database has not acknowledged yet come before it.
        self.finals_assembled
            .insert(msg.speaker.clone(), msg.finals);
        let assembled: u32 = self.finals_assembled.values().sum();
        let pending = i64::from(assembled) - self.counters.turns as i64;
        let expected =
            (i64::from(self.counters.last_seq) + 1 + pending.max(0)).max(i64::from(assembled) + 1);
        self.send_event(json!({
            "type": "partial", "seq": expected, "speaker": msg.speaker, "text": msg.text,
        }));
    }
}

impl Handler<TurnsCommitted> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: TurnsCommitted, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.counters.turns += msg.turns.len() as u64;
        self.counters.last_persist_at = Some(Utc::now());
        self.counters.persist_lag = msg.lag;
        let metrics = &self.deps.metrics;
        metrics.turns_persisted.inc_by(msg.turns.len() as u64);
        metrics.persist_lag_seconds.observe(msg.lag.as_secs_f64());
        metrics
            .unsent_turns
            .inc_by(msg.unsent as i64 - self.counters.unsent_turns as i64);
        self.counters.unsent_turns = msg.unsent;
        for turn in &msg.turns {
            self.counters.last_seq = self.counters.last_seq.max(turn.seq);
            self.announce_final(turn);
        }
    }
}

impl Handler<PersistBacklog> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PersistBacklog, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.deps
            .metrics
            .unsent_turns
            .inc_by(msg.unsent as i64 - self.counters.unsent_turns as i64);
        self.counters.unsent_turns = msg.unsent;
    }
}

impl Handler<SttStatus> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttStatus, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.counters.stt_state = Some(msg.state);
        if msg.restarts > self.counters.stt_restarts {
            let provider = self.provider.as_ref().map_or("none", |p| p.name());
            self.deps
                .metrics
                .stt_restarts
                .get_or_create(&crate::metrics::ProviderLabels {
                    provider: provider.into(),
                })
                .inc_by(u64::from(msg.restarts - self.counters.stt_restarts));
        }
        self.counters.stt_restarts = msg.restarts;
        self.counters.stt_dropped = msg.dropped_frames;
    }
}

impl Handler<SttGaveUp> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttGaveUp, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.begin_finish(EndReason::SttFailed(msg.reason), ctx);
    }
}

impl Handler<Snapshot> for CallActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}
