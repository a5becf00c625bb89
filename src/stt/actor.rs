//! The `SttActor`: one provider stream per call, supervised.
//!
//! It runs under an actix `Supervisor`: a broken stream makes the actor stop, the supervisor
//! restarts it with its mailbox and state intact, and `started` reconnects after a capped,
//! jittered backoff. Audio is kept in a replay buffer from the end of the last final onwards, so
//! the new stream gets the audio the old one never turned into a final (with its call time
//! offset), and audio arriving while disconnected waits there too. A restart budget (by default
//! 3 in 10 s) bounds all this; past it, or on a fatal error, the call is told to end `failed`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::replay::{Held, ReplayBuffer};
use super::supervision::{Backoff, RestartBudget};
use super::{StreamConfig, SttEvent, SttFailure, SttInput, SttProvider, SttSignal};
use crate::transcript::buffer::{Transcribed, TranscriptBuffer};

/// Validated call audio for the provider.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SttAudio {
    pub pcm: Bytes,
    pub millis: u32,
    /// The carrier's own bytes for this audio, kept for a replay instead of the PCM.
    pub source: Option<crate::media::SourceAudio>,
}

/// End of call: ask the provider for its last results and wait for them (bounded).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SttFinish;

/// The stream's state, reported to the call for the operator surface.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct SttStatus {
    pub state: SttState,
    pub restarts: u32,
    pub dropped_frames: u64,
}

/// STT gave up: past the restart budget, or a fatal provider error. The call must end `failed`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SttGaveUp {
    pub reason: String,
}

/// Where the provider stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SttState {
    Connecting,
    Streaming,
    Reconnecting,
    Finalizing,
    Closed,
    Failed,
}

impl SttState {
    /// Lower-case name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Streaming => "streaming",
            Self::Reconnecting => "reconnecting",
            Self::Finalizing => "finalizing",
            Self::Closed => "closed",
            Self::Failed => "failed",
        }
    }
}

/// Restart and buffering policy of one call's STT stream.
#[derive(Debug, Clone)]
pub struct SttPolicy {
    pub restart_max: usize,
    pub restart_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub replay_buffer_ms: i64,
    pub audio_queue_frames: usize,
    pub finalize_timeout: Duration,
    pub sample_rate: u32,
    /// The tenant's own provider key, when it has one (set per call).
    pub api_key: Option<crate::secret::Secret>,
}

/// Who an `SttActor` reports to.
pub struct SttLinks {
    pub transcript: Addr<TranscriptBuffer>,
    pub status: Recipient<SttStatus>,
    pub gave_up: Recipient<SttGaveUp>,
    /// Depth of this actor's audio mailbox, counted with the call actor that fills it.
    pub mailbox: crate::metrics::mailbox::Depth,
    /// Bytes in this actor's replay buffer, counted with the call's other STT actors.
    pub replay_bytes: crate::metrics::mailbox::Bytes,
    /// Live STT actors on the node (`callengine_actors{kind="stt"}`): one while this exists.
    pub live: prometheus_client::metrics::gauge::Gauge,
}

/// Drives one call's provider stream.
pub struct SttActor {
    call_id: Uuid,
    provider: Arc<dyn SttProvider>,
    policy: SttPolicy,
    links: SttLinks,
    budget: RestartBudget,
    backoff: Backoff,
    state: SttState,
    session_index: u32,
    restarts: u32,
    audio: Option<mpsc::Sender<SttInput>>,
    /// Audio since the end of the last final, at its call offsets.
    replay: ReplayBuffer,
    dropped_frames: u64,
    reported_dropped: u64,
    finalized: Option<oneshot::Sender<()>>,
    finish_requested: bool,
    /// The drop-report timer and the provider's event stream: cancelled once the call is
    /// finished, so the actor stops (and frees its replay buffer) when the call lets go of it.
    timer: Option<SpawnHandle>,
    signals: Option<SpawnHandle>,
}

impl SttActor {
    /// An actor for `call_id` using `provider`.
    pub fn new(
        call_id: Uuid,
        provider: Arc<dyn SttProvider>,
        policy: SttPolicy,
        links: SttLinks,
    ) -> Self {
        links.live.inc();
        Self {
            call_id,
            budget: RestartBudget::new(policy.restart_max, policy.restart_window),
            replay: ReplayBuffer::new(policy.replay_buffer_ms),
            backoff: Backoff::new(policy.backoff_initial, policy.backoff_max, 0.2),
            provider,
            policy,
            links,
            state: SttState::Connecting,
            session_index: 0,
            restarts: 0,
            audio: None,
            dropped_frames: 0,
            reported_dropped: 0,
            finalized: None,
            finish_requested: false,
            timer: None,
            signals: None,
        }
    }

    fn set_state(&mut self, state: SttState) {
        self.state = state;
        self.reported_dropped = self.dropped_frames;
        self.links.status.do_send(SttStatus {
            state,
            restarts: self.restarts,
            dropped_frames: self.dropped_frames,
        });
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let start_offset_ms = self.replay.start_offset_ms();
        let config = StreamConfig {
            call_id: self.call_id,
            sample_rate: self.policy.sample_rate,
            start_offset_ms,
            session_index: self.session_index,
            api_key: self.policy.api_key.clone(),
        };
        let opening = self.provider.open(config);
        ctx.spawn(
            opening
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(session) => {
                        let mut signals = session.signals;
                        act.signals =
                            Some(ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
                                signals.poll_recv(cx)
                            })));
                        act.audio = Some(session.audio);
                        act.set_state(SttState::Streaming);
                        act.replay_buffered();
                        if act.finish_requested {
                            act.send_finalize();
                        }
                    }
                    Err(failure) => act.on_failure(failure, ctx),
                }),
        );
    }

    /// Sends everything in the replay buffer to a fresh stream. Audio kept in the carrier's
    /// encoding goes through a fresh normaliser (primed: one 20 ms packet is one 20 ms frame).
    fn replay_buffered(&mut self) {
        let held = self.replay.pending();
        let mut normalizer: Option<crate::media::normalize::Normalizer> = None;
        for (offset_ms, held) in held {
            match held {
                Held::Pcm(pcm) => self.forward(pcm, offset_ms),
                Held::Source(source) => {
                    if normalizer.as_ref().map(|n| n.format()) != Some(source.format) {
                        normalizer = crate::media::normalize::Normalizer::new(source.format).ok();
                    }
                    let Some(n) = normalizer.as_mut() else {
                        continue;
                    };
                    let mut frames = Vec::with_capacity(1);
                    n.push(&source.bytes, |_, pcm| frames.push(pcm));
                    let mut at = offset_ms;
                    for pcm in frames {
                        let millis = (pcm.len() / 32) as i64;
                        self.forward(pcm, at);
                        at += millis;
                    }
                }
            }
        }
    }

    fn forward(&mut self, pcm: Bytes, offset_ms: i64) {
        let Some(audio) = &self.audio else { return };
        if audio.try_send(SttInput::Audio { pcm, offset_ms }).is_err() {
            self.dropped_frames += 1;
        }
    }

    fn send_finalize(&mut self) {
        if let Some(audio) = self.audio.clone() {
            self.state = SttState::Finalizing;
            actix::spawn(async move {
                let _ = audio.send(SttInput::Finalize).await;
            });
        }
    }

    /// Changes the replay buffer and keeps `callengine_replay_buffer_bytes` in step with it.
    fn with_replay<T>(&mut self, change: impl FnOnce(&mut ReplayBuffer) -> T) -> T {
        let before = self.replay.bytes() as i64;
        let result = change(&mut self.replay);
        self.links
            .replay_bytes
            .add(self.replay.bytes() as i64 - before);
        result
    }

    fn on_failure(&mut self, failure: SttFailure, ctx: &mut Context<Self>) {
        self.audio = None;
        if self.finish_requested {
            // The call is ending anyway: no reconnect, release the waiting finish.
            self.finish_done();
            return;
        }
        if !failure.retryable {
            return self.give_up(format!(
                "STT provider refused the stream: {}",
                failure.message
            ));
        }
        if !self.budget.try_spend(crate::clock::now()) {
            return self.give_up(format!(
                "STT failed more than {} times in {} s; last error: {}",
                self.policy.restart_max,
                self.policy.restart_window.as_secs(),
                failure.message
            ));
        }
        tracing::warn!(call_id = %self.call_id, error = %failure.message, restarts = self.restarts + 1, "STT stream broke; restarting");
        self.restarts += 1;
        self.session_index += 1;
        self.set_state(SttState::Reconnecting);
        // The supervisor restarts us with state and mailbox intact; `started` reconnects.
        ctx.stop();
    }

    fn give_up(&mut self, reason: String) {
        tracing::error!(call_id = %self.call_id, %reason, "STT gave up");
        self.set_state(SttState::Failed);
        self.links.gave_up.do_send(SttGaveUp { reason });
    }

    fn finish_done(&mut self) {
        if self.state != SttState::Failed {
            self.set_state(SttState::Closed);
        }
        if let Some(done) = self.finalized.take() {
            let _ = done.send(());
        }
    }
}

impl Drop for SttActor {
    fn drop(&mut self) {
        self.links.live.dec();
        self.clear_replay();
    }
}

impl Actor for SttActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.policy.audio_queue_frames.max(1));
        // Drops happen per frame; report them at most once a second.
        self.timer = Some(ctx.run_interval(Duration::from_secs(1), |act, _ctx| {
            if act.dropped_frames != act.reported_dropped {
                act.set_state(act.state);
            }
        }));
        if self.session_index == 0 {
            self.connect(ctx);
        } else {
            let delay = self.backoff.next_delay(fastrand::f64());
            ctx.run_later(delay, |act, ctx| act.connect(ctx));
        }
    }
}

impl Supervised for SttActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.audio = None;
    }
}

impl Handler<SttAudio> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: SttAudio, _ctx: &mut Self::Context) {
        self.links.mailbox.taken();
        if self.finish_requested || self.state == SttState::Failed {
            return;
        }
        let held = match msg.source {
            Some(source) => Held::Source(source),
            None => Held::Pcm(msg.pcm.clone()),
        };
        let offset_ms = self.with_replay(|replay| replay.push(i64::from(msg.millis), held));
        if self.state == SttState::Streaming {
            self.forward(msg.pcm, offset_ms);
        }
    }
}

impl StreamHandler<SttSignal> for SttActor {
    fn handle(&mut self, signal: SttSignal, ctx: &mut Self::Context) {
        match signal {
            SttSignal::Event(event) => {
                if let SttEvent::Final {
                    end_ms: Some(end), ..
                } = &event
                {
                    let end = *end;
                    self.with_replay(|replay| replay.trim(end));
                    self.backoff.reset();
                }
                self.links.transcript.do_send(Transcribed(event));
            }
            SttSignal::Failed(failure) => self.on_failure(failure, ctx),
            SttSignal::Closed => self.finish_done(),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The provider's channel ended without `Closed` or `Failed`.
        match self.state {
            SttState::Finalizing => self.finish_done(),
            SttState::Streaming => {
                self.on_failure(SttFailure::retryable("provider stream ended"), ctx)
            }
            _ => {}
        }
    }
}

impl SttActor {
    /// The call is finished: nothing more will come or be sent. Cancels the timer and the
    /// provider's stream and drops the audio queue (the provider's session ends) and the replay
    /// buffer, so that once the call actor lets go of this actor's address it stops for good —
    /// without this, the 1 s timer kept every finished call's STT actor, with its buffered
    /// audio, alive for the life of the process.
    fn release(&mut self, ctx: &mut Context<Self>) {
        for handle in [self.timer.take(), self.signals.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(handle);
        }
        self.audio = None;
        self.clear_replay();
    }

    /// Empties the replay buffer, taking its bytes out of the count.
    fn clear_replay(&mut self) {
        self.with_replay(ReplayBuffer::clear);
    }
}

impl Handler<SttFinish> for SttActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: SttFinish, _ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.finish_requested = true;
        self.finalized = Some(tx);
        match self.state {
            SttState::Streaming => self.send_finalize(),
            _ => self.finish_done(),
        }
        let limit = self.provider.finalize_timeout(self.policy.finalize_timeout);
        Box::pin(
            async move {
                let _ = tokio::time::timeout(limit, rx).await;
            }
            .into_actor(self)
            .map(|(), act, ctx| act.release(ctx)),
        )
    }
}
