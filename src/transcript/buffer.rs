//! The `TranscriptBuffer` actor: drives one call's [`TurnAssembler`] with provider events and a
//! promotion timer; partials go to the call (for the client), finals to the persister.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::assembler::{AssemblerOutput, TurnAssembler};
use super::SttEvent;
use crate::store::NewTurn;

/// A final turn to write; `assembled_at` measures persist lag.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistTurn {
    pub turn: NewTurn,
    pub assembled_at: Instant,
}

/// A normalised provider event for this call.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Transcribed(pub SttEvent);

/// The current partial changed (forwarded to the client).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PartialUpdate {
    pub speaker: String,
    pub text: String,
    /// Finals this buffer has handed to the persister so far (for the partial's number hint).
    pub finals: u32,
}

/// End of call: hand over the pending partial (as a non-final turn) and stop.
#[derive(Message)]
#[rtype(result = "Option<NewTurn>")]
pub struct FlushTranscript;

/// Holds the partial of the turn in progress for one call.
pub struct TranscriptBuffer {
    assembler: TurnAssembler,
    persister: Recipient<PersistTurn>,
    call: Recipient<PartialUpdate>,
    timer: Option<SpawnHandle>,
    flushed: bool,
    finals: u32,
}

impl TranscriptBuffer {
    /// A buffer for `speaker`'s turns.
    pub fn new(
        speaker: &str,
        promote_after: Option<Duration>,
        persister: Recipient<PersistTurn>,
        call: Recipient<PartialUpdate>,
    ) -> Self {
        Self {
            assembler: TurnAssembler::with_promotion(speaker, promote_after),
            persister,
            call,
            timer: None,
            flushed: false,
            finals: 0,
        }
    }

    fn dispatch(&mut self, output: Option<AssemblerOutput>) {
        match output {
            Some(AssemblerOutput::Partial { speaker, text }) => self.call.do_send(PartialUpdate {
                speaker,
                text,
                finals: self.finals,
            }),
            // Transcript events are never dropped: do_send ignores mailbox limits.
            Some(AssemblerOutput::Final(turn)) => {
                self.finals += 1;
                self.persister.do_send(PersistTurn {
                    turn,
                    assembled_at: crate::clock::now(),
                })
            }
            None => {}
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(due) = self.assembler.deadline() {
            let wait = due.saturating_duration_since(crate::clock::now());
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let output = act.assembler.on_tick(crate::clock::now());
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
                    assembled_at: crate::clock::now(),
                });
            }
        }
        Running::Stop
    }
}

impl Handler<Transcribed> for TranscriptBuffer {
    type Result = ();

    fn handle(&mut self, msg: Transcribed, ctx: &mut Self::Context) {
        let output = self.assembler.on_event(msg.0, crate::clock::now());
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the buffer sends out.
    #[derive(Default, Clone)]
    struct Sink {
        turns: Arc<Mutex<Vec<NewTurn>>>,
        partials: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<PersistTurn> for Sink {
        type Result = ();
        fn handle(&mut self, msg: PersistTurn, _ctx: &mut Self::Context) {
            self.turns.lock().unwrap().push(msg.turn);
        }
    }

    impl Handler<PartialUpdate> for Sink {
        type Result = ();
        fn handle(&mut self, msg: PartialUpdate, _ctx: &mut Self::Context) {
            self.partials.lock().unwrap().push((msg.speaker, msg.text));
        }
    }

    fn partial(text: &str) -> Transcribed {
        Transcribed(SttEvent::Partial {
            text: text.into(),
            start_ms: None,
            end_ms: None,
        })
    }

    #[actix_rt::test]
    async fn promotion_timer_runs_on_paused_time() {
        tokio::time::pause();
        let sink = Sink::default();
        let out = sink.clone().start();
        let buffer = TranscriptBuffer::new(
            "contact",
            Some(Duration::from_millis(1500)),
            out.clone().recipient(),
            out.recipient(),
        )
        .start();
        buffer.send(partial("i need")).await.unwrap();
        buffer.send(partial("i need a plumber")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1400)).await;
        assert!(sink.turns.lock().unwrap().is_empty(), "not due yet");
        // A newer partial restarts the wait.
        buffer
            .send(partial("i need a plumber today"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1400)).await;
        assert!(
            sink.turns.lock().unwrap().is_empty(),
            "the wait restarted with the new partial"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let turns = sink.turns.lock().unwrap().clone();
        assert_eq!(turns.len(), 1);
        assert_eq!(
            (turns[0].text.as_str(), turns[0].is_final),
            ("i need a plumber today", true)
        );
        assert_eq!(sink.partials.lock().unwrap().len(), 3);
        assert_eq!(
            buffer.send(FlushTranscript).await.unwrap(),
            None,
            "nothing pending after promotion"
        );
    }

    #[actix_rt::test]
    async fn flush_hands_over_the_pending_partial_as_non_final() {
        let sink = Sink::default();
        let out = sink.clone().start();
        let buffer = TranscriptBuffer::new(
            "contact",
            Some(Duration::from_secs(60)),
            out.clone().recipient(),
            out.clone().recipient(),
        )
        .start();
        buffer.send(partial("tomorrow at nine")).await.unwrap();
        let pending = buffer.send(FlushTranscript).await.unwrap().unwrap();
        assert_eq!(
            (pending.text.as_str(), pending.is_final),
            ("tomorrow at nine", false)
        );
    }
}
