//! `callengine loadgen`: many concurrent simulated calls against a running engine, each
//! streaming a WAV file paced every 20 ms, measured end to end.
//!
//! Per call: connect time, time to the engine's `call` event, send lag (how late each 20 ms
//! frame went out against its absolute schedule — the schedule never drifts, a late frame does
//! not push the next one back), and for every `final` the time from the moment the audio that
//! ended the turn was sent (`end_ms` of the final on the call's audio clock) to the arrival of
//! the event. The engine sends `final` only after the turn is committed, so that is durable
//! end-to-end latency. Optionally samples the engine's CPU and RSS from `/proc/<pid>`.
//!
//! Protocol: the generic `/ws/voice/{external_uuid}` endpoint (s16le 16 kHz mono).

mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub use stats::{Percentiles, ProcessSample};

/// 20 ms of s16le mono at 16 kHz.
const FRAME_BYTES: usize = 640;
const FRAME_MS: u64 = 20;

/// Options of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Engine base URL (`ws://host:port`).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent calls.
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Calls started per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    pub ramp_per_sec: f64,
    /// WAV file every call streams (any rate and channel count; converted to 16 kHz mono).
    #[arg(long, value_name = "FILE")]
    pub wav: PathBuf,
    /// Seconds each call streams audio (the WAV loops); default: the WAV once.
    #[arg(long)]
    pub call_secs: Option<f64>,
    /// Silence streamed after the audio, so the engine hears the last utterance end.
    #[arg(long, default_value_t = 1_500)]
    pub tail_silence_ms: u64,
    /// After the audio, how long to wait for outstanding finals before hanging up.
    #[arg(long, default_value_t = 30)]
    pub final_wait_secs: u64,
    /// Without `--expect-turns`: hang up once no final has come for this long after the audio.
    #[arg(long, default_value_t = 4_000)]
    pub quiet_ms: u64,
    /// Finals every call must get (checked; a mismatch fails the run).
    #[arg(long)]
    pub expect_turns: Option<usize>,
    /// Tenant id sent with every call (default: a fresh one per run).
    #[arg(long)]
    pub tenant_id: Option<Uuid>,
    /// Engine process id: sample its CPU and RSS from /proc while running.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// What one call saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CallResult {
    pub external_id: Uuid,
    pub call_id: Option<Uuid>,
    pub connect_ms: Option<f64>,
    pub started_ms: Option<f64>,
    pub frames_sent: u64,
    /// Lateness of every frame, µs.
    #[serde(skip)]
    pub send_lag_us: Vec<u32>,
    /// Audio end of each final → its arrival, ms.
    pub final_latency_ms: Vec<f64>,
    pub finals: Vec<String>,
    pub final_seqs: Vec<i64>,
    pub errors: Vec<String>,
    pub close_code: Option<u16>,
}

impl CallResult {
    fn failed(&self, expect_turns: Option<usize>) -> Option<String> {
        if let Some(error) = self.errors.first() {
            return Some(error.clone());
        }
        if self.close_code != Some(1000) {
            return Some(format!("closed with {:?}", self.close_code));
        }
        let in_order = self.final_seqs.windows(2).all(|w| w[0] + 1 == w[1])
            && self.final_seqs.first().is_none_or(|s| *s == 1);
        if !in_order {
            return Some(format!("finals out of order: {:?}", self.final_seqs));
        }
        match expect_turns {
            Some(n) if n != self.finals.len() => {
                Some(format!("{} finals, expected {n}", self.finals.len()))
            }
            _ => None,
        }
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub calls: usize,
    pub failed_calls: usize,
    pub failures: Vec<String>,
    pub audio_secs_per_call: f64,
    pub wall_secs: f64,
    pub connect_ms: Percentiles,
    pub started_ms: Percentiles,
    pub send_lag_ms: Percentiles,
    pub final_latency_ms: Percentiles,
    pub frames_sent: u64,
    pub finals: usize,
    pub close_codes: std::collections::BTreeMap<String, usize>,
    pub engine: Option<stats::ProcessSummary>,
    pub results: Vec<CallResult>,
}

impl Report {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} calls ({} failed) in {:.1} s, {:.1} s of audio each\n",
            self.calls, self.failed_calls, self.wall_secs, self.audio_secs_per_call
        );
        out += &format!("  connect        {}\n", self.connect_ms);
        out += &format!("  call started   {}\n", self.started_ms);
        out += &format!("  send lag       {}\n", self.send_lag_ms);
        out += &format!("  final latency  {}\n", self.final_latency_ms);
        out += &format!(
            "  frames sent {}, finals {}, close codes {:?}\n",
            self.frames_sent, self.finals, self.close_codes
        );
        if let Some(engine) = &self.engine {
            out += &format!(
                "  engine: CPU {:.0}% avg / {:.0}% max of one core, RSS {:.1} MB at start, {:.1} MB max\n",
                engine.cpu_percent_avg,
                engine.cpu_percent_max,
                engine.rss_mb_start,
                engine.rss_mb_max
            );
        }
        // A handful of calls: show what the engine heard (a quick check of real speech).
        if self.results.len() <= 3 {
            for result in &self.results {
                for (seq, text) in result.final_seqs.iter().zip(&result.finals) {
                    out += &format!("  call {} turn {seq}: {text}\n", result.external_id);
                }
            }
        }
        for failure in self.failures.iter().take(10) {
            out += &format!("  FAILED {failure}\n");
        }
        out
    }
}

/// Loads the WAV as s16le 16 kHz mono bytes.
pub fn load_audio(path: &std::path::Path) -> anyhow::Result<Bytes> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let wav =
        crate::audio::wav::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let samples = wav.to_mono_16k();
    let mut pcm = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16;
        pcm.extend_from_slice(&v.to_le_bytes());
    }
    pcm.truncate(pcm.len() / FRAME_BYTES * FRAME_BYTES);
    if pcm.is_empty() {
        anyhow::bail!("{} holds less than 20 ms of audio", path.display());
    }
    Ok(Bytes::from(pcm))
}

/// Shared progress counters.
#[derive(Default)]
struct Progress {
    started: AtomicUsize,
    live: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
    frames: AtomicU64,
    finals: AtomicU64,
}

/// Runs the load on a runtime of its own and returns the report.
pub fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    let audio = load_audio(&args.wav)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args, audio))
}

async fn run_async(args: LoadgenArgs, audio: Bytes) -> anyhow::Result<Report> {
    let audio_ms = match args.call_secs {
        Some(secs) => (secs * 1000.0) as u64 / FRAME_MS * FRAME_MS,
        None => audio.len() as u64 / 32,
    };
    let plan = Arc::new(CallPlan {
        base: args.url.trim_end_matches('/').to_string(),
        tenant_id: args.tenant_id.unwrap_or_else(Uuid::new_v4),
        audio,
        audio_ms,
        tail_ms: args.tail_silence_ms / FRAME_MS * FRAME_MS,
        final_wait: Duration::from_secs(args.final_wait_secs),
        quiet: Duration::from_millis(args.quiet_ms),
        expect_turns: args.expect_turns,
    });
    let progress = Arc::new(Progress::default());
    let sampler = args.pid.map(stats::ProcessSampler::start);
    let began = Instant::now();
    let reporter = tokio::spawn(report_progress(progress.clone(), args.calls));
    let mut tasks = Vec::with_capacity(args.calls);
    let gap = Duration::from_secs_f64(1.0 / args.ramp_per_sec.max(0.001));
    for index in 0..args.calls {
        tokio::time::sleep_until((began + gap * index as u32).into()).await;
        let (plan, progress) = (plan.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            progress.started.fetch_add(1, Ordering::Relaxed);
            progress.live.fetch_add(1, Ordering::Relaxed);
            let result = one_call(&plan, &progress).await;
            progress.live.fetch_sub(1, Ordering::Relaxed);
            progress.done.fetch_add(1, Ordering::Relaxed);
            if result.failed(plan.expect_turns).is_some() {
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            result
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await?);
    }
    reporter.abort();
    eprintln!();
    let engine = sampler.map(|s| s.finish());
    Ok(build_report(
        results,
        &plan,
        began.elapsed().as_secs_f64(),
        engine,
    ))
}

fn build_report(
    results: Vec<CallResult>,
    plan: &CallPlan,
    wall_secs: f64,
    engine: Option<stats::ProcessSummary>,
) -> Report {
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failed(plan.expect_turns)
                .map(|why| format!("{}: {why}", r.external_id))
        })
        .collect();
    let mut lags: Vec<f64> = Vec::new();
    let mut finals: Vec<f64> = Vec::new();
    let mut close_codes = std::collections::BTreeMap::new();
    for r in &results {
        lags.extend(r.send_lag_us.iter().map(|us| f64::from(*us) / 1000.0));
        finals.extend(&r.final_latency_ms);
        let code = r.close_code.map_or("none".into(), |c| c.to_string());
        *close_codes.entry(code).or_insert(0) += 1;
    }
    let pick =
        |f: fn(&CallResult) -> Option<f64>| -> Vec<f64> { results.iter().filter_map(f).collect() };
    Report {
        calls: results.len(),
        failed_calls: failures.len(),
        failures,
        audio_secs_per_call: plan.audio_ms as f64 / 1000.0,
        wall_secs,
        connect_ms: Percentiles::of(pick(|r| r.connect_ms)),
        started_ms: Percentiles::of(pick(|r| r.started_ms)),
        send_lag_ms: Percentiles::of(lags),
        final_latency_ms: Percentiles::of(finals),
        frames_sent: results.iter().map(|r| r.frames_sent).sum(),
        finals: results.iter().map(|r| r.finals.len()).sum(),
        close_codes,
        engine,
        results,
    }
}

async fn report_progress(progress: Arc<Progress>, total: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p = &progress;
        let done = p.done.load(Ordering::Relaxed);
        let width = 30;
        let filled = (done * width)
            .checked_div(total)
            .unwrap_or(width)
            .min(width);
        eprint!(
            "\r[{}{}] {done}/{total} done, {} live, {} failed, {} frames, {} finals   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            p.live.load(Ordering::Relaxed),
            p.failed.load(Ordering::Relaxed),
            p.frames.load(Ordering::Relaxed),
            p.finals.load(Ordering::Relaxed),
        );
    }
}

struct CallPlan {
    base: String,
    tenant_id: Uuid,
    audio: Bytes,
    audio_ms: u64,
    tail_ms: u64,
    final_wait: Duration,
    quiet: Duration,
    expect_turns: Option<usize>,
}

/// One event the reader saw.
enum Seen {
    Started(Uuid),
    Final {
        seq: i64,
        text: String,
        end_ms: Option<i64>,
    },
    Error(String),
}

async fn one_call(plan: &CallPlan, progress: &Progress) -> CallResult {
    let external_id = Uuid::new_v4();
    let mut result = CallResult {
        external_id,
        ..CallResult::default()
    };
    let url = format!(
        "{}/ws/voice/{external_id}?tenant_id={}&campaign_id={}&lead_id={}",
        plan.base,
        plan.tenant_id,
        Uuid::new_v4(),
        Uuid::new_v4()
    );
    let began = Instant::now();
    let ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(err)) => {
            result.errors.push(format!("connect: {err}"));
            return result;
        }
        Err(_) => {
            result.errors.push("connect timed out".into());
            return result;
        }
    };
    result.connect_ms = Some(began.elapsed().as_secs_f64() * 1000.0);
    let (mut sink, mut stream) = ws.split();

    // Reader: events with arrival times, and the close code.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Seen)>();
    let reader = tokio::spawn(async move {
        let mut close = None;
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { break };
            let at = Instant::now();
            match message {
                Message::Text(text) => {
                    if let Some(seen) = parse_event(&text) {
                        let _ = seen_tx.send((at, seen));
                    }
                }
                Message::Close(frame) => {
                    close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    break;
                }
                _ => {}
            }
        }
        close
    });

    // Wait for the engine's `call` event before streaming.
    match tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await {
        Ok(Some((at, Seen::Started(call_id)))) => {
            result.call_id = Some(call_id);
            result.started_ms = Some(at.duration_since(began).as_secs_f64() * 1000.0);
        }
        Ok(Some((_, Seen::Error(e)))) => result.errors.push(e),
        _ => result.errors.push("no call event within 10 s".into()),
    }

    let mut finals_seen = Vec::new();
    if result.errors.is_empty() {
        let total_ms = plan.audio_ms + plan.tail_ms;
        let frames = total_ms / FRAME_MS;
        let clip_frames = (plan.audio.len() / FRAME_BYTES) as u64;
        let silence = Bytes::from(vec![0u8; FRAME_BYTES]);
        let start = Instant::now();
        result.send_lag_us.reserve(frames as usize);
        for k in 0..frames {
            let due = start + Duration::from_millis(k * FRAME_MS);
            tokio::time::sleep_until(due.into()).await;
            let lag = Instant::now().saturating_duration_since(due);
            result
                .send_lag_us
                .push(lag.as_micros().min(u128::from(u32::MAX)) as u32);
            let frame = if k * FRAME_MS < plan.audio_ms {
                let at = ((k % clip_frames) as usize) * FRAME_BYTES;
                plan.audio.slice(at..at + FRAME_BYTES)
            } else {
                silence.clone()
            };
            if let Err(err) = sink.send(Message::Binary(frame)).await {
                result.errors.push(format!("send: {err}"));
                break;
            }
            result.frames_sent += 1;
            progress.frames.fetch_add(1, Ordering::Relaxed);
            while let Ok(seen) = seen_rx.try_recv() {
                finals_seen.push(seen);
            }
        }
        // Outstanding finals: until the expected count, or quiet for the wait.
        let deadline = Instant::now() + plan.final_wait;
        loop {
            let finals = finals_seen
                .iter()
                .filter(|(_, s)| matches!(s, Seen::Final { .. }))
                .count();
            if plan.expect_turns.is_some_and(|n| finals >= n) || Instant::now() >= deadline {
                break;
            }
            let wait = match plan.expect_turns {
                Some(_) => deadline.saturating_duration_since(Instant::now()),
                // Without an expected count: a short quiet spell ends the wait.
                None => plan.quiet.min(deadline - Instant::now()),
            };
            match tokio::time::timeout(wait, seen_rx.recv()).await {
                Ok(Some(seen)) => finals_seen.push(seen),
                _ if plan.expect_turns.is_none() => break,
                _ => {}
            }
        }
        for (at, seen) in finals_seen {
            match seen {
                Seen::Final { seq, text, end_ms } => {
                    if let Some(end_ms) = end_ms {
                        let sent = start + Duration::from_millis(end_ms.max(0) as u64);
                        result
                            .final_latency_ms
                            .push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                    }
                    result.final_seqs.push(seq);
                    result.finals.push(text);
                    progress.finals.fetch_add(1, Ordering::Relaxed);
                }
                Seen::Error(e) => result.errors.push(e),
                Seen::Started(_) => {}
            }
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "loadgen done".into(),
        })))
        .await;
    // Finals the engine flushed while finishing still count.
    match tokio::time::timeout(Duration::from_secs(15), reader).await {
        Ok(Ok(code)) => result.close_code = code,
        _ => result
            .errors
            .push("no close from the engine within 15 s".into()),
    }
    while let Ok((_, seen)) = seen_rx.try_recv() {
        if let Seen::Final { seq, text, .. } = seen {
            result.final_seqs.push(seq);
            result.finals.push(text);
        }
    }
    result
}

fn parse_event(text: &str) -> Option<Seen> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value["type"].as_str()? {
        "call" => Some(Seen::Started(value["call_id"].as_str()?.parse().ok()?)),
        "final" => Some(Seen::Final {
            seq: value["seq"].as_i64()?,
            text: value["text"].as_str().unwrap_or_default().to_string(),
            end_ms: value["end_ms"].as_i64(),
        }),
        "error" => Some(Seen::Error(
            value["message"].as_str().unwrap_or("error").to_string(),
        )),
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
            parse_event(r#"{"type":"final","seq":2,"text":"hi","end_ms":1200}"#),
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
    fn a_call_fails_on_errors_bad_close_gaps_or_a_wrong_turn_count() {
        let ok = CallResult {
            close_code: Some(1000),
            final_seqs: vec![1, 2],
            finals: vec!["a".into(), "b".into()],
            ..CallResult::default()
        };
        assert_eq!(ok.failed(Some(2)), None);
        assert!(ok.failed(Some(3)).is_some());
        let gap = CallResult {
            final_seqs: vec![1, 3],
            ..ok.clone()
        };
        assert!(gap.failed(None).is_some());
        let closed = CallResult {
            close_code: Some(1011),
            ..ok.clone()
        };
        assert!(closed.failed(None).is_some());
    }
}
