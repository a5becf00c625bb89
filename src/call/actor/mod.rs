//! The `CallActor`: one per call, the shell around its [`CallSession`]. It owns the media
//! session and the call's children (`SttActor` under a supervisor, `TranscriptBuffer`,
//! `Persister`); every rule of the call's life — start, audio accounting, idle watch, the one
//! finish, the one Close, the backstop — is the session's, and the actor feeds it what happens
//! ([`Input`]) and performs what it answers ([`Effect`], in `perform.rs`).
//!
//! Every end of a call goes through one [`Finish`] message and one finish sequence: finalize
//! STT (bounded), flush the transcript buffer's pending partial, have the persister drain its
//! queue and complete the call in one transaction (bounded wait; the persister keeps going on
//! its own arbiter if the database is slow), then send the single Close frame and stop. The
//! sequence runs as a spawned future rather than under `ctx.wait`, so commit acknowledgements
//! that arrive meanwhile still reach the client before the close. A second `Finish` is ignored;
//! `stopping` is a synchronous backstop for an actor stopped any other way.

mod finish;
mod perform;
pub mod roster;
mod snapshot;
mod start;

pub use snapshot::{CallSnapshot, MailboxDepths, Snapshot};

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::end::EndReason;
use super::limits::CallPermit;
use super::outbound::Outbound;
use super::session::{CallSession, Effect, Input};
use super::CallDeps;
use crate::call::persist::{FinishCall, PersistBacklog, Persister, TurnsCommitted};
use crate::media::{MediaEvent, MediaInput};
use crate::store::Protocol;
use crate::stt::actor::{SttActor, SttGaveUp, SttStatus};
use crate::transcript::buffer::{PartialUpdate, TranscriptBuffer};
use roster::{Claim, Register, ReleaseClaim, Unregister};

pub use crate::media::CallParams;

/// End the call (any reason). Idempotent.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Finish(pub EndReason);

/// What the persister said about the tenant when the row was made, used once the call goes
/// live.
#[derive(Default)]
struct TenantChoices {
    stt_api_key: Option<crate::secret::Secret>,
    record_calls: bool,
}

/// One live call.
pub struct CallActor {
    deps: Arc<CallDeps>,
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
    /// This actor in `callengine_actors{kind="call"}` (undone on drop).
    live: prometheus_client::metrics::gauge::Gauge,
    /// Counted in `calls_active` (undone exactly once at the end).
    active_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    /// One span per call (`call_id`, `tenant_id`, `protocol`), entered by every handler, so
    /// each log line of the call carries them (JSON logs: under `span`).
    span: tracing::Span,
    /// The call's lifecycle: every decision is made there.
    session: CallSession,
    tenant: TenantChoices,
    /// Events the client's writer had no room for.
    client_events_dropped: u64,
    /// What `callengine_unsent_turns` holds for this call.
    unsent_gauged: usize,
    persister: Option<Addr<Persister>>,
    /// One transcript buffer and one STT stream per audio channel.
    transcripts: Vec<Addr<TranscriptBuffer>>,
    stt: Vec<Addr<SttActor>>,
    provider: Option<Arc<dyn crate::stt::SttProvider>>,
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
            live,
            active_gauge: None,
            span,
            session: CallSession::new(params, deps.idle_timeout, now),
            tenant: TenantChoices::default(),
            client_events_dropped: 0,
            unsent_gauged: 0,
            deps,
            input: Some(input),
            out,
            _permit: permit,
            recorder: None,
            persister: None,
            transcripts: Vec::new(),
            stt: Vec::new(),
            provider: None,
        }
    }

    /// What this call reserves in the registry: its transport id and the call it links to.
    fn claim(&self) -> Claim {
        let params = self.session.params();
        Claim {
            external: params.external_id.clone().map(|id| (params.protocol, id)),
            call_id: params.call_id,
        }
    }

    /// Feeds the session what happened now and performs what it answers, in the call's span.
    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.session.handle_input(input, crate::clock::now());
        while let Some(effect) = self.session.poll_output() {
            self.perform(effect, Some(ctx));
        }
        self.gauge_unsent();
    }

    /// Keeps this call's share of `callengine_unsent_turns` equal to its session's count.
    fn gauge_unsent(&mut self) {
        let unsent = self.session.counters().unsent_turns;
        if unsent != self.unsent_gauged {
            self.deps
                .metrics
                .unsent_turns
                .inc_by(unsent as i64 - self.unsent_gauged as i64);
            self.unsent_gauged = unsent;
        }
    }

    /// The backstop for an actor that stops (or is dropped) without finishing: no context
    /// (this may run in `Drop`), so only effects that need none can follow.
    fn backstop(&mut self, end_reason: &'static str) {
        let _span = self.span.clone().entered();
        self.session
            .handle_input(Input::Stopped(end_reason), crate::clock::now());
        while let Some(effect) = self.session.poll_output() {
            self.perform(effect, None);
        }
        // The node's gauges let go of this call whichever way it ended.
        self.gauge_unsent();
        if let Some(active) = self.active_gauge.take() {
            active.dec();
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
        panic!("fault injected into call {:?}", self.session.call_id());
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
            return self.feed(Input::Claimed(true), ctx);
        }
        ctx.wait(
            self.deps
                .roster
                .claim
                .send(claim)
                .into_actor(self)
                .map(|claimed, act, ctx| act.feed(Input::Claimed(claimed == Ok(true)), ctx)),
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
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
        if matches!(event, MediaEvent::Invalid(_)) {
            self.frames_bad.inc();
        }
        self.feed(Input::Media(event), ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The transport ended without saying so (TCP reset, network loss).
        let _span = self.span.clone().entered();
        self.feed(Input::TransportEnded, ctx);
    }
}

impl Handler<Finish> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: Finish, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.feed(Input::Finish(msg.0), ctx);
    }
}

impl Handler<PartialUpdate> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PartialUpdate, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        let PartialUpdate {
            speaker,
            text,
            finals,
        } = msg;
        self.feed(
            Input::Partial {
                speaker,
                text,
                finals,
            },
            ctx,
        );
    }
}

impl Handler<TurnsCommitted> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: TurnsCommitted, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        let metrics = &self.deps.metrics;
        metrics.turns_persisted.inc_by(msg.turns.len() as u64);
        metrics.persist_lag_seconds.observe(msg.lag.as_secs_f64());
        let input = Input::Committed {
            turns: msg.turns,
            unsent: msg.unsent,
            lag: msg.lag,
            at: Utc::now(),
        };
        self.feed(input, ctx);
    }
}

impl Handler<PersistBacklog> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PersistBacklog, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.feed(Input::Backlog { unsent: msg.unsent }, ctx);
    }
}

impl Handler<SttStatus> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttStatus, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        let before = self.session.counters().stt_restarts;
        if msg.restarts > before {
            let provider = self.provider.as_ref().map_or("none", |p| p.name());
            self.deps
                .metrics
                .stt_restarts
                .get_or_create(&crate::metrics::ProviderLabels {
                    provider: provider.into(),
                })
                .inc_by(u64::from(msg.restarts - before));
        }
        let input = Input::Stt {
            state: msg.state,
            restarts: msg.restarts,
            dropped: msg.dropped_frames,
        };
        self.feed(input, ctx);
    }
}

impl Handler<SttGaveUp> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SttGaveUp, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.feed(Input::Finish(EndReason::SttFailed(msg.reason)), ctx);
    }
}
