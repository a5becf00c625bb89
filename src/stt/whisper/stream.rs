//! Streaming on top of a batch model: an energy voice-activity detector cuts each call's audio
//! into speech segments; each finished segment is decoded once by a shared pool of Whisper
//! workers (their own OS threads, never actor threads) behind a bounded queue, and becomes a
//! final. While a segment grows, it is re-decoded about every `partial_every_ms` for partials
//! when the queue has room (partials are skipped, never finals, when the workers are busy).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Decoded, WhisperEngine};
use crate::audio::pcm::rms_s16le;
use crate::metrics::{DecodeKind, WhisperMetrics};
use crate::stt::{
    StreamConfig, SttEvent, SttFailure, SttInput, SttProvider, SttSession, SttSignal,
};

/// Settings of the local Whisper provider (`[stt.whisper]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhisperSettings {
    /// Model directory; default `DATA_DIR/models/whisper-tiny.en` (fetched when missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<std::path::PathBuf>,
    /// Worker threads, each with its own copy of the model (~300 MB).
    pub workers: usize,
    /// Decode jobs waiting at most; finals wait for room, partials are skipped.
    pub queue: usize,
    /// RMS (s16 scale) above which a 20 ms frame is speech.
    pub vad_threshold: f64,
    /// Silence that ends a segment.
    pub silence_ms: u64,
    /// Shortest speech that is decoded.
    pub min_speech_ms: u64,
    /// Speech between partial re-decodes (0: no partials).
    pub partial_every_ms: u64,
    /// A segment longer than this is cut and decoded.
    pub max_segment_ms: u64,
    /// Beam width of final decodes (1: greedy). Partials are always greedy.
    pub beam_size: usize,
    /// At hang-up, how long to wait for the last segment's decode (it may queue behind other
    /// calls' finals and take seconds for a long segment).
    pub finalize_timeout_ms: u64,
}

impl Default for WhisperSettings {
    fn default() -> Self {
        Self {
            model_dir: None,
            workers: 1,
            queue: 16,
            vad_threshold: 300.0,
            silence_ms: 600,
            min_speech_ms: 250,
            partial_every_ms: 1_500,
            max_segment_ms: 25_000,
            beam_size: super::engine::DEFAULT_BEAM,
            finalize_timeout_ms: 30_000,
        }
    }
}

struct Job {
    samples: Vec<f32>,
    kind: DecodeKind,
    beam: usize,
    reply: oneshot::Sender<Result<Decoded, String>>,
}

/// The shared decoder pool.
pub struct WhisperPool {
    jobs: mpsc::Sender<Job>,
    metrics: WhisperMetrics,
}

impl WhisperPool {
    /// Starts `workers` threads, each loading the model; fails if the model cannot be loaded.
    pub fn start(
        model_dir: &Path,
        workers: usize,
        queue: usize,
        metrics: WhisperMetrics,
    ) -> Result<Self, String> {
        let (jobs, receiver) = mpsc::channel::<Job>(queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers.max(1) {
            let mut engine = WhisperEngine::load(model_dir).map_err(|e| e.to_string())?;
            let (receiver, shared) = (receiver.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("whisper-{index}"))
                .spawn(move || loop {
                    let metrics = &shared;
                    let job = match receiver.lock() {
                        Ok(mut rx) => rx.blocking_recv(),
                        Err(_) => None,
                    };
                    let Some(job) = job else { return };
                    metrics.queue_length.dec();
                    metrics.busy_workers.inc();
                    let started = Instant::now();
                    let result = engine
                        .decode(&job.samples, job.beam)
                        .map_err(|e| e.to_string());
                    metrics.busy_workers.dec();
                    match &result {
                        Ok(_) => metrics.record_decode(
                            job.kind,
                            job.samples.len() as f64 / 16_000.0,
                            started.elapsed().as_secs_f64(),
                        ),
                        Err(_) => {
                            metrics.failures.inc();
                        }
                    }
                    let _ = job.reply.send(result);
                })
                .map_err(|e| e.to_string())?;
            metrics.workers.inc();
        }
        Ok(Self { jobs, metrics })
    }

    /// Decode jobs waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.metrics.queue_length.get().max(0) as usize
    }

    /// Queues a decode; a partial (`Partial`) is skipped when the queue is full, a final waits
    /// for room. `None`: skipped, or the workers are gone.
    async fn decode(
        &self,
        samples: Vec<f32>,
        kind: DecodeKind,
        beam: usize,
    ) -> Option<Result<Decoded, String>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            samples,
            kind,
            beam,
            reply,
        };
        self.metrics.queue_length.inc();
        let queued = match kind {
            DecodeKind::Final => self.jobs.send(job).await.is_ok(),
            DecodeKind::Partial => self.jobs.try_send(job).is_ok(),
        };
        if !queued {
            self.metrics.queue_length.dec();
            if kind == DecodeKind::Partial {
                self.metrics.skipped_partials.inc();
            }
            return None;
        }
        answer.await.ok()
    }
}

/// Where speech is, from 20 ms frames. Pure.
#[derive(Debug, Default)]
pub struct Segmenter {
    threshold: f64,
    silence_ms: i64,
    min_speech_ms: i64,
    max_segment_ms: i64,
    start_ms: Option<i64>,
    speech_ms: i64,
    silent_for: i64,
}

/// What one frame means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing changed.
    None,
    /// Speech began at this call time.
    Start(i64),
    /// The segment `[start, end)` is complete (or was cut at its maximum length).
    End { start_ms: i64, end_ms: i64 },
    /// The segment was too short to decode; forget it.
    Discard,
}

impl Segmenter {
    /// A segmenter with the provider's settings.
    pub fn new(s: &WhisperSettings) -> Self {
        Self {
            threshold: s.vad_threshold,
            silence_ms: s.silence_ms as i64,
            min_speech_ms: s.min_speech_ms as i64,
            max_segment_ms: s.max_segment_ms as i64,
            ..Self::default()
        }
    }

    /// Feeds one 20 ms frame that starts at call time `at_ms`.
    pub fn push(&mut self, frame: &[u8], at_ms: i64) -> Cut {
        let speech = rms_s16le(frame) > self.threshold;
        match (self.start_ms, speech) {
            (None, false) => Cut::None,
            (None, true) => {
                self.start_ms = Some(at_ms);
                self.speech_ms = 20;
                self.silent_for = 0;
                Cut::Start(at_ms)
            }
            (Some(start), _) => {
                if speech {
                    self.speech_ms += 20;
                    self.silent_for = 0;
                } else {
                    self.silent_for += 20;
                }
                let end = at_ms + 20;
                if self.silent_for >= self.silence_ms || end - start >= self.max_segment_ms {
                    self.start_ms = None;
                    if self.speech_ms < self.min_speech_ms {
                        return Cut::Discard;
                    }
                    return Cut::End {
                        start_ms: start,
                        end_ms: end - self.silent_for,
                    };
                }
                Cut::None
            }
        }
    }

    /// The open segment, if any (for the end of the stream).
    pub fn open(&mut self, now_ms: i64) -> Option<(i64, i64)> {
        let start = self.start_ms.take()?;
        (self.speech_ms >= self.min_speech_ms).then_some((start, now_ms - self.silent_for))
    }
}

/// The local Whisper provider.
pub struct WhisperProvider {
    pool: Arc<WhisperPool>,
    settings: WhisperSettings,
    queue_frames: usize,
}

impl WhisperProvider {
    /// A provider over a started pool.
    pub fn new(pool: Arc<WhisperPool>, settings: WhisperSettings, queue_frames: usize) -> Self {
        Self {
            pool,
            settings,
            queue_frames: queue_frames.max(1),
        }
    }
}

impl SttProvider for WhisperProvider {
    fn name(&self) -> &'static str {
        "whisper"
    }

    /// Every segment ends with a final (at silence, at the maximum length, or at `Finalize`);
    /// partial re-decodes can be seconds apart, longer than the promotion timeout.
    fn promotes_stale_partials(&self) -> bool {
        false
    }

    fn finalize_timeout(&self, configured: std::time::Duration) -> std::time::Duration {
        configured.max(std::time::Duration::from_millis(
            self.settings.finalize_timeout_ms,
        ))
    }

    fn open(
        &self,
        config: StreamConfig,
    ) -> LocalBoxFuture<'static, Result<SttSession, SttFailure>> {
        let (audio_tx, audio_rx) = mpsc::channel(self.queue_frames);
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        let task = StreamTask {
            generation: Default::default(),
            partial_in_flight: Default::default(),
            pre_roll: std::collections::VecDeque::with_capacity(PRE_ROLL_FRAMES),
            pool: self.pool.clone(),
            segmenter: Segmenter::new(&self.settings),
            partial_every_ms: self.settings.partial_every_ms as i64,
            beam: self.settings.beam_size.max(1),
            samples: Vec::new(),
            segment_start: None,
            next_partial_ms: 0,
            position_ms: config.start_offset_ms,
        };
        actix_web::rt::spawn(task.run(audio_rx, signal_tx));
        Box::pin(async move {
            Ok(SttSession {
                audio: audio_tx,
                signals: signal_rx,
            })
        })
    }
}

/// Audio kept from before the detected onset: quiet first sounds ("c" in "could") fall under
/// the threshold, and Whisper needs them.
const PRE_ROLL_FRAMES: usize = 15;

struct StreamTask {
    /// Bumped when a segment ends: a partial decoded for an older segment is dropped.
    generation: std::rc::Rc<std::cell::Cell<u64>>,
    partial_in_flight: std::rc::Rc<std::cell::Cell<bool>>,
    pre_roll: std::collections::VecDeque<Vec<f32>>,
    pool: Arc<WhisperPool>,
    segmenter: Segmenter,
    partial_every_ms: i64,
    beam: usize,
    samples: Vec<f32>,
    segment_start: Option<i64>,
    next_partial_ms: i64,
    position_ms: i64,
}

impl StreamTask {
    async fn run(
        mut self,
        mut audio: mpsc::Receiver<SttInput>,
        signals: mpsc::UnboundedSender<SttSignal>,
    ) {
        while let Some(input) = audio.recv().await {
            match input {
                SttInput::Audio { pcm, offset_ms } => {
                    self.position_ms = offset_ms;
                    for frame in pcm.chunks(640) {
                        let at = self.position_ms;
                        self.position_ms += (frame.len() as i64 / 2) * 1000 / 16_000;
                        if let Some(event) = self.on_frame(frame, at, &signals).await {
                            if signals.send(event).is_err() {
                                return;
                            }
                        }
                    }
                }
                SttInput::Finalize => {
                    if let Some((start, end)) = self.segmenter.open(self.position_ms) {
                        if let Some(event) = self.decode_final(start, end).await {
                            let _ = signals.send(event);
                        }
                    }
                    let _ = signals.send(SttSignal::Closed);
                    return;
                }
            }
        }
    }

    async fn on_frame(
        &mut self,
        frame: &[u8],
        at: i64,
        signals: &mpsc::UnboundedSender<SttSignal>,
    ) -> Option<SttSignal> {
        let cut = self.segmenter.push(frame, at);
        let pcm: Vec<f32> = frame
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
            .collect();
        if let Cut::Start(start) = cut {
            self.samples.clear();
            self.samples.extend(self.pre_roll.drain(..).flatten());
            self.segment_start = Some(start);
            self.next_partial_ms = start + self.partial_every_ms;
        }
        if self.segment_start.is_some() {
            self.samples.extend(pcm);
        } else {
            if self.pre_roll.len() == PRE_ROLL_FRAMES {
                self.pre_roll.pop_front();
            }
            self.pre_roll.push_back(pcm);
        }
        match cut {
            Cut::End { start_ms, end_ms } => self.decode_final(start_ms, end_ms).await,
            Cut::Discard => {
                self.segment_start = None;
                self.samples.clear();
                None
            }
            _ if self.partial_every_ms > 0
                && self.segment_start.is_some()
                && at >= self.next_partial_ms =>
            {
                self.next_partial_ms = at + self.partial_every_ms;
                self.spawn_partial(at, signals);
                None
            }
            _ => None,
        }
    }

    /// Re-decodes the growing segment off the audio path: at most one at a time per call, and
    /// its result is dropped if the segment has ended meanwhile (its final is authoritative).
    fn spawn_partial(&self, at: i64, signals: &mpsc::UnboundedSender<SttSignal>) {
        if self.partial_in_flight.get() {
            return;
        }
        self.partial_in_flight.set(true);
        let (pool, samples, signals) = (self.pool.clone(), self.samples.clone(), signals.clone());
        let (generation, in_flight) = (self.generation.clone(), self.partial_in_flight.clone());
        let (mine, start_ms) = (generation.get(), self.segment_start);
        actix_web::rt::spawn(async move {
            let decoded = pool.decode(samples, DecodeKind::Partial, 1).await;
            in_flight.set(false);
            if let Some(Ok(Decoded { text, .. })) = decoded {
                if generation.get() == mine && !text.is_empty() {
                    let _ = signals.send(SttSignal::Event(SttEvent::Partial {
                        text,
                        start_ms,
                        end_ms: Some(at + 20),
                    }));
                }
            }
        });
    }

    async fn decode_final(&mut self, start_ms: i64, end_ms: i64) -> Option<SttSignal> {
        self.segment_start = None;
        self.generation.set(self.generation.get() + 1);
        let samples = std::mem::take(&mut self.samples);
        let started = Instant::now();
        let decoded = self
            .pool
            .decode(samples, DecodeKind::Final, self.beam)
            .await;
        tracing::info!(
            segment_ms = end_ms - start_ms,
            decode_ms = started.elapsed().as_millis() as u64,
            queue = self.pool.queue_len(),
            "whisper final decoded"
        );
        match decoded {
            Some(Ok(Decoded { text, avg_logprob })) if !text.is_empty() => {
                Some(SttSignal::Event(SttEvent::Final {
                    text,
                    start_ms: Some(start_ms),
                    end_ms: Some(end_ms),
                    // Mean token probability of the chosen hypothesis.
                    confidence: Some(avg_logprob.exp()),
                }))
            }
            Some(Ok(_)) => None,
            Some(Err(err)) => Some(SttSignal::Failed(SttFailure::fatal(format!(
                "whisper failed: {err}"
            )))),
            None => Some(SttSignal::Failed(SttFailure::retryable(
                "whisper workers are gone",
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
