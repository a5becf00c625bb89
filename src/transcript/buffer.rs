//! The `TranscriptBuffer` actor: drives one call's [`TurnAssembler`] with provider events and a
//! promotion timer; partials go to the call (for the client), finals to the persister.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::assembler::{AssemblerOutput, TurnAssembler};
use crate::persist::{PersistTurn, Persister};
use crate::store::NewTurn;
use crate::stt::SttEvent;

/// A normalised provider event for this call.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Transcribed(pub SttEvent);

/// The current partial changed (forwarded to the client).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PartialUpdate {
    pub seq: i32,
    pub text: String,
}

/// End of call: hand over the pending partial (as a non-final turn) and stop.
#[derive(Message)]
#[rtype(result = "Option<NewTurn>")]
pub struct FlushTranscript;

/// Holds the partial of the turn in progress for one call.
pub struct TranscriptBuffer {
    assembler: TurnAssembler,
    persister: Addr<Persister>,
    call: Recipient<PartialUpdate>,
    timer: Option<SpawnHandle>,
    flushed: bool,
}

impl TranscriptBuffer {
    /// A buffer numbering `speaker`'s turns from 1.
    pub fn new(
        speaker: &str,
        promote_after: Duration,
        persister: Addr<Persister>,
        call: Recipient<PartialUpdate>,
    ) -> Self {
        Self {
            assembler: TurnAssembler::new(speaker, promote_after),
            persister,
            call,
            timer: None,
            flushed: false,
        }
    }

    fn dispatch(&mut self, output: Option<AssemblerOutput>) {
        match output {
            Some(AssemblerOutput::Partial { seq, text }) => {
                self.call.do_send(PartialUpdate { seq, text })
            }
            // Transcript events are never dropped: do_send ignores mailbox limits.
            Some(AssemblerOutput::Final(turn)) => self.persister.do_send(PersistTurn {
                turn,
                assembled_at: Instant::now(),
            }),
            None => {}
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(due) = self.assembler.deadline() {
            let wait = due.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let output = act.assembler.on_tick(Instant::now());
                act.dispatch(output);
                act.arm_timer(ctx);
            }));
        }
    }
}

impl Actor for TranscriptBuffer {
    type Context = Context<Self>;

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // Backstop for an abnormal stop: the pending partial still reaches the persister.
        if !self.flushed {
            if let Some(turn) = self.assembler.take_pending() {
                self.persister.do_send(PersistTurn {
                    turn,
                    assembled_at: Instant::now(),
                });
            }
        }
        Running::Stop
    }
}

impl Handler<Transcribed> for TranscriptBuffer {
    type Result = ();

    fn handle(&mut self, msg: Transcribed, ctx: &mut Self::Context) {
        let output = self.assembler.on_event(msg.0, Instant::now());
        self.dispatch(output);
        self.arm_timer(ctx);
    }
}

impl Handler<FlushTranscript> for TranscriptBuffer {
    type Result = Option<NewTurn>;

    fn handle(&mut self, _msg: FlushTranscript, ctx: &mut Self::Context) -> Self::Result {
        self.flushed = true;
        ctx.stop();
        self.assembler.take_pending()
    }
}
