//! The `Persister`: one per call, the only writer of that call's rows.
//!
//! Turns are queued in order and written as soon as they arrive (batched when several wait).
//! While the database is unreachable, writes are retried with capped, jittered backoff and the
//! unsent turns stay queued in order (bounded; the count is visible). The final flush waits for
//! the queue to drain, then completes the call in one transaction. Persisters run on an arbiter
//! of their own that outlives the HTTP workers, and a persister that is dropped before its call
//! was finished finishes it by itself (`stopping` keeps it alive until the write is done).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{
    AppendOutcome, Call, CallCompletion, CallStatus, CompletionOutcome, LinkOutcome, NewCall,
    NewTurn, Store, StoreError,
};
use crate::stt::supervision::Backoff;
use crate::transcript::buffer::PersistTurn;

/// Turns written per transaction at most.
const BATCH: usize = 64;

/// A started call: its row, whether it was linked, and its tenant's STT provider choice.
#[derive(Debug, Clone)]
pub struct StartedCall {
    pub call: Call,
    pub outcome: LinkOutcome,
    /// The tenant's `stt_provider`, when the tenant exists and sets one.
    pub stt_provider: Option<String>,
    /// The tenant's own STT API key, when it has one.
    pub stt_api_key: Option<crate::secret::Secret>,
    /// The tenant wants the engine to record its calls (`postcall_config.record_calls`).
    pub record_calls: bool,
}

/// Creates or links the call row; the persister remembers the call id.
#[derive(Message)]
#[rtype(result = "Result<StartedCall, StoreError>")]
pub struct StartCall {
    pub new_call: NewCall,
    /// Keep retrying an unreachable database this long.
    pub patience: Duration,
}

/// A persister started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersisterUp;

/// A persister stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersisterDown {
    pub dropped_turns: u64,
}

/// A turn stored under the number the database gave it.
#[derive(Debug, Clone)]
pub struct CommittedTurn {
    pub seq: i32,
    pub turn: NewTurn,
}

/// Turns now committed, in order (sent to the call so it can acknowledge them).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct TurnsCommitted {
    pub turns: Vec<CommittedTurn>,
    /// Time from the newest turn's assembly to its commit.
    pub lag: Duration,
    /// Turns still waiting to be written.
    pub unsent: usize,
}

/// Writes are failing; this many turns wait in memory (sent on every retry).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct PersistBacklog {
    pub unsent: usize,
}

/// The final flush: drain the queue, store the pending partial, complete the call.
#[derive(Message)]
#[rtype(result = "Result<CompletionOutcome, String>")]
pub struct FinishCall {
    pub status: CallStatus,
    pub end_reason: String,
    pub ended_at: DateTime<Utc>,
    pub pending_partial: Option<NewTurn>,
    /// DTMF digits pressed during the call.
    pub dtmf: Option<String>,
    /// The engine's own recording of the call (`file://…`), when it made one.
    pub recording_url: Option<String>,
}

/// Writes one call's rows.
pub struct Persister {
    store: Store,
    /// The registry, told when this persister starts and stops (the drain waits for it).
    supervisor: (Recipient<PersisterUp>, Recipient<PersisterDown>),
    call: Option<(Recipient<TurnsCommitted>, Recipient<PersistBacklog>)>,
    call_id: Option<Uuid>,
    queue: VecDeque<(NewTurn, Instant)>,
    max_unsent: usize,
    dropped_turns: u64,
    in_flight: bool,
    retry_scheduled: bool,
    backoff: Backoff,
    finish: Option<FinishCall>,
    waiters: Vec<oneshot::Sender<Result<CompletionOutcome, String>>>,
    finished: bool,
    /// This writer's id: with `next_key` it makes each turn's idempotency key, so a retried
    /// batch (its commit acknowledgement lost) finds its turns instead of storing them twice.
    /// Numbers are not chosen here: the database allocates them per call, whoever writes.
    stream: Uuid,
    next_key: u64,
}

impl Persister {
    /// A persister for one call; `call` receives commit acknowledgements.
    pub fn new(
        store: Store,
        supervisor: (Recipient<PersisterUp>, Recipient<PersisterDown>),
        call: (Recipient<TurnsCommitted>, Recipient<PersistBacklog>),
        max_unsent: usize,
    ) -> Self {
        Self {
            store,
            supervisor,
            call: Some(call),
            call_id: None,
            queue: VecDeque::new(),
            max_unsent: max_unsent.max(1),
            dropped_turns: 0,
            in_flight: false,
            retry_scheduled: false,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.2),
            finish: None,
            waiters: Vec::new(),
            finished: false,
            stream: Uuid::new_v4(),
            next_key: 1,
        }
    }

    /// Writes the next batch, or completes the call once the queue is empty and a finish waits.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.retry_scheduled || self.finished {
            return;
        }
        let Some(call_id) = self.call_id else { return };
        if !self.queue.is_empty() {
            self.in_flight = true;
            let batch: Vec<NewTurn> = self
                .queue
                .iter()
                .take(BATCH)
                .map(|(t, _)| t.clone())
                .collect();
            let store = self.store.clone();
            let write = async move { store.append_turns(call_id, &batch).await };
            ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
                act.in_flight = false;
                match result {
                    Ok(outcomes) => act.committed(&outcomes, ctx),
                    Err(err) if is_permanent(&err) => act.give_up_batch(&err, ctx),
                    Err(err) => act.retry_later(&err, ctx),
                }
            }));
        } else if let Some(finish) = &self.finish {
            self.in_flight = true;
            let store = self.store.clone();
            let completion = CallCompletion {
                status: finish.status,
                ended_at: finish.ended_at,
                end_reason: finish.end_reason.clone(),
                pending_partial: finish.pending_partial.clone(),
                dtmf: finish.dtmf.clone(),
                recording_url: finish.recording_url.clone(),
            };
            let write = async move { store.complete_call(call_id, &completion).await };
            ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
                act.in_flight = false;
                match result {
                    Ok(outcome) => act.done(Ok(outcome), ctx),
                    Err(err) if is_permanent(&err) => {
                        tracing::error!(%call_id, error = %err, "call completion failed permanently");
                        act.done(Err(err.to_string()), ctx)
                    }
                    Err(err) => act.retry_later(&err, ctx),
                }
            }));
        }
    }

    /// Stamps a turn with this writer's next idempotency key.
    fn keyed(&mut self, mut turn: NewTurn) -> NewTurn {
        turn.key = Some(format!("{}:{}", self.stream.simple(), self.next_key));
        self.next_key += 1;
        turn
    }

    fn committed(&mut self, outcomes: &[AppendOutcome], ctx: &mut Context<Self>) {
        let count = outcomes.len().min(self.queue.len());
        let mut turns = Vec::with_capacity(count);
        let mut newest = None;
        for ((turn, assembled_at), outcome) in self.queue.drain(..count).zip(outcomes) {
            newest = Some(assembled_at);
            turns.push(CommittedTurn {
                seq: outcome.seq(),
                turn,
            });
        }
        self.backoff.reset();
        let lag = newest
            .map(|t| crate::clock::now().duration_since(t))
            .unwrap_or_default();
        if let Some((call, _)) = &self.call {
            call.do_send(TurnsCommitted {
                turns,
                lag,
                unsent: self.queue.len(),
            });
        }
        self.pump(ctx);
    }

    fn give_up_batch(&mut self, err: &StoreError, ctx: &mut Context<Self>) {
        let count = self.queue.len().min(BATCH);
        self.dropped_turns += count as u64;
        tracing::error!(call_id = ?self.call_id, error = %err, turns = count, "turns could not be written and were dropped");
        self.queue.drain(..count);
        self.pump(ctx);
    }

    fn retry_later(&mut self, err: &StoreError, ctx: &mut Context<Self>) {
        let delay = self.backoff.next_delay(fastrand::f64());
        tracing::warn!(call_id = ?self.call_id, error = %err, unsent = self.queue.len(), retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
        if let Some((_, backlog)) = &self.call {
            backlog.do_send(PersistBacklog {
                unsent: self.queue.len(),
            });
        }
        self.retry_scheduled = true;
        ctx.run_later(delay, |act, ctx| {
            act.retry_scheduled = false;
            act.pump(ctx);
        });
    }

    fn done(&mut self, result: Result<CompletionOutcome, String>, ctx: &mut Context<Self>) {
        self.finished = true;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        ctx.stop();
    }
}

/// Errors a retry cannot fix.
fn is_permanent(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::CallNotFound(_)
            | StoreError::CallNotActive { .. }
            | StoreError::InvalidInput(_)
            | StoreError::ExternalIdInUse { .. }
            | StoreError::CallUnavailable
            | StoreError::Corrupt(_)
    )
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _ = ctx;
        self.supervisor.0.do_send(PersisterUp);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Backstop: nobody finished this call (its actor died). Finish it before stopping.
        if !self.finished && self.call_id.is_some() {
            if self.finish.is_none() {
                tracing::warn!(call_id = ?self.call_id, "persister dropped before the call finished; finishing it");
                self.finish = Some(FinishCall {
                    status: CallStatus::Completed,
                    end_reason: "call_actor_lost".into(),
                    ended_at: Utc::now(),
                    pending_partial: None,
                    dtmf: None,
                    recording_url: None,
                });
            }
            self.pump(ctx);
            return Running::Continue;
        }
        Running::Stop
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let _ = ctx;
        self.supervisor.1.do_send(PersisterDown {
            dropped_turns: self.dropped_turns,
        });
    }
}

impl Handler<StartCall> for Persister {
    type Result = ResponseActFuture<Self, Result<StartedCall, StoreError>>;

    fn handle(&mut self, msg: StartCall, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let create = async move {
            let started = crate::clock::now();
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 0.2);
            let attempt = || async {
                let (call, outcome) = store.create_or_link_call(&msg.new_call).await?;
                let tenant = store.get_tenant(call.tenant_id).await?;
                let record_calls = tenant
                    .as_ref()
                    .and_then(|t| t.postcall_config.as_ref())
                    .is_some_and(|c| c["record_calls"] == serde_json::Value::Bool(true));
                let (stt_provider, stt_api_key) =
                    tenant.map_or((None, None), |t| (t.stt_provider, t.stt_api_key));
                Ok::<_, StoreError>(StartedCall {
                    call,
                    outcome,
                    stt_provider,
                    stt_api_key,
                    record_calls,
                })
            };
            loop {
                match attempt().await {
                    Err(err) if !is_permanent(&err) && started.elapsed() < msg.patience => {
                        tokio::time::sleep(backoff.next_delay(fastrand::f64())).await;
                    }
                    other => return other,
                }
            }
        };
        Box::pin(create.into_actor(self).map(|result, act, _ctx| {
            if let Ok(started) = &result {
                act.call_id = Some(started.call.id);
            }
            result
        }))
    }
}

impl Handler<PersistTurn> for Persister {
    type Result = ();

    fn handle(&mut self, msg: PersistTurn, ctx: &mut Self::Context) {
        if self.finished {
            tracing::error!(call_id = ?self.call_id, "turn arrived after the call was completed");
            return;
        }
        if self.queue.len() >= self.max_unsent {
            self.dropped_turns += 1;
            tracing::error!(call_id = ?self.call_id, "unsent-turn limit reached; turn dropped");
            return;
        }
        let turn = self.keyed(msg.turn);
        self.queue.push_back((turn, msg.assembled_at));
        self.pump(ctx);
    }
}

impl Handler<FinishCall> for Persister {
    type Result = ResponseFuture<Result<CompletionOutcome, String>>;

    fn handle(&mut self, msg: FinishCall, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.call_id.is_none() {
            let _ = tx.send(Err("the call was never started".into()));
            ctx.stop();
        } else {
            self.waiters.push(tx);
            if self.finish.is_none() {
                let mut msg = msg;
                msg.pending_partial = msg.pending_partial.take().map(|p| self.keyed(p));
                self.finish = Some(msg);
            }
            self.pump(ctx);
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("persister stopped".into())) })
    }
}
