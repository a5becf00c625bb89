//! Deepgram's streaming messages normalised into [`SttEvent`]s. Pure: JSON text in, events out.
//!
//! v1 (`/v1/listen`): an interim replaces the previous one; finals of one utterance are appended
//! (several finals can make one turn); `speech_final` ends the turn, `UtteranceEnd` ends it when
//! `speech_final` never came, empty finals are skipped. Flux (`/v2/listen`): each `TurnInfo`
//! transcript is the whole turn so far; updates replace; `EndOfTurn` makes the turn final once
//! per `turn_index`; when the stream closes, an open turn's last update stands as its final.
//! Times in the provider's messages are seconds from the stream's start; `offset_ms` (the call
//! time at which the stream's audio began) turns them into call time.

use serde::Deserialize;

use super::{SttEvent, SttFailure};

/// What one provider message means.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalised {
    Events(Vec<SttEvent>),
    Failure(SttFailure),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct V1Results {
    #[serde(default)]
    start: f64,
    #[serde(default)]
    duration: f64,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    channel: V1Channel,
}

#[derive(Deserialize)]
struct V1Channel {
    #[serde(default)]
    alternatives: Vec<V1Alternative>,
}

#[derive(Deserialize)]
struct V1Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: Option<f64>,
}

#[derive(Deserialize)]
struct FluxTurnInfo {
    event: String,
    turn_index: u64,
    #[serde(default)]
    audio_window_start: f64,
    #[serde(default)]
    audio_window_end: f64,
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    end_of_turn_confidence: Option<f64>,
}

#[derive(Deserialize)]
struct ProviderError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// The message's `type`; `None` for text that is not a provider message.
fn message_type(text: &str) -> Option<String> {
    serde_json::from_str::<Envelope>(text)
        .ok()
        .map(|envelope| envelope.kind)
}

/// Parses `text` as `T` and turns it into events; a malformed message yields none.
fn events_of<T: serde::de::DeserializeOwned>(
    text: &str,
    to_events: impl FnOnce(T) -> Vec<SttEvent>,
) -> Normalised {
    Normalised::Events(
        serde_json::from_str::<T>(text)
            .map(to_events)
            .unwrap_or_default(),
    )
}

fn ms(offset_ms: i64, seconds: f64) -> i64 {
    offset_ms + (seconds * 1000.0).round() as i64
}

fn error_of(text: &str) -> SttFailure {
    let err: ProviderError = serde_json::from_str(text).unwrap_or(ProviderError {
        code: None,
        description: None,
    });
    SttFailure::fatal(format!(
        "provider error {}: {}",
        err.code.unwrap_or_default(),
        err.description.unwrap_or_default()
    ))
}

/// Normalises Deepgram v1 live messages for one stream.
#[derive(Debug, Default)]
pub struct V1Normalizer {
    offset_ms: i64,
    segments: Vec<String>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    confidence: Option<f64>,
}

impl V1Normalizer {
    /// A normaliser for a stream whose audio starts at call time `offset_ms`.
    pub fn new(offset_ms: i64) -> Self {
        Self {
            offset_ms,
            ..Self::default()
        }
    }

    /// One text message from the server.
    pub fn on_message(&mut self, text: &str) -> Normalised {
        match message_type(text).as_deref() {
            Some("Results") => events_of(text, |results| self.on_results(results)),
            Some("UtteranceEnd") => Normalised::Events(self.close_turn().into_iter().collect()),
            Some("Error") => Normalised::Failure(error_of(text)),
            _ => Normalised::Events(Vec::new()),
        }
    }

    /// The stream ended after `CloseStream`: an unfinished utterance becomes a turn.
    pub fn on_close(&mut self) -> Vec<SttEvent> {
        self.close_turn().into_iter().collect()
    }

    fn joined(&self, extra: Option<&str>) -> String {
        let mut parts: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
            parts.push(extra.trim());
        }
        parts.join(" ")
    }

    fn on_results(&mut self, results: V1Results) -> Vec<SttEvent> {
        let alternative = results.channel.alternatives.into_iter().next();
        let transcript = alternative
            .as_ref()
            .map(|a| a.transcript.trim().to_string())
            .unwrap_or_default();
        let start = ms(self.offset_ms, results.start);
        let end = ms(self.offset_ms, results.start + results.duration);
        let mut out = Vec::new();
        if !results.is_final {
            let text = self.joined(Some(&transcript));
            if !text.is_empty() {
                out.push(SttEvent::Partial {
                    text,
                    start_ms: Some(self.start_ms.unwrap_or(start)),
                    end_ms: Some(end),
                });
            }
            return out;
        }
        if !transcript.is_empty() {
            self.start_ms.get_or_insert(start);
            self.end_ms = Some(end);
            self.confidence = alternative.and_then(|a| a.confidence);
            self.segments.push(transcript);
        }
        if results.speech_final {
            out.extend(self.close_turn());
        } else if !self.segments.is_empty() {
            out.push(SttEvent::Partial {
                text: self.joined(None),
                start_ms: self.start_ms,
                end_ms: self.end_ms,
            });
        }
        out
    }

    fn close_turn(&mut self) -> Option<SttEvent> {
        if self.segments.is_empty() {
            return None;
        }
        let text = self.joined(None);
        self.segments.clear();
        Some(SttEvent::Final {
            text,
            start_ms: self.start_ms.take(),
            end_ms: self.end_ms.take(),
            confidence: self.confidence.take(),
        })
    }
}

/// Normalises Deepgram Flux messages for one stream.
#[derive(Debug, Default)]
pub struct FluxNormalizer {
    offset_ms: i64,
    open: Option<(u64, String, i64, i64)>,
    finished_turn: Option<u64>,
}

impl FluxNormalizer {
    /// A normaliser for a stream whose audio starts at call time `offset_ms`.
    pub fn new(offset_ms: i64) -> Self {
        Self {
            offset_ms,
            ..Self::default()
        }
    }

    /// One text message from the server.
    pub fn on_message(&mut self, text: &str) -> Normalised {
        match message_type(text).as_deref() {
            Some("TurnInfo") => events_of(text, |info| self.on_turn_info(info)),
            Some("Error") => Normalised::Failure(error_of(text)),
            _ => Normalised::Events(Vec::new()),
        }
    }

    /// The stream closed: Flux sends no `EndOfTurn` on `CloseStream`, so the open turn's last
    /// update stands as its final.
    pub fn on_close(&mut self) -> Vec<SttEvent> {
        match self.open.take() {
            Some((index, text, start, end))
                if self.finished_turn != Some(index) && !text.is_empty() =>
            {
                self.finished_turn = Some(index);
                vec![SttEvent::Final {
                    text,
                    start_ms: Some(start),
                    end_ms: Some(end),
                    confidence: None,
                }]
            }
            _ => Vec::new(),
        }
    }

    fn on_turn_info(&mut self, info: FluxTurnInfo) -> Vec<SttEvent> {
        if self
            .finished_turn
            .is_some_and(|done| info.turn_index <= done)
        {
            return Vec::new();
        }
        let (start, end) = (
            ms(self.offset_ms, info.audio_window_start),
            ms(self.offset_ms, info.audio_window_end),
        );
        let text = info.transcript.trim().to_string();
        if info.event == "EndOfTurn" {
            self.open = None;
            self.finished_turn = Some(info.turn_index);
            if text.is_empty() {
                return Vec::new();
            }
            return vec![SttEvent::Final {
                text,
                start_ms: Some(start),
                end_ms: Some(end),
                confidence: info.end_of_turn_confidence,
            }];
        }
        if text.is_empty() {
            return Vec::new();
        }
        self.open = Some((info.turn_index, text.clone(), start, end));
        vec![SttEvent::Partial {
            text,
            start_ms: Some(start),
            end_ms: Some(end),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(
        transcript: &str,
        start: f64,
        duration: f64,
        is_final: bool,
        speech_final: bool,
    ) -> String {
        serde_json::json!({
            "type": "Results", "start": start, "duration": duration, "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9}]}
        })
        .to_string()
    }

    fn events(n: Normalised) -> Vec<SttEvent> {
        match n {
            Normalised::Events(e) => e,
            Normalised::Failure(f) => panic!("unexpected failure {f:?}"),
        }
    }

    fn finals(events: &[SttEvent]) -> Vec<(String, Option<i64>, Option<i64>)> {
        events
            .iter()
            .filter_map(|e| match e {
                SttEvent::Final {
                    text,
                    start_ms,
                    end_ms,
                    ..
                } => Some((text.clone(), *start_ms, *end_ms)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn v1_interims_replace_and_finals_append_until_speech_final() {
        let mut n = V1Normalizer::new(10_000);
        let e = events(n.on_message(&results("i need", 0.0, 0.5, false, false)));
        assert_eq!(
            e,
            vec![SttEvent::Partial {
                text: "i need".into(),
                start_ms: Some(10_000),
                end_ms: Some(10_500)
            }]
        );
        let e = events(n.on_message(&results("i need to book", 0.0, 1.0, true, false)));
        assert!(matches!(&e[0], SttEvent::Partial { text, .. } if text == "i need to book"));
        let e = events(n.on_message(&results("a plumber", 1.0, 0.6, false, false)));
        assert!(
            matches!(&e[0], SttEvent::Partial { text, .. } if text == "i need to book a plumber")
        );
        let e = events(n.on_message(&results("a plumber", 1.0, 0.7, true, true)));
        assert_eq!(
            finals(&e),
            vec![(
                "i need to book a plumber".into(),
                Some(10_000),
                Some(11_700)
            )]
        );
    }

    #[test]
    fn v1_empty_finals_are_skipped_and_utterance_end_closes_the_turn() {
        let mut n = V1Normalizer::new(0);
        assert!(events(n.on_message(&results("", 0.0, 1.0, true, true))).is_empty());
        events(n.on_message(&results("yes please", 1.0, 0.8, true, false)));
        let e =
            events(n.on_message(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":1.8}"#));
        assert_eq!(
            finals(&e),
            vec![("yes please".into(), Some(1_000), Some(1_800))]
        );
        assert!(events(n.on_message(r#"{"type":"UtteranceEnd","last_word_end":2.0}"#)).is_empty());
        events(n.on_message(&results("and then", 3.0, 0.5, true, false)));
        assert_eq!(
            finals(&n.on_close()),
            vec![("and then".into(), Some(3_000), Some(3_500))]
        );
    }

    #[test]
    fn v1_ignores_metadata_and_garbage_and_reports_errors_as_fatal() {
        let mut n = V1Normalizer::new(0);
        assert!(events(n.on_message(r#"{"type":"Metadata","request_id":"x"}"#)).is_empty());
        assert!(events(n.on_message("not json")).is_empty());
        assert!(
            matches!(n.on_message(r#"{"type":"Error","code":"BAD","description":"no"}"#), Normalised::Failure(f) if !f.retryable)
        );
    }

    fn turn(event: &str, index: u64, transcript: &str, start: f64, end: f64) -> String {
        serde_json::json!({"type": "TurnInfo", "event": event, "turn_index": index, "transcript": transcript,
            "audio_window_start": start, "audio_window_end": end}).to_string()
    }

    #[test]
    fn flux_updates_replace_and_end_of_turn_is_final_once() {
        let mut n = FluxNormalizer::new(2_000);
        let e = events(n.on_message(&turn("Update", 0, "yes", 0.0, 0.3)));
        assert!(matches!(&e[0], SttEvent::Partial { text, .. } if text == "yes"));
        events(n.on_message(&turn("EagerEndOfTurn", 0, "yes tuesday", 0.0, 0.8)));
        let e = events(n.on_message(&turn("EndOfTurn", 0, "yes tuesday", 0.0, 0.9)));
        assert_eq!(
            finals(&e),
            vec![("yes tuesday".into(), Some(2_000), Some(2_900))]
        );
        assert!(
            events(n.on_message(&turn("EndOfTurn", 0, "yes tuesday", 0.0, 0.9))).is_empty(),
            "once per turn"
        );
        assert!(n.on_close().is_empty());
    }

    #[test]
    fn flux_open_turn_stands_as_final_when_the_stream_closes() {
        let mut n = FluxNormalizer::new(0);
        events(n.on_message(&turn("StartOfTurn", 1, "", 1.0, 1.0)));
        events(n.on_message(&turn("Update", 1, "at ten", 1.0, 1.5)));
        events(n.on_message(&turn("Update", 1, "at ten works", 1.0, 1.9)));
        assert_eq!(
            finals(&n.on_close()),
            vec![("at ten works".into(), Some(1_000), Some(1_900))]
        );
        assert!(n.on_close().is_empty());
    }
}
