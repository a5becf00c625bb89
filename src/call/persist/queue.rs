//! The persister's write queue as a pure state machine: which turns to write next, what a
//! commit or a failure does to the queue, when to retry, when the call may be completed. The
//! [`Persister`](super::Persister) actor performs the writes it asks for and reports back; the
//! tests drive it with a fake clock and made-up store answers.
//!
//! The rules: turns are written in arrival order, at most [`BATCH`] per transaction, one write
//! at a time; each turn carries an idempotency key (this writer's id and a counter), so a batch
//! retried after a lost acknowledgement finds its rows instead of storing them twice; a write
//! that fails for a reason a retry can fix is retried with capped, jittered backoff and the
//! turns stay queued in order (at most `max_unsent`; the excess is dropped and counted); one a
//! retry cannot fix drops its batch (counted) and the queue moves on; the completion is written
//! only once the queue is empty, once, and nothing is written after it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::{AppendOutcome, CallCompletion, CallStatus, NewTurn, StoreError};
use crate::stt::supervision::Backoff;

/// Turns written per transaction at most.
pub const BATCH: usize = 64;

/// What to write now.
#[derive(Debug, Clone)]
pub enum Write {
    /// These turns, in order, in one transaction.
    Turns(Vec<NewTurn>),
    /// The call's completion (the queue is empty).
    Complete(Box<CallCompletion>),
}

/// What the persister should do next.
#[derive(Debug, Clone)]
pub enum Step {
    Write(Write),
    /// A retry is due after this long.
    Wait(Duration),
    /// Nothing to write (or a write is in flight, or the call is completed).
    Idle,
}

/// Why a turn was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The call is already completed.
    Completed,
    /// `max_unsent` turns already wait.
    Full,
}

/// What a failed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retry after `delay`; `unsent` turns wait meanwhile.
    Retry { delay: Duration, unsent: usize },
    /// A retry cannot fix it: this many turns were dropped.
    Dropped(usize),
    /// The completion cannot be written: the call is given up.
    CompletionFailed,
}

/// Turns now stored, with the numbers the database gave them.
#[derive(Debug, Clone)]
pub struct Committed {
    pub turns: Vec<(i32, NewTurn)>,
    /// Time from the newest turn's assembly to its commit.
    pub lag: Duration,
    pub unsent: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Turns(usize),
    Completion,
}

/// One call's unsent turns and its pending completion.
#[derive(Debug)]
pub struct WriteQueue {
    queue: VecDeque<(NewTurn, Instant)>,
    max_unsent: usize,
    dropped: u64,
    in_flight: Option<InFlight>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    finish: Option<CallCompletion>,
    completed: bool,
    stream: Uuid,
    next_key: u64,
}

/// Errors a retry cannot fix (the store's own classification).
pub fn is_permanent(err: &StoreError) -> bool {
    err.is_permanent()
}

impl WriteQueue {
    /// A queue for one writer (`stream`: its id in the turns' idempotency keys) holding at most
    /// `max_unsent` turns.
    pub fn new(max_unsent: usize, stream: Uuid) -> Self {
        Self {
            queue: VecDeque::new(),
            max_unsent: max_unsent.max(1),
            dropped: 0,
            in_flight: None,
            retry_at: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.2),
            finish: None,
            completed: false,
            stream,
            next_key: 1,
        }
    }

    /// Turns waiting to be written.
    pub fn unsent(&self) -> usize {
        self.queue.len()
    }
    /// Turns given up (queue full, or a write a retry could not fix).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    pub fn is_completed(&self) -> bool {
        self.completed
    }
    /// A completion was asked for (by the call, or by the backstop).
    pub fn is_finishing(&self) -> bool {
        self.finish.is_some()
    }

    /// Stamps a turn with this writer's next idempotency key.
    fn keyed(&mut self, mut turn: NewTurn) -> NewTurn {
        turn.key = Some(format!("{}:{}", self.stream.simple(), self.next_key));
        self.next_key += 1;
        turn
    }

    /// Queues a turn assembled at `assembled_at`.
    pub fn push(&mut self, turn: NewTurn, assembled_at: Instant) -> Result<(), Refused> {
        // Once the completion is being written, a turn would land after the call's end.
        if self.completed || self.in_flight == Some(InFlight::Completion) {
            self.dropped += u64::from(!self.completed);
            return Err(Refused::Completed);
        }
        if self.queue.len() >= self.max_unsent {
            self.dropped += 1;
            return Err(Refused::Full);
        }
        let turn = self.keyed(turn);
        self.queue.push_back((turn, assembled_at));
        Ok(())
    }

    /// Asks for the completion (written once the queue is empty). The first request wins;
    /// `false` for a later one.
    pub fn finish(&mut self, mut completion: CallCompletion) -> bool {
        if self.finish.is_some() || self.completed {
            return false;
        }
        completion.pending_partial = completion.pending_partial.take().map(|p| self.keyed(p));
        self.finish = Some(completion);
        true
    }

    /// The backstop for a persister dropped before its call finished: complete the call as
    /// `call_actor_lost` after the queue drains, unless a completion is already asked for.
    /// `true` while there is still something to write.
    pub fn abandon(&mut self, ended_at: chrono::DateTime<chrono::Utc>) -> bool {
        if self.completed {
            return false;
        }
        self.finish(CallCompletion {
            status: CallStatus::Completed,
            ended_at,
            end_reason: "call_actor_lost".into(),
            pending_partial: None,
            dtmf: None,
            recording_url: None,
        });
        true
    }

    /// What to do at `now`.
    pub fn next(&mut self, now: Instant) -> Step {
        if self.completed || self.in_flight.is_some() {
            return Step::Idle;
        }
        if let Some(at) = self.retry_at {
            if now < at {
                return Step::Wait(at - now);
            }
            self.retry_at = None;
        }
        if !self.queue.is_empty() {
            let count = self.queue.len().min(BATCH);
            self.in_flight = Some(InFlight::Turns(count));
            let batch = self.queue.iter().take(count).map(|(t, _)| t.clone());
            return Step::Write(Write::Turns(batch.collect()));
        }
        match &self.finish {
            Some(completion) => {
                self.in_flight = Some(InFlight::Completion);
                Step::Write(Write::Complete(Box::new(completion.clone())))
            }
            None => Step::Idle,
        }
    }

    /// The batch in flight is stored (`outcomes`: one per turn, in order).
    pub fn written(&mut self, outcomes: &[AppendOutcome], now: Instant) -> Committed {
        let sent = match self.in_flight.take() {
            Some(InFlight::Turns(count)) => count,
            _ => 0,
        };
        let count = sent.min(outcomes.len()).min(self.queue.len());
        let mut newest = None;
        let turns = self
            .queue
            .drain(..count)
            .zip(outcomes)
            .map(|((turn, assembled_at), outcome)| {
                newest = Some(assembled_at);
                (outcome.seq(), turn)
            })
            .collect();
        self.backoff.reset();
        Committed {
            turns,
            lag: newest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            unsent: self.queue.len(),
        }
    }

    /// The completion is stored: nothing more is written.
    pub fn completed(&mut self) {
        self.in_flight = None;
        self.completed = true;
    }

    /// The write in flight failed at `now` (`unit`: a random number in `[0, 1)` for the
    /// jitter).
    pub fn failed(&mut self, permanent: bool, unit: f64, now: Instant) -> Failure {
        let in_flight = self.in_flight.take();
        if permanent {
            return match in_flight {
                Some(InFlight::Turns(count)) => {
                    let count = count.min(self.queue.len());
                    self.queue.drain(..count);
                    self.dropped += count as u64;
                    Failure::Dropped(count)
                }
                _ => {
                    self.completed = true;
                    Failure::CompletionFailed
                }
            };
        }
        let delay = self.backoff.next_delay(unit);
        self.retry_at = Some(now + delay);
        Failure::Retry {
            delay,
            unsent: self.queue.len(),
        }
    }
}

#[cfg(test)]
mod tests;
