//! Transcript assembly: the pure [`assembler::TurnAssembler`] and the
//! [`buffer::TranscriptBuffer`] actor that drives it for one call. [`SttEvent`] is the
//! vocabulary every speech-to-text provider speaks into it.

pub mod assembler;
pub mod buffer;

/// A transcript event, already normalised: partials are cumulative hypotheses of the current
/// turn (each replaces the last), finals are finished turns.
#[derive(Debug, Clone, PartialEq)]
pub enum SttEvent {
    /// The current hypothesis for the turn in progress.
    Partial {
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    /// A finished turn.
    Final {
        text: String,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        confidence: Option<f64>,
    },
    /// The provider says the speaker's turn ended (a pending partial stands as final).
    EndOfTurn,
}
