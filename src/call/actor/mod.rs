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

mod finish;
mod media;
pub mod roster;
mod snapshot;
mod start;

pub use snapshot::{CallSnapshot, MailboxDepths, Snapshot};

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

    /// What this call reserves in the registry: its transport id and the call it links to.
    fn claim(&self) -> Claim {
        Claim {
            external: self
                .params
                .external_id
                .clone()
                .map(|id| (self.params.protocol, id)),
            call_id: self.params.call_id,
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
        let claim = self.claim();
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
