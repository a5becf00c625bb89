//! The turn assembler: provider events in, numbered turns out. Pure; time is passed in.
//!
//! - A partial replaces the current partial (partials are cumulative; never concatenated).
//! - A final becomes a turn and clears the partial. Turns are numbered by the database when
//!   they are stored (one sequence per call, whoever writes), not here.
//! - Replays are recognised by time, never by words alone: a final whose audio ends no later
//!   than the previous final's (audio replayed after an STT reconnect) is dropped, and so is a
//!   final that starts inside the previous final's audio with the same words (the provider's
//!   final for a partial that was already promoted). The same words later are a new turn: a
//!   caller may answer "Yes." twice.
//! - A partial that sees no final within `promote_after` is promoted to a turn; so is the
//!   pending partial when the provider signals end of turn.
//! - At the end of the call the pending partial is handed out as a non-final turn.

use std::time::{Duration, Instant};

use super::SttEvent;
use crate::store::{NewTurn, TurnSource};

/// What the assembler tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum AssemblerOutput {
    /// The current partial of `speaker`'s turn changed.
    Partial { speaker: String, text: String },
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
    partial: Option<PendingPartial>,
    last_final_words: Option<String>,
    last_final_end_ms: Option<i64>,
}

impl TurnAssembler {
    /// An assembler for `speaker`'s turns.
    pub fn new(speaker: impl Into<String>, promote_after: Duration) -> Self {
        Self::with_promotion(speaker, Some(promote_after))
    }

    /// An assembler that promotes stale partials after `promote_after`, or never (`None`: for
    /// providers that always end a turn with a final).
    pub fn with_promotion(speaker: impl Into<String>, promote_after: Option<Duration>) -> Self {
        Self {
            speaker: speaker.into(),
            promote_after,
            partial: None,
            last_final_words: None,
            last_final_end_ms: None,
        }
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
        Some(self.turn(partial.text, partial.start_ms, partial.end_ms, None, false))
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
            speaker: self.speaker.clone(),
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
        let last_end = self.last_final_end_ms;
        let replayed = matches!((end_ms, last_end), (Some(end), Some(last)) if end <= last);
        let words = normalise(&text);
        let overlaps = matches!((start_ms, last_end), (Some(start), Some(last)) if start < last);
        if replayed || (overlaps && self.last_final_words.as_deref() == Some(words.as_str())) {
            return None;
        }
        self.last_final_words = Some(words);
        if end_ms.is_some() {
            self.last_final_end_ms = end_ms;
        }
        Some(AssemblerOutput::Final(
            self.turn(text, start_ms, end_ms, confidence, true),
        ))
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
            key: None,
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

    fn final_at(text: &str, start_ms: i64, end_ms: i64) -> SttEvent {
        SttEvent::Final {
            text: text.into(),
            start_ms: Some(start_ms),
            end_ms: Some(end_ms),
            confidence: Some(0.9),
        }
    }

    fn turn_text(out: Option<AssemblerOutput>) -> Option<(String, bool)> {
        match out {
            Some(AssemblerOutput::Final(t)) => Some((t.text, t.is_final)),
            _ => None,
        }
    }

    fn said(text: &str) -> Option<(String, bool)> {
        Some((text.into(), true))
    }

    #[test]
    fn partials_replace_and_finals_become_turns() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(2));
        let expected = |text: &str| {
            Some(AssemblerOutput::Partial {
                speaker: "contact".into(),
                text: text.into(),
            })
        };
        assert_eq!(a.on_event(partial("i"), t0), expected("i"));
        assert_eq!(
            a.on_event(partial("i need"), t0),
            expected("i need"),
            "the new partial replaces, it is not appended"
        );
        assert_eq!(
            a.on_event(partial("i need"), t0),
            None,
            "an unchanged partial is not repeated"
        );
        assert_eq!(
            turn_text(a.on_event(final_("I need help.", Some(1000)), t0)),
            said("I need help.")
        );
        assert_eq!(a.deadline(), None, "a final clears the partial");
        assert_eq!(
            turn_text(a.on_event(final_at("in boston", 1000, 2000), t0)),
            said("in boston")
        );
    }

    #[test]
    fn replayed_finals_are_dropped_by_time() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(2));
        assert!(turn_text(a.on_event(final_("Hello there", Some(1000)), t0)).is_some());
        assert_eq!(
            a.on_event(final_("hello, there!", Some(1500)), t0),
            None,
            "the same words over the same audio (a re-segmented replay)"
        );
        assert_eq!(
            a.on_event(final_("something new", Some(900)), t0),
            None,
            "ends before the last final: replayed audio"
        );
        assert_eq!(
            a.on_event(final_("   ", Some(5000)), t0),
            None,
            "empty finals are skipped"
        );
        assert_eq!(
            turn_text(a.on_event(final_("something new", Some(2000)), t0)),
            said("something new")
        );
    }

    #[test]
    fn the_same_answer_twice_is_two_turns() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_secs(2));
        assert_eq!(
            turn_text(a.on_event(final_at("Yes.", 0, 600), t0)),
            said("Yes.")
        );
        assert_eq!(
            turn_text(a.on_event(final_at("yes", 4000, 4500), t0)),
            said("yes"),
            "the same words later are a new answer"
        );
        assert_eq!(
            turn_text(a.on_event(final_at("Yes.", 9000, 9400), t0)),
            said("Yes.")
        );
        // After an STT reconnect the provider hears the last answer again: dropped by time.
        assert_eq!(a.on_event(final_at("Yes.", 9000, 9400), t0), None);
    }

    #[test]
    fn a_stale_partial_is_promoted_after_the_timeout() {
        let t0 = Instant::now();
        let mut a = TurnAssembler::new("contact", Duration::from_millis(1500));
        a.on_event(
            SttEvent::Partial {
                text: "book a plumber".into(),
                start_ms: Some(0),
                end_ms: Some(1100),
            },
            t0,
        );
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(a.on_tick(t0 + Duration::from_millis(1499)), None);
        assert_eq!(
            turn_text(a.on_tick(t0 + Duration::from_millis(1500))),
            said("book a plumber")
        );
        assert_eq!(a.deadline(), None);
        // The provider's late final for the same audio repeats the promoted turn: dropped.
        assert_eq!(a.on_event(final_at("book a plumber", 0, 1200), t0), None);
        // The same words said again later are a new turn.
        assert_eq!(
            turn_text(a.on_event(final_at("book a plumber", 5000, 6000), t0)),
            said("book a plumber")
        );
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
            said("slow provider done")
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
            said("yes please")
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
            (pending.text.as_str(), pending.is_final),
            ("and then the cal", false)
        );
        assert_eq!(a.take_pending(), None);
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
