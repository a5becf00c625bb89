//! A call's lifecycle as a pure state machine, in the sans-I/O style of str0m's
//! `handle_input` / `poll_output`: the [`CallSession`] takes what happened ([`Input`], with the
//! time it happened) and answers with what to do ([`Effect`]s, in order). It owns every rule
//! the durability promises rest on — the claim and the start, audio accounting and the idle
//! watch, the one finish sequence, the one Close, the backstop for an actor that stops without
//! finishing — and never touches a socket, a database or the clock: the actix
//! [`CallActor`](super::actor::CallActor) is the shell that feeds it and performs its effects,
//! and the unit tests drive it with a fake clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::client::{CallState, ClientEvent};
use super::end::EndReason;
use super::events::LiveEvent;
use super::persist::CommittedTurn;
use crate::media::{CallParams, MediaEvent, SourceAudio};
use crate::store::{CompletionOutcome, StoreError};

/// Invalid frames and ignored messages logged per call (all are counted).
const LOG_LIMIT: u64 = 5;
/// Audio this far ahead of the wall clock is flagged (logged once, shown in the snapshot).
const TOO_FAST_AHEAD_MS: u64 = 5_000;
/// DTMF digits kept per call.
const DTMF_MAX: usize = 256;

mod io;

pub use io::{Counters, Effect, Input, Phase, Started};

/// One call's lifecycle.
pub struct CallSession {
    params: CallParams,
    idle_timeout: Duration,
    phase: Phase,
    call_id: Option<Uuid>,
    created: Instant,
    last_audio: Instant,
    ending: Option<EndReason>,
    closed: bool,
    dtmf: String,
    /// Finals each speaker's transcript buffer has assembled.
    finals_assembled: HashMap<String, u32>,
    counters: Counters,
    effects: VecDeque<Effect>,
}

impl CallSession {
    /// A session for a call that arrived at `now`; it ends itself after `idle_timeout`
    /// without audio.
    pub fn new(params: CallParams, idle_timeout: Duration, now: Instant) -> Self {
        Self {
            params,
            idle_timeout,
            phase: Phase::Starting,
            call_id: None,
            created: now,
            last_audio: now,
            ending: None,
            closed: false,
            dtmf: String::new(),
            finals_assembled: HashMap::new(),
            counters: Counters::default(),
            effects: VecDeque::new(),
        }
    }

    pub fn params(&self) -> &CallParams {
        &self.params
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn call_id(&self) -> Option<Uuid> {
        self.call_id
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn dtmf(&self) -> &str {
        &self.dtmf
    }
    /// Time since the call arrived.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.duration_since(self.created)
    }

    /// The next effect to perform, in order.
    pub fn poll_output(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Takes in what happened at `now`.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Claimed(true) if self.phase == Phase::Starting => self.push(Effect::StartCall),
            Input::Claimed(_) => self.refuse_twin(),
            Input::Started(Ok(started)) => self.go_live(started, now),
            Input::Started(Err(err)) => self.fail_start(&err),
            Input::Media(event) => self.on_media(event, now),
            Input::TransportEnded => self.begin_finish(EndReason::ConnectionLost),
            Input::Dropped => self.counters.frames_dropped += 1,
            Input::Finish(reason) => self.begin_finish(reason),
            Input::Tick => {
                if self.phase == Phase::Live
                    && now.duration_since(self.last_audio) >= self.idle_timeout
                {
                    self.begin_finish(EndReason::IdleTimeout);
                }
            }
            Input::Partial {
                speaker,
                text,
                finals,
            } => self.partial(speaker, text, finals),
            Input::Committed {
                turns,
                unsent,
                lag,
                at,
            } => self.committed(turns, unsent, lag, at),
            Input::Backlog { unsent } => self.counters.unsent_turns = unsent,
            Input::Stt {
                state,
                restarts,
                dropped,
            } => {
                self.counters.stt_state = Some(state);
                self.counters.stt_restarts = restarts;
                self.counters.stt_dropped = dropped;
            }
            Input::Finished(result) => self.complete(result),
            Input::Stopped(end_reason) => self.backstop(end_reason),
        }
    }

    fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    fn send(&mut self, event: ClientEvent) {
        self.push(Effect::Send(event));
    }

    /// The one Close: any later one is dropped.
    fn close(&mut self, code: u16, description: String, now: bool) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        self.push(if now {
            Effect::CloseNow { code, description }
        } else {
            Effect::Close { code, description }
        });
    }

    /// Error event, the Close, stop: a call that never went live.
    fn refuse(&mut self, code: u16, message: String) {
        self.send(ClientEvent::error(message.clone()));
        self.close(code, message, false);
        self.phase = Phase::Done;
        self.push(Effect::Stop);
    }

    /// A live actor already carries this transport call: refuse without touching its row.
    fn refuse_twin(&mut self) {
        if self.phase != Phase::Starting {
            return;
        }
        let message = format!(
            "{} call {} is already live on another stream",
            self.params.protocol,
            crate::text::bounded(self.params.external_id.as_deref().unwrap_or_default(), 64)
        );
        tracing::warn!(%message, "twin stream refused");
        self.refuse(1008, message);
    }

    fn fail_start(&mut self, err: &StoreError) {
        if self.phase != Phase::Starting {
            return;
        }
        let (code, message) = match err {
            // Another tenant's call and an ended one are refused alike, naming neither.
            StoreError::CallUnavailable => (1008, err.to_string()),
            StoreError::CallNotActive { .. }
            | StoreError::ExternalIdInUse { .. }
            | StoreError::InvalidInput(_) => (4000, err.to_string()),
            _ => (1011, format!("could not start the call: {err}")),
        };
        tracing::warn!(error = %err, code, "call refused at start");
        self.push(Effect::ReleaseClaim);
        self.refuse(code, message);
    }

    fn go_live(&mut self, started: Started, now: Instant) {
        if self.phase != Phase::Starting {
            return;
        }
        let call_id = started.call_id;
        self.call_id = Some(call_id);
        self.phase = Phase::Live;
        self.last_audio = now;
        self.push(Effect::Register(call_id));
        self.send(ClientEvent::Call {
            call_id,
            status: CallState::Active,
            linked: started.linked,
        });
        if let Err(reason) = started.stt {
            // The row exists: end the call through the normal path, failed, with the reason.
            tracing::error!(%call_id, %reason, "no STT provider for this call");
            self.send(ClientEvent::error(reason.clone()));
            return self.begin_finish(EndReason::SttFailed(reason));
        }
        self.push(Effect::StartChannels(call_id));
        self.push(Effect::Publish(LiveEvent::CallStarted {
            call_id,
            tenant_id: self.params.tenant_id,
            protocol: self.params.protocol.to_string(),
            external_id: self.params.external_id.clone(),
        }));
    }

    fn on_media(&mut self, event: MediaEvent, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        match event {
            MediaEvent::Audio {
                channel,
                pcm,
                source,
            } => self.audio(channel, pcm, source, now),
            MediaEvent::Invalid(reason) => {
                self.counters.frames_in += 1;
                self.counters.frames_invalid += 1;
                if self.counters.frames_invalid <= LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %reason, "invalid audio skipped");
                }
            }
            MediaEvent::Gap(missing) => self.counters.frames_missing += missing,
            MediaEvent::Ignored(what) => {
                self.counters.text_ignored += 1;
                if self.counters.text_ignored <= LOG_LIMIT {
                    tracing::warn!(call_id = ?self.call_id, %what, "message ignored");
                }
            }
            MediaEvent::Dtmf(digit) => {
                if self.dtmf.len() + digit.len() <= DTMF_MAX {
                    self.dtmf.push_str(&digit);
                }
                tracing::info!(call_id = ?self.call_id, digit = %crate::text::bounded(&digit, 8), "DTMF");
            }
            MediaEvent::Ping(payload) => self.push(Effect::Pong(payload)),
            MediaEvent::Stop => self.begin_finish(EndReason::ClientStop),
            MediaEvent::Closed => self.begin_finish(EndReason::ClientClosed),
            MediaEvent::Lost(detail) => {
                tracing::info!(call_id = ?self.call_id, %detail, "connection lost");
                self.begin_finish(EndReason::ConnectionLost)
            }
            MediaEvent::ProtocolError { too_big, detail } => {
                tracing::warn!(call_id = ?self.call_id, %detail, "media protocol error");
                self.begin_finish(EndReason::ProtocolError {
                    message_too_big: too_big,
                    detail,
                });
            }
        }
    }

    /// Audio counts only while the call is live (before, the row does not exist; after, the
    /// streams are finalizing): it resets the idle watch and goes to its channel's stream.
    fn audio(&mut self, channel: usize, pcm: Bytes, source: Option<SourceAudio>, now: Instant) {
        if self.phase != Phase::Live {
            return;
        }
        self.counters.frames_in += 1;
        let millis = (pcm.len() / 32) as u32;
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
        self.push(Effect::Forward {
            channel,
            pcm,
            millis,
            source,
        });
    }

    /// The number this turn should get is a hint (another writer of the call may take it
    /// first); the `final` carries the number the database gave. Finals this call assembled
    /// but the database has not acknowledged yet come before it.
    fn partial(&mut self, speaker: String, text: String, finals: u32) {
        if self.phase == Phase::Done {
            return;
        }
        self.finals_assembled.insert(speaker.clone(), finals);
        let assembled: u32 = self.finals_assembled.values().sum();
        let pending = i64::from(assembled) - self.counters.turns as i64;
        let seq =
            (i64::from(self.counters.last_seq) + 1 + pending.max(0)).max(i64::from(assembled) + 1);
        self.send(ClientEvent::Partial { seq, speaker, text });
    }

    /// Committed turns are told to the client and the feed, in order (a client's `final`
    /// means the turn is stored).
    fn committed(
        &mut self,
        turns: Vec<CommittedTurn>,
        unsent: usize,
        lag: Duration,
        at: DateTime<Utc>,
    ) {
        self.counters.turns += turns.len() as u64;
        self.counters.last_persist_at = Some(at);
        self.counters.persist_lag = lag;
        self.counters.unsent_turns = unsent;
        for CommittedTurn { seq, turn } in turns {
            self.counters.last_seq = self.counters.last_seq.max(seq);
            if let Some(call_id) = self.call_id {
                self.push(Effect::Publish(LiveEvent::TurnFinal {
                    call_id,
                    tenant_id: self.params.tenant_id,
                    external_id: self.params.external_id.clone(),
                    seq: i64::from(seq),
                    speaker: turn.speaker.clone(),
                    text: turn.text.clone(),
                    start_ms: turn.start_ms,
                    end_ms: turn.end_ms,
                }));
            }
            self.send(ClientEvent::Final {
                seq,
                text: turn.text,
                speaker: turn.speaker,
                start_ms: turn.start_ms,
                end_ms: turn.end_ms,
            });
        }
    }

    /// Every end goes through here once; a second end is ignored.
    fn begin_finish(&mut self, reason: EndReason) {
        if matches!(self.phase, Phase::Finishing | Phase::Done) {
            return;
        }
        self.phase = Phase::Finishing;
        self.ending = Some(reason.clone());
        let dtmf = Some(self.dtmf.clone()).filter(|d| !d.is_empty());
        self.push(Effect::RunFinish { reason, dtmf });
    }

    /// The finish sequence came back: count it, tell the feed, close, forget, stop.
    fn complete(&mut self, result: Box<Result<CompletionOutcome, String>>) {
        if self.phase != Phase::Finishing {
            return;
        }
        let reason = self.ending.take().unwrap_or(EndReason::ConnectionLost);
        let (code, description) = reason.close();
        if let Some(call_id) = self.call_id {
            self.push(Effect::Publish(LiveEvent::CallEnded {
                call_id,
                tenant_id: self.params.tenant_id,
                external_id: self.params.external_id.clone(),
                reason: reason.code_name().into(),
                turns: self.counters.turns,
            }));
        }
        self.push(Effect::Completed { reason, result });
        self.counters.unsent_turns = 0;
        self.close(code, description, false);
        if let Some(call_id) = self.call_id {
            self.push(Effect::Unregister(call_id));
        }
        self.phase = Phase::Done;
        self.push(Effect::Stop);
    }

    /// The end of a call whose actor stops (a panic in a handler, its arbiter gone) without
    /// finishing: the persister completes the row with `end_reason` on its own (committed turns
    /// stay; queued ones are written first), the client gets the one Close (1011), and the
    /// registry forgets the call. A no-op before the call went live and once it finished.
    fn backstop(&mut self, end_reason: &'static str) {
        if !matches!(self.phase, Phase::Live | Phase::Finishing) {
            return;
        }
        tracing::error!(call_id = ?self.call_id, end_reason, "call actor ended without a finished flush");
        let dtmf = Some(self.dtmf.clone()).filter(|d| !d.is_empty());
        self.push(Effect::Abandon { end_reason, dtmf });
        // The persister still writes what it holds, but this call no longer reports it.
        self.counters.unsent_turns = 0;
        self.close(1011, "internal error".into(), true);
        if let Some(call_id) = self.call_id {
            self.push(Effect::Unregister(call_id));
        }
        self.phase = Phase::Done;
    }
}

#[cfg(test)]
mod tests;
