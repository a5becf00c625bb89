//! `callengine loadgen`: many concurrent simulated calls against a running engine, in any
//! protocol it speaks, each streaming real speech paced every 20 ms, measured end to end and
//! verified through the API afterwards.
//!
//! Per call: connect time, time to the call's start (`call` event on the generic socket, the
//! feed's `call.started` for carriers), send lag (how late each 20 ms frame went out against
//! its absolute schedule — the schedule never drifts, a late frame does not push the next one
//! back), and for every `final` the time from the moment the audio that ended the turn was sent
//! (`end_ms` on the call's audio clock) to the arrival of the event. The engine emits `final`
//! only after the turn is committed, so that is durable end-to-end latency. The engine's CPU
//! and RSS are sampled from `/proc/<pid>` or from its `/metrics` process figures.
//!
//! Two shapes of run: a batch (`--calls N` started at `--ramp-per-sec`, each streaming once)
//! and a soak (`--soak-secs`/`--soak-calls`: `--calls` slots kept busy, a new call starting as
//! soon as one ends), which reports RSS over time so a leak shows as a slope.
//!
//! For transcript integrity (issue 14): `--chaos` ends calls every way a call ends
//! ([`chaos`]), `--mock-deepgram ADDR` serves the engine's Deepgram client from a mock that
//! cuts streams at random ([`mock_deepgram`]), and the verification then checks that every
//! turn a client was told about is stored exactly once. With the mock, every frame's
//! forwarding lag (client send → provider receipt, one clock) is reported too ([`forwarding`]).

pub mod arrivals;
mod call;
pub mod chaos;
mod deepgram_wire;
mod energy;
mod feed;
pub mod forwarding;
mod integrity;
pub mod mock_deepgram;
mod progress;
mod protocol;
mod report;
mod stats;
mod transport;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use call::{frame_sent_at, one_call, parse_event, CallPlan};
pub(crate) use call::{parse_value, Seen};
pub use integrity::{Integrity, IntegrityTotals, Told};
use progress::{report_progress, Progress};
pub use protocol::{LoadProtocol, FRAME_BYTES, FRAME_MS};
use report::{finish_report, new_report};
pub use report::{CallResult, Report, SoakSummary};
pub use stats::{Percentiles, ProcessSample, SampleSource};

/// Options of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Engine base URL (`ws://host:port`); the API is reached at the same host over HTTP.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Protocol the calls speak.
    #[arg(long, value_enum, default_value_t = LoadProtocol::Voice)]
    pub protocol: LoadProtocol,
    /// AudioSocket listener of the engine (`media.audiosocket_bind`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub audiosocket_addr: String,
    /// Concurrent calls (in a soak: calls kept live at once).
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
    /// With `--call-secs`: each call lasts a random time between the two.
    #[arg(long, requires = "call_secs")]
    pub call_secs_max: Option<f64>,
    /// Silence streamed after the audio, so the engine hears the last utterance end.
    #[arg(long, default_value_t = 1_500)]
    pub tail_silence_ms: u64,
    /// After the audio, how long to wait for outstanding finals before hanging up.
    #[arg(long, default_value_t = 30)]
    pub final_wait_secs: u64,
    /// Without `--expect-turns`: hang up once no final has come for this long after the audio.
    #[arg(long, default_value_t = 4_000)]
    pub quiet_ms: u64,
    /// RMS level (s16le) from which a 20 ms frame of the WAV counts as speech, for timing each
    /// final from the end of the speech it heard (300 ms of quiet ends a stretch).
    #[arg(long, default_value_t = 300.0)]
    pub speech_threshold: f64,
    /// Finals every call must get (checked live and in the database; a mismatch fails the run).
    #[arg(long)]
    pub expect_turns: Option<usize>,
    /// Tenant of every call (default: the engine's open local tenant, served only by a node
    /// that listens on loopback).
    #[arg(long)]
    pub tenant_id: Option<Uuid>,
    /// The tenant's media token (carrier protocols: in-band or as a bearer token).
    #[arg(long, env = "CALLENGINE_LOADGEN_MEDIA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API token (admin, or the tenant's): the event feed carriers' finals come from, the
    /// verification after the run, and `/metrics` when it is tokened.
    #[arg(long, env = "CALLENGINE_LOADGEN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Skip the verification through the API.
    #[arg(long)]
    pub no_verify: bool,
    /// Engine process id: sample its CPU and RSS from /proc (else from its /metrics).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Soak: keep `--calls` calls running for this long, starting a new one as each ends.
    #[arg(long)]
    pub soak_secs: Option<f64>,
    /// Soak: stop starting calls after this many.
    #[arg(long)]
    pub soak_calls: Option<usize>,
    /// Reference transcripts, a TSV of `file name<TAB>text`: the row of `--wav`'s file name is
    /// compared with each call's finals (word error rate, for calls that play the clip once).
    #[arg(long, value_name = "TSV")]
    pub reference: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[command(flatten)]
    pub chaos: chaos::ChaosArgs,
    #[command(flatten)]
    pub mock: mock_deepgram::MockArgs,
}

impl LoadgenArgs {
    fn soak(&self) -> bool {
        self.soak_secs.is_some() || self.soak_calls.is_some()
    }

    /// `http://host:port` of the engine's API.
    pub fn http_base(&self) -> String {
        let url = self.url.trim_end_matches('/');
        match url.split_once("://") {
            Some(("wss", rest)) => format!("https://{rest}"),
            Some((_, rest)) => format!("http://{rest}"),
            None => format!("http://{url}"),
        }
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

/// The reference words for `wav` from a TSV of `file name<TAB>text` (matched by file name).
pub fn load_reference(tsv: &std::path::Path, wav: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(tsv)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tsv.display()))?;
    let name = wav.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(file, _)| {
            let file = file.trim();
            file == name
                || std::path::Path::new(file)
                    .file_name()
                    .and_then(|n| n.to_str())
                    == Some(name)
        })
        .map(|(_, reference)| crate::text::wer::words(reference))
        .ok_or_else(|| anyhow::anyhow!("{} has no row for {name}", tsv.display()))
}

/// Runs the load on a runtime of its own and returns the report.
pub fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    let audio = load_audio(&args.wav)?;
    let seed = args.chaos.seed.unwrap_or_else(|| fastrand::u64(..));
    if args.chaos.chaos && args.api_token.is_none() {
        anyhow::bail!(
            "--chaos needs --api-token: hang-ups and the exactly-once check go through the API"
        );
    }
    let mock = match args.mock.config(seed)? {
        Some(config) => Some(mock_deepgram::MockDeepgram::start(config)?),
        None => None,
    };
    if let Some(mock) = &mock {
        eprintln!("mock Deepgram listening on ws://{}", mock.addr());
    }
    if args.protocol != LoadProtocol::Voice && args.api_token.is_none() {
        tracing::warn!(
            "carrier protocols get no events on their own connection: without --api-token no finals are measured and nothing is verified"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(run_async(&args, audio, seed))?;
    report.mock_deepgram = mock.as_ref().map(|m| m.summary());
    report.forwarding = mock
        .as_ref()
        .map(|m| forwarding::measure(&mut report.results, m.arrivals()));
    drop(mock);
    if let (Some(token), false) = (&args.api_token, args.no_verify) {
        eprintln!("verifying {} calls through the API…", report.results.len());
        verify::check_all(
            &mut report.results,
            &args.http_base(),
            token,
            args.protocol.engine_name(),
            args.expect_turns,
            4,
            args.chaos.chaos,
        );
        report.integrity = Some(IntegrityTotals::of(&report.results));
        finish_report(&mut report, args.expect_turns);
    }
    Ok(report)
}
async fn run_async(args: &LoadgenArgs, audio: Bytes, seed: u64) -> anyhow::Result<Report> {
    let feed = match (&args.api_token, args.protocol.events_on_socket()) {
        (Some(token), false) => Some(feed::Feed::subscribe(&args.http_base(), token)?),
        _ => None,
    };
    let mut plan = CallPlan::new(args, &audio, seed, feed.clone());
    plan.reference = match &args.reference {
        Some(tsv) => Some(load_reference(tsv, &args.wav)?),
        None => None,
    };
    let plan = Arc::new(plan);
    let source = match args.pid {
        Some(pid) => Some(SampleSource::Pid(pid)),
        None => Some(SampleSource::Metrics {
            url: format!("{}/metrics", args.http_base()),
            token: args.api_token.clone(),
        }),
    };
    let sampler = source.map(stats::ProcessSampler::start);
    // The sampler's first reading is the baseline: let it land before the first call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let progress = Arc::new(Progress::default());
    let began = Instant::now();
    let deadline = args.soak_secs.map(|s| began + Duration::from_secs_f64(s));
    let budget = Arc::new(AtomicUsize::new(match (args.soak(), args.soak_calls) {
        (true, Some(n)) => n,
        (true, None) => usize::MAX,
        (false, _) => args.calls,
    }));
    let total_hint = if args.soak() {
        args.soak_calls.unwrap_or(0)
    } else {
        args.calls
    };
    let reporter = tokio::spawn(report_progress(progress.clone(), total_hint));
    let mut slots = Vec::with_capacity(args.calls);
    let gap = Duration::from_secs_f64(1.0 / args.ramp_per_sec.max(0.001));
    for index in 0..args.calls {
        tokio::time::sleep_until((began + gap * index as u32).into()).await;
        let (plan, progress, budget) = (plan.clone(), progress.clone(), budget.clone());
        slots.push(tokio::spawn(run_slot(plan, progress, budget, deadline)));
    }
    let mut results = Vec::new();
    for slot in slots {
        results.extend(slot.await?);
    }
    reporter.abort();
    eprintln!();
    let wall_secs = began.elapsed().as_secs_f64();
    // The engine has a moment to finish the last calls before the final reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let engine = sampler.map(|s| s.finish());
    let feed_lagged = feed.map_or(0, |f| f.lagged.load(Ordering::Relaxed));
    let mut report = new_report(args, results, wall_secs, engine, seed, feed_lagged);
    finish_report(&mut report, args.expect_turns);
    Ok(report)
}

/// One slot of the run's concurrency.
async fn run_slot(
    plan: Arc<CallPlan>,
    progress: Arc<Progress>,
    budget: Arc<AtomicUsize>,
    deadline: Option<Instant>,
) -> Vec<CallResult> {
    let mut results = Vec::new();
    // A slot runs calls one after another while the budget and the clock allow (a
    // batch has a budget of one call per slot).
    while deadline.is_none_or(|d| Instant::now() < d)
        && budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    {
        let index = progress.started.fetch_add(1, Ordering::Relaxed);
        progress.live.fetch_add(1, Ordering::Relaxed);
        let result = one_call(&plan, &progress, index as u64).await;
        progress.live.fetch_sub(1, Ordering::Relaxed);
        progress.done.fetch_add(1, Ordering::Relaxed);
        if result.failed(plan.expect_turns).is_some() {
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_reached_over_http_at_the_same_host() {
        let mut args = LoadgenArgs {
            url: "ws://127.0.0.1:8080/".into(),
            protocol: LoadProtocol::Vonage,
            audiosocket_addr: String::new(),
            calls: 1,
            ramp_per_sec: 1.0,
            wav: PathBuf::new(),
            call_secs: None,
            call_secs_max: None,
            tail_silence_ms: 0,
            final_wait_secs: 0,
            quiet_ms: 0,
            speech_threshold: 300.0,
            expect_turns: None,
            tenant_id: None,
            token: None,
            api_token: None,
            no_verify: false,
            pid: None,
            soak_secs: None,
            soak_calls: None,
            reference: None,
            report: None,
            threads: 1,
            chaos: chaos::ChaosArgs::default(),
            mock: mock_deepgram::MockArgs::default(),
        };
        assert_eq!(args.http_base(), "http://127.0.0.1:8080");
        args.url = "wss://engine.example.com".into();
        assert_eq!(args.http_base(), "https://engine.example.com");
    }
}
