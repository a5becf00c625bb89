//! One simulated call from start to end: the plan every call of a run shares
//! ([`CallPlan`]), the driver that connects, streams the paced frames, awaits the finals and
//! ends the call ([`one_call`]), and the events it reads back ([`Seen`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use super::progress::Progress;
use super::protocol::Frames;
use super::transport::{self, Link};
use super::{chaos, feed, CallResult, LoadProtocol, LoadgenArgs, Told, FRAME_MS};
use crate::call::client::ClientEvent;

/// Where a call's events come from, each with its arrival time.
type SeenRx = UnboundedReceiver<(Instant, Seen)>;

/// What every call of a run shares: where and how to connect, the audio, the timings.
pub(super) struct CallPlan {
    protocol: LoadProtocol,
    base: String,
    audiosocket_addr: String,
    tenant_id: Uuid,
    token: Option<String>,
    frames: Frames,
    /// Audio per call: fixed, or a random length up to the second figure.
    audio_ms: (u64, Option<u64>),
    tail_ms: u64,
    final_wait: Duration,
    quiet: Duration,
    pub(super) expect_turns: Option<usize>,
    /// Where the clip's speech is, and its length: each final is also timed from the end of
    /// the speech it heard.
    speech: Vec<crate::audio::speech::SpeechSegment>,
    clip_ms: i64,
    /// The clip's reference transcript, as words (`--reference`).
    pub(super) reference: Option<Vec<String>>,
    feed: Option<feed::Feed>,
    chaos: Option<chaos::Chaos>,
    seed: u64,
    /// For API hang-ups: the agent, and the API's base URL and token.
    pub(super) http: ureq::Agent,
    pub(super) api: Option<(String, String)>,
}

impl CallPlan {
    /// The plan of a run's calls: its options, its audio (encoded here, once) and its seed.
    pub(super) fn new(
        args: &LoadgenArgs,
        audio: &Bytes,
        seed: u64,
        feed: Option<feed::Feed>,
    ) -> Self {
        let clip_ms = audio.len() as u64 / 32;
        Self {
            protocol: args.protocol,
            base: args.url.trim_end_matches('/').to_string(),
            audiosocket_addr: args.audiosocket_addr.clone(),
            tenant_id: args
                .tenant_id
                .unwrap_or(crate::ingress::admission::LOCAL_TENANT),
            token: args.token.clone(),
            frames: Frames::encode(args.protocol, audio),
            audio_ms: (
                args.call_secs.map_or(clip_ms, |s| (s * 1000.0) as u64),
                args.call_secs_max.map(|s| (s * 1000.0) as u64),
            ),
            tail_ms: args.tail_silence_ms / FRAME_MS * FRAME_MS,
            final_wait: Duration::from_secs(args.final_wait_secs),
            quiet: Duration::from_millis(args.quiet_ms),
            expect_turns: args.expect_turns,
            speech: crate::audio::speech::speech_segments(audio, args.speech_threshold, 300),
            clip_ms: clip_ms as i64,
            reference: None,
            feed,
            chaos: chaos::Chaos::from_args(&args.chaos),
            seed,
            http: chaos::http_agent(),
            api: args.api_token.clone().map(|t| (args.http_base(), t)),
        }
    }

    /// How many frames a call of `audio_ms` of audio sends (the audio, the tail of silence, or
    /// up to its cut), and with `--chaos` how it ends.
    fn frames_and_end(
        &self,
        rng: &mut fastrand::Rng,
        audio_ms: u64,
    ) -> (u64, Option<chaos::EndPlan>) {
        let total_ms = audio_ms + self.tail_ms;
        let frames = total_ms / FRAME_MS;
        let end = self
            .chaos
            .as_ref()
            .map(|c| c.plan(rng, audio_ms / FRAME_MS, frames));
        (end.map_or(frames, |e| e.frames), end)
    }

    fn pick_audio_ms(&self, rng: &mut fastrand::Rng) -> u64 {
        let ms = match self.audio_ms {
            (min, Some(max)) if max > min => rng.u64(min..=max),
            (ms, _) => ms,
        };
        ms / FRAME_MS * FRAME_MS
    }
}

/// One event a call saw, from its socket or the feed.
#[derive(Debug)]
pub(crate) enum Seen {
    Started(Uuid),
    Final {
        seq: i64,
        text: String,
        speaker: Option<String>,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    Error(String),
    Ended,
}

/// Runs call `index` of the run, from connecting to the last event it awaits.
pub(super) async fn one_call(plan: &CallPlan, progress: &Progress, index: u64) -> CallResult {
    let mut rng = chaos::call_rng(plan.seed, index);
    let external_id = plan.protocol.new_external_id();
    let audio_ms = plan.pick_audio_ms(&mut rng);
    let mut result = CallResult {
        external_id: external_id.clone(),
        audio_ms,
        ..CallResult::default()
    };
    let (socket_tx, socket_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Seen)>();
    // Carriers' events come from the feed: routed before connecting, so none is missed.
    let mut seen_rx = match &plan.feed {
        Some(feed) => feed.expect(&external_id),
        None => socket_rx,
    };
    let ids = transport::CallIds {
        external_id: &external_id,
        tenant_id: plan.tenant_id,
        token: plan.token.as_deref(),
    };
    let began = Instant::now();
    let link = Link::open(
        plan.protocol,
        &plan.base,
        &plan.audiosocket_addr,
        &ids,
        Some(socket_tx),
    )
    .await;
    let mut link = match link {
        Ok(link) => link,
        Err(err) => {
            result.errors.push(err);
            forget(plan, &external_id);
            return result;
        }
    };
    result.connect_ms = Some(began.elapsed().as_secs_f64() * 1000.0);
    let mut pending = Vec::new();

    // The generic socket answers with a `call` event before audio is welcome; carriers stream
    // at once (their start shows on the feed meanwhile).
    if plan.protocol.events_on_socket() {
        await_call_event(&mut seen_rx, began, &mut result).await;
    }

    let (frames, end) = plan.frames_and_end(&mut rng, audio_ms);
    result.end_path = end.map(|e| e.path);
    let start = Instant::now();
    result.audio_start = Some(start);
    if result.errors.is_empty() {
        pending = send_frames(
            plan,
            progress,
            &mut link,
            start,
            frames,
            &mut result,
            &mut seen_rx,
        )
        .await;
        // Outstanding finals: until the expected count, or quiet for the wait.
        let listening = plan.protocol.events_on_socket() || plan.feed.is_some();
        if listening && end.is_none_or(|e| e.path == chaos::EndPath::Normal) {
            wait_for_finals(plan, &mut seen_rx, &mut pending).await;
        }
    }
    let path = end.map_or(chaos::EndPath::Normal, |e| e.path);
    match chaos::end_link(plan, link, path, &mut result, &mut seen_rx, &mut pending).await {
        Ok(code) => result.close_code = code,
        Err(err) => result.errors.push(err),
    }
    // Finals the engine flushed while finishing still count: on the generic socket they came
    // before the close; on the feed they come before `call.ended`.
    collect_late_events(plan, &mut seen_rx, &mut pending, &mut result).await;
    forget(plan, &external_id);
    record_events(&mut result, pending, (began, start), plan, progress);
    result
}

/// The generic socket's `call` event (within 10 s): the call's id and when it started.
async fn await_call_event(seen_rx: &mut SeenRx, began: Instant, result: &mut CallResult) {
    match tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await {
        Ok(Some((at, Seen::Started(call_id)))) => {
            result.call_id = Some(call_id);
            result.started_ms = Some(at.duration_since(began).as_secs_f64() * 1000.0);
        }
        Ok(Some((_, Seen::Error(e)))) => result.errors.push(e),
        _ => result.errors.push("no call event within 10 s".into()),
    }
}

/// Sends `frames` frames, frame `k` due `20k` ms after `start` (the clip while the call's audio
/// lasts, silence after), recording each frame's lateness; returns the events that arrived
/// meanwhile. Stops at the first failed send.
async fn send_frames(
    plan: &CallPlan,
    progress: &Progress,
    link: &mut Link,
    start: Instant,
    frames: u64,
    result: &mut CallResult,
    seen_rx: &mut SeenRx,
) -> Vec<(Instant, Seen)> {
    let clip_frames = plan.frames.clip_frames().max(1);
    let mut pending = Vec::new();
    result.send_lag_us.reserve(frames as usize);
    for k in 0..frames {
        let due = start + Duration::from_millis(k * FRAME_MS);
        tokio::time::sleep_until(due.into()).await;
        let lag = Instant::now().saturating_duration_since(due);
        result
            .send_lag_us
            .push(lag.as_micros().min(u128::from(u32::MAX)) as u32);
        let clip_index = (k * FRAME_MS < result.audio_ms).then_some(k % clip_frames);
        if let Err(err) = link.send_frame(&plan.frames, k, clip_index).await {
            result.errors.push(err);
            break;
        }
        result.frames_sent += 1;
        progress.frames.fetch_add(1, Ordering::Relaxed);
        while let Ok(seen) = seen_rx.try_recv() {
            pending.push(seen);
        }
    }
    pending
}

/// After the call was ended: the events still queued, and on the feed everything up to the
/// call's `call.ended` (within 15 s).
async fn collect_late_events(
    plan: &CallPlan,
    seen_rx: &mut SeenRx,
    pending: &mut Vec<(Instant, Seen)>,
    result: &mut CallResult,
) {
    if plan.feed.is_some() {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            while let Ok(seen) = seen_rx.try_recv() {
                pending.push(seen);
            }
            if pending.iter().any(|(_, s)| matches!(s, Seen::Ended)) {
                break;
            }
            match tokio::time::timeout_at(until.into(), seen_rx.recv()).await {
                Ok(Some(seen)) => pending.push(seen),
                _ => {
                    result
                        .errors
                        .push("no call.ended on the feed within 15 s".into());
                    break;
                }
            }
        }
    } else {
        while let Ok(seen) = seen_rx.try_recv() {
            pending.push(seen);
        }
    }
}

/// Folds the events the call saw into its result: its id and start, its errors, and each
/// final with its latency from the send of the audio that ended it (audio sent from `start`)
/// and from the end of the speech it heard in the clip.
fn record_events(
    result: &mut CallResult,
    pending: Vec<(Instant, Seen)>,
    (began, start): (Instant, Instant),
    plan: &CallPlan,
    progress: &Progress,
) {
    for (at, seen) in pending {
        match seen {
            Seen::Started(call_id) => {
                result.call_id = Some(call_id);
                if result.started_ms.is_none() {
                    result.started_ms = Some(at.duration_since(began).as_secs_f64() * 1000.0);
                }
            }
            Seen::Final {
                seq,
                text,
                speaker,
                start_ms,
                end_ms,
            } => {
                result.told.push(Told {
                    seq,
                    text: text.clone(),
                    speaker,
                    start_ms,
                    end_ms,
                });
                if let Some(end_ms) = end_ms {
                    let sent = frame_sent_at(start, &result.send_lag_us, end_ms);
                    result
                        .final_latency_ms
                        .push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                    let speech = &plan.speech;
                    let spoken = crate::audio::speech::speech_end_for(
                        speech,
                        plan.clip_ms,
                        start_ms,
                        end_ms,
                    );
                    if let Some(speech_end) = spoken {
                        let ended = frame_sent_at(start, &result.send_lag_us, speech_end);
                        result
                            .time_to_final_ms
                            .push(at.saturating_duration_since(ended).as_secs_f64() * 1000.0);
                    }
                }
                result.final_seqs.push(seq);
                result.finals.push(text);
                progress.finals.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Error(e) => result.errors.push(e),
            Seen::Ended => {}
        }
    }
    // Word errors of the finals (in turn order) against the clip's reference, when the call
    // played the clip once.
    if let (Some(reference), true) = (&plan.reference, result.audio_ms as i64 <= plan.clip_ms) {
        let mut told: Vec<&Told> = result.told.iter().collect();
        told.sort_by_key(|t| t.seq);
        let heard: Vec<String> = told
            .iter()
            .flat_map(|t| crate::text::wer::words(&t.text))
            .collect();
        result.word_errors = Some((
            crate::text::wer::word_errors(reference, &heard),
            reference.len(),
        ));
    }
}

/// After the audio: until the expected number of finals, or (without one) a quiet spell, or
/// the deadline, or the end of the events.
async fn wait_for_finals(
    plan: &CallPlan,
    seen_rx: &mut SeenRx,
    pending: &mut Vec<(Instant, Seen)>,
) {
    let deadline = Instant::now() + plan.final_wait;
    loop {
        let finals = pending
            .iter()
            .filter(|(_, s)| matches!(s, Seen::Final { .. }))
            .count();
        if plan.expect_turns.is_some_and(|n| finals >= n) || Instant::now() >= deadline {
            return;
        }
        let wait = match plan.expect_turns {
            Some(_) => deadline.saturating_duration_since(Instant::now()),
            None => plan
                .quiet
                .min(deadline.saturating_duration_since(Instant::now())),
        };
        match tokio::time::timeout(wait, seen_rx.recv()).await {
            Ok(Some(seen)) => pending.push(seen),
            // The connection (or the feed) is gone: nothing more will come.
            Ok(None) => return,
            Err(_) if plan.expect_turns.is_none() => return,
            Err(_) => {}
        }
    }
}

/// When the audio up to `end_ms` had been sent: frame `k` carries `[20k, 20k + 20)` ms and went
/// out at its due time `start + 20k` plus its measured lag, so audio ending at `end_ms` left with
/// frame `end_ms / 20 - 1`.
pub(super) fn frame_sent_at(start: Instant, send_lag_us: &[u32], end_ms: i64) -> Instant {
    let k = (end_ms.max(FRAME_MS as i64) as u64).div_ceil(FRAME_MS) - 1;
    let lag = send_lag_us
        .get(k as usize)
        .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)));
    start + Duration::from_millis(k * FRAME_MS) + lag
}

fn forget(plan: &CallPlan, external_id: &str) {
    if let Some(feed) = &plan.feed {
        feed.forget(external_id);
    }
}

/// An event of the generic socket, read as the engine writes it ([`ClientEvent`]).
pub(super) fn parse_event(text: &str) -> Option<Seen> {
    match serde_json::from_str::<ClientEvent>(text).ok()? {
        ClientEvent::Call { call_id, .. } => Some(Seen::Started(call_id)),
        ClientEvent::Final {
            seq,
            text,
            speaker,
            start_ms,
            end_ms,
        } => Some(Seen::Final {
            seq: i64::from(seq),
            text,
            speaker: Some(speaker),
            start_ms,
            end_ms,
        }),
        ClientEvent::Error { message } => Some(Seen::Error(message)),
        ClientEvent::Partial { .. } => None,
    }
}

/// An event of the `/api/v1/events` feed (`call.started`, `turn.final`, `call.ended`).
pub(crate) fn parse_value(value: &serde_json::Value) -> Option<Seen> {
    match value["type"].as_str()? {
        "call.started" => Some(Seen::Started(value["call_id"].as_str()?.parse().ok()?)),
        "turn.final" => Some(Seen::Final {
            seq: value["seq"].as_i64()?,
            text: value["text"].as_str().unwrap_or_default().to_string(),
            speaker: value["speaker"].as_str().map(String::from),
            start_ms: value["start_ms"].as_i64(),
            end_ms: value["end_ms"].as_i64(),
        }),
        "call.ended" => Some(Seen::Ended),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_the_engine_json() {
        let id = Uuid::new_v4();
        assert!(matches!(
            parse_event(&format!(r#"{{"type":"call","call_id":"{id}","status":"active"}}"#)),
            Some(Seen::Started(got)) if got == id
        ));
        assert!(matches!(
            parse_event(
                r#"{"type":"final","seq":2,"text":"hi","speaker":"contact","start_ms":0,"end_ms":1200}"#
            ),
            Some(Seen::Final {
                seq: 2,
                end_ms: Some(1200),
                ..
            })
        ));
        assert!(parse_event(r#"{"type":"partial","seq":1,"text":"h"}"#).is_none());
        assert!(parse_event("not json").is_none());
    }

    #[test]
    fn a_final_is_timed_from_the_send_of_the_frame_that_carried_its_end() {
        let start = Instant::now();
        let lags = [0, 0, 0, 0, 0, 0, 0, 0, 0, 5_000];
        // Audio ending at 200 ms left with frame 9 (180–200 ms), sent 5 ms late.
        assert_eq!(
            frame_sent_at(start, &lags, 200),
            start + Duration::from_millis(185)
        );
        // A frame boundary inside a frame rounds up to the frame that carried it.
        assert_eq!(
            frame_sent_at(start, &lags, 170),
            start + Duration::from_millis(160)
        );
        assert_eq!(frame_sent_at(start, &lags, 0), start);
    }
}
