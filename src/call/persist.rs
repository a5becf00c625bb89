//! The `Persister`: one per call, the only writer of that call's rows.
//!
//! Turns are queued in order and written as soon as they arrive (batched when several wait).
//! While the database is unreachable, writes are retried with capped, jittered backoff and the
//! unsent turns stay queued in order (bounded; the count is visible). The final flush waits for
//! the queue to drain, then completes the call in one transaction. Those rules are the pure
//! [`WriteQueue`]'s; this actor performs the writes it asks for. Persisters run on an arbiter
//! of their own that outlives the HTTP workers, and a persister that is dropped before its call
//! was finished finishes it by itself (`stopping` keeps it alive until the write is done).

pub mod queue;

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{
    Call, CallCompletion, CallStatus, CompletionOutcome, LinkOutcome, NewCall, NewTurn, Store,
    StoreError,
};
use crate::stt::supervision::Backoff;
use crate::transcript::buffer::PersistTurn;
use queue::{is_permanent, Failure, Refused, Step, Write, WriteQueue};

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
    /// The unsent turns and the pending completion, and every rule about writing them. Its
    /// writer id makes each turn's idempotency key, so a retried batch (its commit
    /// acknowledgement lost) finds its turns instead of storing them twice. Numbers are not
    /// chosen here: the database allocates them per call, whoever writes.
    queue: WriteQueue,
    /// A timer is set for the next retry.
    retry_scheduled: bool,
    waiters: Vec<oneshot::Sender<Result<CompletionOutcome, String>>>,
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
            queue: WriteQueue::new(max_unsent, Uuid::new_v4()),
            retry_scheduled: false,
            waiters: Vec::new(),
        }
    }

    /// Performs the queue's next step: a batch of turns, the completion, or a retry timer.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(call_id) = self.call_id else { return };
        match self.queue.next(crate::clock::now()) {
            Step::Idle => {}
            Step::Wait(delay) => {
                if !std::mem::replace(&mut self.retry_scheduled, true) {
                    ctx.run_later(delay, |act, ctx| {
                        act.retry_scheduled = false;
                        act.pump(ctx);
                    });
                }
            }
            Step::Write(Write::Turns(batch)) => {
                let store = self.store.clone();
                let write = async move { store.append_turns(call_id, &batch).await };
                ctx.spawn(write.into_actor(self).map(|result, act, ctx| {
                    match result {
                        Ok(outcomes) => act.committed(&outcomes),
                        Err(err) => act.failed(&err),
                    }
                    act.pump(ctx);
                }));
            }
            Step::Write(Write::Complete(completion)) => {
                let store = self.store.clone();
                let write = async move { store.complete_call(call_id, &completion).await };
                ctx.spawn(write.into_actor(self).map(|result, act, ctx| {
                    match result {
                        Ok(outcome) => {
                            act.queue.completed();
                            return act.done(Ok(outcome), ctx);
                        }
                        Err(err) => act.failed(&err),
                    }
                    if act.queue.is_completed() {
                        return act.done(Err("the call could not be completed".into()), ctx);
                    }
                    act.pump(ctx);
                }));
            }
        }
    }

    fn committed(&mut self, outcomes: &[crate::store::AppendOutcome]) {
        let committed = self.queue.written(outcomes, crate::clock::now());
        if let Some((call, _)) = &self.call {
            call.do_send(TurnsCommitted {
                turns: committed
                    .turns
                    .into_iter()
                    .map(|(seq, turn)| CommittedTurn { seq, turn })
                    .collect(),
                lag: committed.lag,
                unsent: committed.unsent,
            });
        }
    }

    fn failed(&mut self, err: &StoreError) {
        let call_id = self.call_id;
        match self
            .queue
            .failed(is_permanent(err), fastrand::f64(), crate::clock::now())
        {
            Failure::Retry { delay, unsent } => {
                tracing::warn!(?call_id, error = %err, unsent, retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
                if let Some((_, backlog)) = &self.call {
                    backlog.do_send(PersistBacklog { unsent });
                }
            }
            Failure::Dropped(turns) => {
                tracing::error!(?call_id, error = %err, turns, "turns could not be written and were dropped");
                if let Some((_, backlog)) = &self.call {
                    backlog.do_send(PersistBacklog {
                        unsent: self.queue.unsent(),
                    });
                }
            }
            Failure::CompletionFailed => {
                tracing::error!(?call_id, error = %err, "call completion failed permanently");
            }
        }
    }

    fn done(&mut self, result: Result<CompletionOutcome, String>, ctx: &mut Context<Self>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        ctx.stop();
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _ = ctx;
        self.supervisor.0.do_send(PersisterUp);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Backstop: nobody finished this call (its actor died). Finish it before stopping.
        if self.call_id.is_none() {
            return Running::Stop;
        }
        if !self.queue.is_finishing() && !self.queue.is_completed() {
            tracing::warn!(call_id = ?self.call_id, "persister dropped before the call finished; finishing it");
        }
        if self.queue.abandon(Utc::now()) {
            self.pump(ctx);
            return Running::Continue;
        }
        Running::Stop
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let _ = ctx;
        self.supervisor.1.do_send(PersisterDown {
            dropped_turns: self.queue.dropped(),
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
        match self.queue.push(msg.turn, msg.assembled_at) {
            Ok(()) => self.pump(ctx),
            Err(Refused::Completed) => {
                tracing::error!(call_id = ?self.call_id, "turn arrived after the call was completed")
            }
            Err(Refused::Full) => {
                tracing::error!(call_id = ?self.call_id, "unsent-turn limit reached; turn dropped")
            }
        }
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
            self.queue.finish(CallCompletion {
                status: msg.status,
                ended_at: msg.ended_at,
                end_reason: msg.end_reason,
                pending_partial: msg.pending_partial,
                dtmf: msg.dtmf,
                recording_url: msg.recording_url,
            });
            self.pump(ctx);
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("persister stopped".into())) })
    }
}
