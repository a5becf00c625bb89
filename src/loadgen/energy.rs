//! What the mock Deepgram "hears": runs of speech found by energy in s16le mono audio. Pure;
//! audio in, results out, with times in ms from the stream's first sample, as Deepgram gives
//! them.
//!
//! The audio is read in 10 ms windows. A window whose RMS is above the threshold is voiced; a
//! run starts with the first voiced window and ends once `endpoint_ms` of unvoiced audio follow
//! its last voiced window, when it becomes a final (`speech_final`) covering `[first voiced,
//! last voiced]` — if it lasted at least `min_speech_ms` (shorter ones are clicks, dropped).
//! While a run lasts, an interim covering `[start, now]` comes every `interim_every_ms`. The
//! same audio always gives the same results, so a stream that replays audio after a reconnect
//! hears the same runs again (shifted by wherever its replay began).

/// Analysis window.
const WINDOW_MS: u64 = 10;

/// One result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Speech is going on (`is_final: false`).
    Interim { start_ms: u64, end_ms: u64 },
    /// A run is over: `speech_final` when silence ended it, else it was flushed (Finalize).
    Final {
        start_ms: u64,
        end_ms: u64,
        speech_final: bool,
    },
    /// The first voiced window of a run (Deepgram's `SpeechStarted`).
    Started { at_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    last_voiced_end: u64,
    last_interim: u64,
}

/// Finds speech runs in one stream.
#[derive(Debug)]
pub struct EnergyDetector {
    rate: u64,
    window: u64,
    carry: Vec<u8>,
    /// Samples analysed so far.
    pos: u64,
    run: Option<Run>,
    endpoint: u64,
    min_speech: u64,
    interim_every: Option<u64>,
    /// Mean square (of i16 samples) above which a window is voiced.
    threshold: f64,
}

impl EnergyDetector {
    /// A detector for audio at `rate` Hz; `endpoint_ms` of silence end a run; interims every
    /// `interim_every_ms` (None: no interims).
    pub fn new(rate: u32, endpoint_ms: u64, interim_every_ms: Option<u64>) -> Self {
        let rate = u64::from(rate.max(1000));
        let samples = |ms: u64| ms * rate / 1000;
        Self {
            rate,
            window: samples(WINDOW_MS).max(1),
            carry: Vec::new(),
            pos: 0,
            run: None,
            endpoint: samples(endpoint_ms.max(WINDOW_MS)),
            min_speech: samples(60),
            interim_every: interim_every_ms.map(|ms| samples(ms.max(WINDOW_MS))),
            threshold: 300.0 * 300.0,
        }
    }

    /// Audio received so far, ms.
    pub fn stream_ms(&self) -> u64 {
        self.ms(self.pos + (self.carry.len() / 2) as u64)
    }

    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / self.rate
    }

    /// Feeds audio (any chunking; an odd byte waits for its pair).
    pub fn push(&mut self, pcm: &[u8]) -> Vec<Heard> {
        self.carry.extend_from_slice(pcm);
        let window_bytes = self.window as usize * 2;
        let whole = self.carry.len() / window_bytes * window_bytes;
        let mut out = Vec::new();
        let carry = std::mem::take(&mut self.carry);
        for chunk in carry[..whole].chunks_exact(window_bytes) {
            let square: f64 = chunk
                .chunks_exact(2)
                .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])).powi(2))
                .sum();
            let voiced = square / self.window as f64 > self.threshold;
            let (start, end) = (self.pos, self.pos + self.window);
            self.pos = end;
            if let Some(heard) = self.window_done(voiced, start, end) {
                out.push(heard);
            }
        }
        self.carry = carry;
        self.carry.drain(..whole);
        out
    }

    fn window_done(&mut self, voiced: bool, start: u64, end: u64) -> Option<Heard> {
        match (&mut self.run, voiced) {
            (None, true) => {
                self.run = Some(Run {
                    start,
                    last_voiced_end: end,
                    last_interim: start,
                });
                Some(Heard::Started {
                    at_ms: self.ms(start),
                })
            }
            (Some(run), true) => {
                run.last_voiced_end = end;
                match self.interim_every {
                    Some(every) if end - run.last_interim >= every => {
                        run.last_interim = end;
                        let start_ms = run.start * 1000 / self.rate;
                        Some(Heard::Interim {
                            start_ms,
                            end_ms: self.ms(end),
                        })
                    }
                    _ => None,
                }
            }
            (Some(run), false) if end - run.last_voiced_end >= self.endpoint => self.close(true),
            _ => None,
        }
    }

    /// Ends the open run, if any: a final when it was long enough.
    fn close(&mut self, speech_final: bool) -> Option<Heard> {
        let run = self.run.take()?;
        (run.last_voiced_end - run.start >= self.min_speech).then(|| Heard::Final {
            start_ms: self.ms(run.start),
            end_ms: self.ms(run.last_voiced_end),
            speech_final,
        })
    }

    /// Finalize / CloseStream: the open run becomes a final now (`speech_final: false`).
    pub fn flush(&mut self) -> Option<Heard> {
        self.close(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64) -> Vec<u8> {
        (0..ms * 16)
            .map(|i| ((i as f64 * 0.3).sin() * 4000.0) as i16)
            .flat_map(i16::to_le_bytes)
            .collect()
    }

    fn silence(ms: u64) -> Vec<u8> {
        vec![0; ms as usize * 32]
    }

    fn finals(heard: &[Heard]) -> Vec<(u64, u64, bool)> {
        heard
            .iter()
            .filter_map(|h| match *h {
                Heard::Final {
                    start_ms,
                    end_ms,
                    speech_final,
                } => Some((start_ms, end_ms, speech_final)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn speech_then_silence_gives_interims_then_a_timed_final() {
        let mut d = EnergyDetector::new(16_000, 300, Some(250));
        let mut audio = silence(200);
        audio.extend(tone(1000));
        audio.extend(silence(400));
        // Odd chunking: results do not depend on how the audio arrives.
        let mut heard = Vec::new();
        for chunk in audio.chunks(333) {
            heard.extend(d.push(chunk));
        }
        assert_eq!(heard[0], Heard::Started { at_ms: 200 });
        let interims = heard
            .iter()
            .filter(|h| matches!(h, Heard::Interim { .. }))
            .count();
        assert_eq!(interims, 4);
        assert_eq!(finals(&heard), vec![(200, 1200, true)]);
        assert_eq!(d.stream_ms(), 1600);
        assert_eq!(d.flush(), None);
    }

    #[test]
    fn an_open_run_is_flushed_and_a_click_is_not_a_turn() {
        let mut d = EnergyDetector::new(16_000, 300, None);
        let mut audio = tone(500);
        audio.extend(silence(100));
        let heard = d.push(&audio);
        assert!(finals(&heard).is_empty());
        assert!(heard.iter().all(|h| !matches!(h, Heard::Interim { .. })));
        assert_eq!(
            d.flush(),
            Some(Heard::Final {
                start_ms: 0,
                end_ms: 500,
                speech_final: false
            })
        );
        let mut click = tone(30);
        click.extend(silence(400));
        assert!(finals(&d.push(&click)).is_empty());
    }

    #[test]
    fn eight_khz_audio_is_timed_at_its_own_rate() {
        let mut d = EnergyDetector::new(8_000, 300, None);
        // 500 ms of tone at 8 kHz is 4000 samples (the 16 kHz helper's first half).
        let mut audio = tone(250);
        audio.extend(vec![0; 8 * 2 * 400]);
        assert_eq!(finals(&d.push(&audio)), vec![(0, 500, true)]);
    }
}
