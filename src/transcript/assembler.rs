//! The turn assembler: provider events in, numbered turns out. Pure; time is passed in.
//!
//! - A partial replaces the current partial (partials are cumulative; never concatenated).
//! - A final becomes turn `seq` (1, 2, 3… per call) and clears the partial.
//! - A final repeating the previous final (same words), or ending no later than the previous
//!   final (audio replayed after an STT reconnect), is dropped.
//! - A partial that sees no final within `promote_after` is promoted to a turn; so is the
//!   pending partial when the provider signals end of turn.
//! - At the end of the call the pending partial is handed out as a non-final turn.

use std::time::{Duration, Instant};

use crate::store::{NewTurn, TurnSource};
use crate::stt::SttEvent;

/// What the assembler tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum AssemblerOutput {
    /// The current partial changed; `seq` is the number the turn will get.
    Partial { seq: i32, text: String },
    /// A turn is final and must be persisted.
    Final(NewTurn),
}

#[derive(Debug, Clone)]
struct PendingPartial {
    text: String,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    updated: Instant,
}

/// Assembles one call's turns.
#[derive(Debug, Clone)]
pub struct TurnAssembler {
    speaker: String,
    promote_after: Option<Duration>,
    next_seq: i32,
    partial: Option<PendingPartial>,
    last_final_words: Option<String>,
    last_final_end_ms: Option<i64>,
}

impl TurnAssembler {
    /// An assembler for `speaker`'s turns, numbering from 1.
    pub fn new(speaker: impl Into<String>, promote_after: Duration) -> Self {
        Self::with_promotion(speaker, Some(promote_after))
    }

    /// An assembler that promotes stale partials after `promote_after`, or never (`None`: for
    /// providers that always end a turn with a final).
    pub fn with_promotion(speaker: impl Into<String>, promote_after: Option<Duration>) -> Self {
        Self {
            speaker: speaker.into(),
            promote_after,
            next_seq: 1,
            partial: None,
            last_final_words: None,
            last_final_end_ms: None,
        }
    }

    /// The sequence number the next turn will get.
    pub fn next_seq(&self) -> i32 {
        self.next_seq
    }

    /// Feeds one provider event.
    pub fn on_event(&mut self, event: SttEvent, now: Instant) -> Option<AssemblerOutput> {
        match event {
            SttEvent::Partial {
                text,
                start_ms,
                end_ms,
            } => self.on_partial(text, start_ms, end_ms, now),
            SttEvent::Final {
                text,
                start_ms,
                end_ms,
                confidence,
            } => self.on_final(text, start_ms, end_ms, confidence),
            SttEvent::EndOfTurn => self.promote(),
        }
    }

    /// When the pending partial becomes due for promotion, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.partial
            .as_ref()
            .and_then(|p| self.promote_after.map(|after| p.updated + after))
    }

    /// Promotes the pending partial if its deadline has passed.
    pub fn on_tick(&mut self, now: Instant) -> Option<AssemblerOutput> {
        match self.deadline() {
            Some(due) if now >= due => self.promote(),
            _ => None,
        }
    }

    /// Takes the pending partial as a non-final turn (for the final flush).
    pub fn take_pending(&mut self) -> Option<NewTurn> {
        let partial = self.partial.take()?;
        let turn = self.turn(partial.text, partial.start_ms, partial.end_ms, None, false);
        self.next_seq += 1;
        Some(turn)
    }

    fn on_partial(
        &mut self,
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        now: Instant,
    ) -> Option<AssemblerOutput> {
        let text = text.trim().to_string();
        if text.is_empty() {
            self.partial = None;
            return None;
        }
        if self.partial.as_ref().is_some_and(|p| p.text == text) {
            return None;
        }
        self.partial = Some(PendingPartial {
            text: text.clone(),
            start_ms,
            end_ms,
            updated: now,
        });
        Some(AssemblerOutput::Partial {
            seq: self.next_seq,
            text,
        })
    }

    fn on_final(
        &mut self,
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        confidence: Option<f64>,
    ) -> Option<AssemblerOutput> {
        let text = text.trim().to_string();
        if text.is_empty() {
            return None;
        }
        self.partial = None;
        let replayed =
            matches!((end_ms, self.last_final_end_ms), (Some(end), Some(last)) if end <= last);
        let words = normalise(&text);
        if replayed || self.last_final_words.as_deref() == Some(words.as_str()) {
            return None;
        }
        self.last_final_words = Some(words);
        if end_ms.is_some() {
            self.last_final_end_ms = end_ms;
        }
        let turn = self.turn(text, start_ms, end_ms, confidence, true);
        self.next_seq += 1;
        Some(AssemblerOutput::Final(turn))
    }

    fn promote(&mut self) -> Option<AssemblerOutput> {
        let partial = self.partial.take()?;
        self.on_final(partial.text, partial.start_ms, partial.end_ms, None)
    }

    fn turn(
        &self,
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        confidence: Option<f64>,
        is_final: bool,
    ) -> NewTurn {
        NewTurn {
            seq: self.next_seq,
            speaker: self.speaker.clone(),
            speaker_label: None,
            text,
            is_final,
            start_ms,
            end_ms,
            confidence,
            source: TurnSource::Realtime,
        }
    }
}

/// Words compared for "the same final": case and punctuation folded, spaces collapsed.
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(text: &str) -> SttEvent {
        SttEvent::Partial {
            text: text.into(),
            start_ms: Some(0),
            end_ms: None,
        }
    }

    fn final_(text: &str, end_ms: Option<i64>) -> SttEvent {
        SttEvent::Final {
            text: text.into(),
            start_ms: Some(0),
            end_ms,
            confidence: Some(0.9),
        }
    }

    fn turn_text(out: Option<AssemblerOutput>) -> Option<(i32, String, bool)> {
        match out {
            Some(AssemblerOutput::Final(t)) => Some((t.seq, t.text, t.is_final)),
            _ => None,
        }
    }

    #[test]
    fn partials_replace_and_finals_are_numbered() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(2));
        assert_eq!(
            a.on_event(partial("i"), t0),
            Some(AssemblerOutput::Partial {
                seq: 1,
                text: "i".into()
            })
        );
        assert_eq!(
            a.on_event(partial("i need"), t0),
            Some(AssemblerOutput::Partial {
                seq: 1,
                text: "i need".into()
            }),
            "the new partial replaces, it is not appended"
        );
        assert_eq!(
            a.on_event(partial("i need"), t0),
            None,
            "an unchanged partial is not repeated"
        );
        assert_eq!(
            turn_text(a.on_event(final_("I need help.", Some(1000)), t0)),
            Some((1, "I need help.".into(), true))
        );
        assert_eq!(a.deadline(), None, "a final clears the partial");
        assert_eq!(
            turn_text(a.on_event(final_("in boston", Some(2000)), t0)),
            Some((2, "in boston".into(), true))
        );
        assert_eq!(a.next_seq(), 3);
    }

    #[test]
    fn repeated_and_replayed_finals_are_dropped() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(2));
        assert!(turn_text(a.on_event(final_("Hello there", Some(1000)), t0)).is_some());
        assert_eq!(
            a.on_event(final_("hello, there!", Some(1500)), t0),
            None,
            "same words"
        );
        assert_eq!(
            a.on_event(final_("something new", Some(900)), t0),
            None,
            "ends before the last final"
        );
        assert_eq!(
            a.on_event(final_("   ", Some(5000)), t0),
            None,
            "empty finals are skipped"
        );
        assert_eq!(
            turn_text(a.on_event(final_("something new", Some(2000)), t0)),
            Some((2, "something new".into(), true))
        );
    }

    #[test]
    fn a_stale_partial_is_promoted_after_the_timeout() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_millis(1500));
        a.on_event(partial("book a plumber"), t0);
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(a.on_tick(t0 + Duration::from_millis(1499)), None);
        assert_eq!(
            turn_text(a.on_tick(t0 + Duration::from_millis(1500))),
            Some((1, "book a plumber".into(), true))
        );
        assert_eq!(a.deadline(), None);
        // A late final with the same words is then a repeat and is dropped.
        assert_eq!(a.on_event(final_("book a plumber", None), t0), None);
    }

    #[test]
    fn promotion_can_be_turned_off() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::with_promotion("contact", None);
        a.on_event(partial("slow provider"), t0);
        assert_eq!(a.deadline(), None);
        assert_eq!(a.on_tick(t0 + Duration::from_secs(3600)), None);
        assert_eq!(
            turn_text(a.on_event(final_("slow provider done", Some(10)), t0)),
            Some((1, "slow provider done".into(), true))
        );
    }

    #[test]
    fn end_of_turn_promotes_the_pending_partial() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(10));
        assert_eq!(a.on_event(SttEvent::EndOfTurn, t0), None);
        a.on_event(partial("yes please"), t0);
        assert_eq!(
            turn_text(a.on_event(SttEvent::EndOfTurn, t0)),
            Some((1, "yes please".into(), true))
        );
    }

    #[test]
    fn pending_partial_is_flushed_as_non_final() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(10));
        a.on_event(final_("first", Some(100)), t0);
        a.on_event(partial("and then the cal"), t0);
        let pending = a.take_pending().unwrap();
        assert_eq!(
            (pending.seq, pending.text.as_str(), pending.is_final),
            (2, "and then the cal", false)
        );
        assert_eq!(a.take_pending(), None);
        assert_eq!(a.next_seq(), 3);
    }

    #[test]
    fn an_empty_partial_clears_the_hypothesis() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(1));
        a.on_event(partial("uh"), t0);
        assert_eq!(a.on_event(partial(""), t0), None);
        assert_eq!(a.take_pending(), None);
    }
}
