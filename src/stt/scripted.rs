//! The `scripted` provider: deterministic partials and finals computed from the audio it
//! receives, for tests and load testing. Not speech recognition.
//!
//! - `fixed` mode: one turn per `turn_ms` of call audio. Turn `k` spans
//!   `[(k-1)·turn_ms, k·turn_ms)`; `partials_per_turn` cumulative partials inside it, the final
//!   at its end. Times are call offsets, so a reconnected stream that replays audio from the last
//!   final continues with turn `k+1`: nothing lost, nothing repeated.
//! - `energy` mode: one turn per segment of speech energy (RMS above `energy_threshold`, closed
//!   by `silence_ms` of silence), partials every `partial_every_ms` of speech.
//!
//! Turn `k`'s text is line `k` of the script (cycled). Faults for tests: the first
//! `fail_sessions` streams of every call fail after `fail_after_ms` of their own audio
//! (retryable unless `fail_fatal`); `chunk_delay_ms` makes the provider slower than real time.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{StreamConfig, SttEvent, SttFailure, SttInput, SttProvider, SttSession, SttSignal};
use crate::audio::pcm::rms_s16le;

/// How the script decides where turns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptMode {
    /// One turn per `turn_ms` of audio.
    Fixed,
    /// One turn per segment of speech energy.
    Energy,
}

/// Settings of the scripted provider (`[stt.scripted]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedSettings {
    pub mode: ScriptMode,
    /// Fixed mode: audio per turn.
    pub turn_ms: u64,
    /// Fixed mode: partials before each final.
    pub partials_per_turn: u32,
    /// Energy mode: RMS (s16 scale) above which a 20 ms frame is speech.
    pub energy_threshold: f64,
    /// Energy mode: silence that ends a turn.
    pub silence_ms: u64,
    /// Energy mode: shortest speech that makes a turn.
    pub min_speech_ms: u64,
    /// Energy mode: speech between partials.
    pub partial_every_ms: u64,
    /// Turn texts, cycled.
    pub lines: Vec<String>,
    /// A text file whose non-empty lines replace `lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_file: Option<PathBuf>,
    /// The first N streams of every call fail…
    pub fail_sessions: u32,
    /// …after this much of their own audio.
    pub fail_after_ms: u64,
    /// Injected failures are fatal (no reconnect) instead of retryable.
    pub fail_fatal: bool,
    /// Time the provider takes per audio message, simulating an STT slower than real time.
    pub chunk_delay_ms: u64,
}

impl Default for ScriptedSettings {
    fn default() -> Self {
        Self {
            mode: ScriptMode::Fixed,
            turn_ms: 2_000,
            partials_per_turn: 2,
            energy_threshold: 400.0,
            silence_ms: 600,
            min_speech_ms: 200,
            partial_every_ms: 400,
            lines: [
                "hello this is a test call",
                "i would like to book a plumber",
                "tomorrow morning would be best",
                "my address is twelve main street",
                "thank you very much goodbye",
            ]
            .map(String::from)
            .to_vec(),
            script_file: None,
            fail_sessions: 0,
            fail_after_ms: 0,
            fail_fatal: false,
            chunk_delay_ms: 0,
        }
    }
}

impl ScriptedSettings {
    /// Checks the settings, reading `script_file` if set; returns the turn texts.
    pub fn load_lines(&self) -> Result<Vec<String>, String> {
        if self.mode == ScriptMode::Fixed && self.turn_ms < 20 {
            return Err("stt.scripted.turn_ms must be at least 20".into());
        }
        let lines = match &self.script_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| format!("stt.scripted.script_file {}: {err}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            None => self.lines.clone(),
        };
        if lines.is_empty() {
            return Err("stt.scripted needs at least one line of text".into());
        }
        Ok(lines)
    }
}

/// The scripted provider.
pub struct ScriptedProvider {
    settings: Arc<ScriptedSettings>,
    lines: Arc<Vec<String>>,
    queue_frames: usize,
}

impl ScriptedProvider {
    /// A provider with validated settings; `queue_frames` bounds each stream's audio queue.
    pub fn new(settings: ScriptedSettings, queue_frames: usize) -> Result<Self, String> {
        let lines = settings.load_lines()?;
        Ok(Self {
            settings: Arc::new(settings),
            lines: Arc::new(lines),
            queue_frames: queue_frames.max(1),
        })
    }
}

impl SttProvider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn open(
        &self,
        config: StreamConfig,
    ) -> LocalBoxFuture<'static, Result<SttSession, SttFailure>> {
        let (audio_tx, mut audio_rx) = mpsc::channel(self.queue_frames);
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        let mut script = Script::new(self.settings.clone(), self.lines.clone(), &config);
        let delay = std::time::Duration::from_millis(self.settings.chunk_delay_ms);
        actix_web::rt::spawn(async move {
            while let Some(input) = audio_rx.recv().await {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let (signals, done) = match input {
                    SttInput::Audio { pcm, offset_ms } => script.push(&pcm, offset_ms),
                    SttInput::Finalize => (script.finalize(), true),
                };
                for signal in signals {
                    if signal_tx.send(signal).is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
        });
        Box::pin(async move {
            Ok(SttSession {
                audio: audio_tx,
                signals: signal_rx,
            })
        })
    }
}

/// The scripted stream's state. Pure: audio in, signals out.
pub struct Script {
    settings: Arc<ScriptedSettings>,
    lines: Arc<Vec<String>>,
    sample_rate: u32,
    fails: bool,
    session_audio_ms: u64,
    /// Fixed mode: call time up to which events were emitted.
    position_ms: i64,
    energy: EnergyState,
}

#[derive(Default)]
struct EnergyState {
    turns: usize,
    in_speech: bool,
    start_ms: i64,
    speech_ms: u64,
    silence_ms: u64,
    partials: usize,
}

impl Script {
    /// A script for one stream.
    pub fn new(
        settings: Arc<ScriptedSettings>,
        lines: Arc<Vec<String>>,
        config: &StreamConfig,
    ) -> Self {
        Self {
            fails: config.session_index < settings.fail_sessions,
            settings,
            lines,
            sample_rate: config.sample_rate,
            session_audio_ms: 0,
            position_ms: config.start_offset_ms,
            energy: EnergyState::default(),
        }
    }

    /// Feeds audio starting at call time `offset_ms`; returns signals and whether the stream ended.
    pub fn push(&mut self, pcm: &[u8], offset_ms: i64) -> (Vec<SttSignal>, bool) {
        let millis = (pcm.len() as u64 / 2) * 1000 / u64::from(self.sample_rate.max(1));
        self.session_audio_ms += millis;
        if self.fails && self.session_audio_ms >= self.settings.fail_after_ms {
            let message = format!(
                "scripted failure after {} ms of audio",
                self.session_audio_ms
            );
            let failure = match self.settings.fail_fatal {
                true => SttFailure::fatal(message),
                false => SttFailure::retryable(message),
            };
            return (vec![SttSignal::Failed(failure)], true);
        }
        let signals = match self.settings.mode {
            ScriptMode::Fixed => self.fixed_until(offset_ms + millis as i64),
            ScriptMode::Energy => self.energy(pcm, offset_ms),
        };
        (signals, false)
    }

    /// Ends the stream: in energy mode an open segment becomes a final; then `Closed`.
    pub fn finalize(&mut self) -> Vec<SttSignal> {
        let mut out = Vec::new();
        if self.settings.mode == ScriptMode::Energy && self.energy.in_speech {
            let end = self.energy.start_ms + self.energy.speech_ms as i64;
            out.extend(self.close_segment(end));
        }
        out.push(SttSignal::Closed);
        out
    }

    fn line(&self, turn: usize) -> &str {
        &self.lines[(turn.max(1) - 1) % self.lines.len()]
    }

    fn prefix(&self, turn: usize, fraction: f64) -> String {
        let words: Vec<&str> = self.line(turn).split_whitespace().collect();
        let n = ((words.len() as f64 * fraction).ceil() as usize).clamp(1, words.len().max(1));
        words[..n.min(words.len())].join(" ")
    }

    fn fixed_until(&mut self, end_ms: i64) -> Vec<SttSignal> {
        let turn_ms = self.settings.turn_ms as i64;
        let parts = i64::from(self.settings.partials_per_turn);
        let mut out = Vec::new();
        loop {
            let turn_index = self.position_ms.div_euclid(turn_ms);
            let into_turn = self.position_ms - turn_index * turn_ms;
            // Event points inside a turn: partial j at j/(parts+1) of it, the final at its end.
            let next_partial = (1..=parts)
                .map(|j| turn_ms * j / (parts + 1))
                .find(|&p| p > into_turn);
            let (offset, is_final) = next_partial.map_or((turn_ms, true), |p| (p, false));
            let at = turn_index * turn_ms + offset;
            if at > end_ms {
                return out;
            }
            self.position_ms = at;
            let turn = turn_index as usize + 1;
            let start = Some(turn_index * turn_ms);
            let event = if is_final {
                SttEvent::Final {
                    text: self.line(turn).to_string(),
                    start_ms: start,
                    end_ms: Some(at),
                    confidence: Some(0.99),
                }
            } else {
                let text = self.prefix(turn, offset as f64 / turn_ms as f64);
                SttEvent::Partial {
                    text,
                    start_ms: start,
                    end_ms: Some(at),
                }
            };
            out.push(SttSignal::Event(event));
        }
    }

    fn energy(&mut self, pcm: &[u8], offset_ms: i64) -> Vec<SttSignal> {
        let frame_bytes = (self.sample_rate as usize / 50) * 2;
        let mut out = Vec::new();
        for (i, frame) in pcm.chunks(frame_bytes.max(2)).enumerate() {
            let at = offset_ms + 20 * i as i64;
            let speech = rms_s16le(frame) > self.settings.energy_threshold;
            let e = &mut self.energy;
            if speech {
                if !e.in_speech {
                    *e = EnergyState {
                        turns: e.turns,
                        in_speech: true,
                        start_ms: at,
                        ..EnergyState::default()
                    };
                }
                e.speech_ms += 20;
                e.silence_ms = 0;
                if e.speech_ms >= self.settings.partial_every_ms * (e.partials as u64 + 1) {
                    e.partials += 1;
                    let (turn, fraction) = (e.turns + 1, (e.partials as f64 * 0.25).min(1.0));
                    let (start_ms, text) = (e.start_ms, self.prefix(turn, fraction));
                    out.push(SttSignal::Event(SttEvent::Partial {
                        text,
                        start_ms: Some(start_ms),
                        end_ms: Some(at + 20),
                    }));
                }
            } else if e.in_speech {
                e.silence_ms += 20;
                if e.silence_ms >= self.settings.silence_ms {
                    let end = at + 20 - e.silence_ms as i64;
                    out.extend(self.close_segment(end));
                }
            }
        }
        out
    }

    fn close_segment(&mut self, end_ms: i64) -> Option<SttSignal> {
        let e = std::mem::take(&mut self.energy);
        self.energy.turns = e.turns;
        if e.speech_ms < self.settings.min_speech_ms {
            return None;
        }
        self.energy.turns += 1;
        let text = self.line(self.energy.turns).to_string();
        Some(SttSignal::Event(SttEvent::Final {
            text,
            start_ms: Some(e.start_ms),
            end_ms: Some(end_ms),
            confidence: Some(0.99),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(settings: ScriptedSettings, start_offset_ms: i64, session_index: u32) -> Script {
        let lines = Arc::new(settings.load_lines().unwrap());
        let config = StreamConfig {
            call_id: uuid::Uuid::nil(),
            sample_rate: 16_000,
            start_offset_ms,
            session_index,
            api_key: None,
        };
        Script::new(Arc::new(settings), lines, &config)
    }

    fn finals(signals: &[SttSignal]) -> Vec<(String, Option<i64>)> {
        signals
            .iter()
            .filter_map(|s| match s {
                SttSignal::Event(SttEvent::Final { text, end_ms, .. }) => {
                    Some((text.clone(), *end_ms))
                }
                _ => None,
            })
            .collect()
    }

    fn feed(script: &mut Script, from_ms: i64, to_ms: i64, frame: &[u8]) -> Vec<SttSignal> {
        let mut out = Vec::new();
        let mut at = from_ms;
        while at < to_ms {
            out.extend(script.push(frame, at).0);
            at += 20;
        }
        out
    }

    #[test]
    fn fixed_mode_emits_partials_then_one_final_per_turn() {
        let mut s = script(ScriptedSettings::default(), 0, 0);
        let out = feed(&mut s, 0, 4_000, &[0; 640]);
        let kinds: Vec<&str> = out
            .iter()
            .map(|s| match s {
                SttSignal::Event(SttEvent::Partial { .. }) => "p",
                SttSignal::Event(SttEvent::Final { .. }) => "f",
                _ => "?",
            })
            .collect();
        assert_eq!(kinds, vec!["p", "p", "f", "p", "p", "f"]);
        assert_eq!(
            finals(&out),
            vec![
                ("hello this is a test call".into(), Some(2_000)),
                ("i would like to book a plumber".into(), Some(4_000))
            ]
        );
    }

    #[test]
    fn a_replayed_stream_continues_with_the_next_turn() {
        // The first stream saw turn 1 end at 2000 ms, then broke at 2900 ms; the new stream
        // replays from 2000 ms.
        let mut s = script(ScriptedSettings::default(), 2_000, 1);
        let out = feed(&mut s, 2_000, 6_000, &[0; 640]);
        assert_eq!(
            finals(&out),
            vec![
                ("i would like to book a plumber".into(), Some(4_000)),
                ("tomorrow morning would be best".into(), Some(6_000))
            ]
        );
    }

    #[test]
    fn injected_failures_hit_only_the_first_sessions() {
        let settings = ScriptedSettings {
            fail_sessions: 1,
            fail_after_ms: 500,
            ..ScriptedSettings::default()
        };
        let mut first = script(settings.clone(), 0, 0);
        let out = feed(&mut first, 0, 600, &[0; 640]);
        assert!(matches!(out.last(), Some(SttSignal::Failed(f)) if f.retryable));
        let mut second = script(settings, 0, 1);
        assert!(feed(&mut second, 0, 2_000, &[0; 640])
            .iter()
            .all(|s| !matches!(s, SttSignal::Failed(_))));
    }

    #[test]
    fn energy_mode_makes_one_turn_per_speech_segment() {
        let settings = ScriptedSettings {
            mode: ScriptMode::Energy,
            ..ScriptedSettings::default()
        };
        let mut s = script(settings, 0, 0);
        let loud: Vec<u8> = (0..320)
            .flat_map(|i| if i % 2 == 0 { 3000i16 } else { -3000 }.to_le_bytes())
            .collect();
        let mut out = feed(&mut s, 0, 1_000, &loud);
        out.extend(feed(&mut s, 1_000, 2_000, &[0; 640]));
        out.extend(feed(&mut s, 2_000, 2_500, &loud));
        out.extend(s.finalize());
        assert_eq!(
            finals(&out),
            vec![
                ("hello this is a test call".into(), Some(1_000)),
                ("i would like to book a plumber".into(), Some(2_500))
            ]
        );
        assert!(matches!(out.last(), Some(SttSignal::Closed)));
    }
}
