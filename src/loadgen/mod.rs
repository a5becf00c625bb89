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
pub mod chaos;
mod deepgram_wire;
mod energy;
mod feed;
pub mod forwarding;
mod integrity;
pub mod mock_deepgram;
mod stats;
mod transport;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

pub use integrity::{Integrity, IntegrityTotals, Told};
pub use stats::{Percentiles, ProcessSample, SampleSource};
pub use transport::{LoadProtocol, FRAME_BYTES, FRAME_MS};

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

/// What one call saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CallResult {
    pub external_id: String,
    pub call_id: Option<Uuid>,
    pub connect_ms: Option<f64>,
    pub started_ms: Option<f64>,
    pub audio_ms: u64,
    pub frames_sent: u64,
    /// When frame 0 was due: frame `k` was due 20k ms later.
    #[serde(skip)]
    pub audio_start: Option<Instant>,
    /// Lateness of every frame, µs.
    #[serde(skip)]
    pub send_lag_us: Vec<u32>,
    /// Audio end of each final → its arrival, ms.
    pub final_latency_ms: Vec<f64>,
    pub finals: Vec<String>,
    pub final_seqs: Vec<i64>,
    pub errors: Vec<String>,
    pub close_code: Option<u16>,
    /// Checked through the API after the run (None: not checked).
    pub verified: Option<bool>,
    pub verify_error: Option<String>,
    /// How the call ended (`--chaos` only).
    pub end_path: Option<chaos::EndPath>,
    /// The `final` events the call received.
    #[serde(skip)]
    pub told: Vec<Told>,
    /// Its stored turns against them (once verified).
    pub integrity: Option<Integrity>,
    /// Its frames' forwarding lag (`--mock-deepgram`, once matched to its stream).
    pub forwarding: Option<forwarding::CallForwarding>,
}

impl CallResult {
    fn failed(&self, expect_turns: Option<usize>) -> Option<String> {
        // A chaos call may end badly on purpose: only a lost or doubled turn fails it.
        if self.end_path.is_some() {
            return self.verify_error.clone();
        }
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
        if let Some(why) = &self.verify_error {
            return Some(format!("verification: {why}"));
        }
        match expect_turns {
            Some(n) if n != self.finals.len() => {
                Some(format!("{} finals, expected {n}", self.finals.len()))
            }
            _ => None,
        }
    }
}

/// RSS over a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSummary {
    pub calls_started: usize,
    /// Engine RSS before the first call and after the last ended (+3 s).
    pub rss_mb_baseline: f64,
    pub rss_mb_after: f64,
    pub rss_after_vs_baseline_percent: f64,
    /// Least-squares slope of RSS over the second half of the soak (a leak shows here).
    pub rss_slope_mb_per_hour: f64,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub protocol: LoadProtocol,
    pub calls: usize,
    pub concurrency: usize,
    pub failed_calls: usize,
    pub failures: Vec<String>,
    /// Calls checked through the API after the run, and how many of them matched.
    pub verified_calls: usize,
    pub verified_ok: usize,
    pub audio_secs_per_call: f64,
    pub wall_secs: f64,
    pub connect_ms: Percentiles,
    pub started_ms: Percentiles,
    pub send_lag_ms: Percentiles,
    pub final_latency_ms: Percentiles,
    pub frames_sent: u64,
    pub finals: usize,
    /// Feed events the engine dropped because the load generator fell behind.
    pub feed_lagged: u64,
    pub close_codes: std::collections::BTreeMap<String, usize>,
    pub engine: Option<stats::ProcessSummary>,
    pub soak: Option<SoakSummary>,
    /// The run's seed (`--seed`, or the random one it drew).
    pub seed: u64,
    /// Calls per end path (`--chaos`).
    pub end_paths: std::collections::BTreeMap<String, usize>,
    /// Told, stored, missing and duplicated turns over the verified calls.
    pub integrity: Option<IntegrityTotals>,
    /// What the built-in mock Deepgram did (`--mock-deepgram`).
    pub mock_deepgram: Option<mock_deepgram::MockSummary>,
    /// Forwarding lag to the mock Deepgram, frame by frame (`--mock-deepgram`).
    pub forwarding: Option<forwarding::Forwarding>,
    pub results: Vec<CallResult>,
}

impl Report {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} {} calls ({} concurrent, {} failed) in {:.1} s, {:.1} s of audio each\n",
            self.calls,
            self.protocol.engine_name(),
            self.concurrency,
            self.failed_calls,
            self.wall_secs,
            self.audio_secs_per_call
        );
        out += &format!("  connect        {}\n", self.connect_ms);
        out += &format!("  call started   {}\n", self.started_ms);
        out += &format!("  send lag       {}\n", self.send_lag_ms);
        if let Some(forwarding) = &self.forwarding {
            out += &forwarding.summary_lines();
        }
        out += &format!("  final latency  {}\n", self.final_latency_ms);
        out += &format!(
            "  frames sent {}, finals {}, close codes {:?}\n",
            self.frames_sent, self.finals, self.close_codes
        );
        if self.verified_calls > 0 && !self.end_paths.is_empty() {
            out += &format!(
                "  verified through the API: {}/{} calls with every turn they were told about stored exactly once\n",
                self.verified_ok, self.verified_calls
            );
        } else if self.verified_calls > 0 {
            out += &format!(
                "  verified through the API: {}/{} calls completed with exactly their turns, in order\n",
                self.verified_ok, self.verified_calls
            );
        } else {
            out += "  NOT verified through the API (no --api-token, or --no-verify)\n";
        }
        out += &chaos::summary_lines(self);
        if self.feed_lagged > 0 {
            out += &format!(
                "  FEED LAGGED: the engine dropped {} events for this reader\n",
                self.feed_lagged
            );
        }
        if let Some(engine) = &self.engine {
            out += &format!(
                "  engine: CPU {:.0}% avg / {:.0}% max of one core, RSS {:.1} MB at start, {:.1} MB max, {:.1} MB at end\n",
                engine.cpu_percent_avg,
                engine.cpu_percent_max,
                engine.rss_mb_start,
                engine.rss_mb_max,
                engine.rss_mb_end
            );
        }
        if let Some(soak) = &self.soak {
            out += &format!(
                "  soak: {} calls, RSS {:.1} MB before → {:.1} MB after ({:+.1}%), slope {:+.2} MB/h over the second half\n",
                soak.calls_started,
                soak.rss_mb_baseline,
                soak.rss_mb_after,
                soak.rss_after_vs_baseline_percent,
                soak.rss_slope_mb_per_hour
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
        if self.failures.len() > 10 {
            out += &format!("  … and {} more failed calls\n", self.failures.len() - 10);
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
    let clip_ms = audio.len() as u64 / 32;
    let feed = match (&args.api_token, args.protocol.events_on_socket()) {
        (Some(token), false) => Some(feed::Feed::subscribe(&args.http_base(), token)?),
        _ => None,
    };
    let plan = Arc::new(CallPlan {
        protocol: args.protocol,
        base: args.url.trim_end_matches('/').to_string(),
        audiosocket_addr: args.audiosocket_addr.clone(),
        tenant_id: args
            .tenant_id
            .unwrap_or(crate::ingress::admission::LOCAL_TENANT),
        token: args.token.clone(),
        frames: transport::Frames::encode(args.protocol, &audio),
        audio_ms: (
            args.call_secs.map_or(clip_ms, |s| (s * 1000.0) as u64),
            args.call_secs_max.map(|s| (s * 1000.0) as u64),
        ),
        tail_ms: args.tail_silence_ms / FRAME_MS * FRAME_MS,
        final_wait: Duration::from_secs(args.final_wait_secs),
        quiet: Duration::from_millis(args.quiet_ms),
        expect_turns: args.expect_turns,
        feed: feed.clone(),
        chaos: chaos::Chaos::from_args(&args.chaos),
        seed,
        http: chaos::http_agent(),
        api: args.api_token.clone().map(|t| (args.http_base(), t)),
    });
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
        slots.push(tokio::spawn(async move {
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
        }));
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
    let soak = match (&engine, args.soak()) {
        (Some(engine), true) => Some(soak_summary(engine, results.len(), wall_secs)),
        _ => None,
    };
    let mut report = Report {
        protocol: args.protocol,
        calls: results.len(),
        concurrency: args.calls,
        failed_calls: 0,
        failures: Vec::new(),
        verified_calls: 0,
        verified_ok: 0,
        audio_secs_per_call: results.iter().map(|r| r.audio_ms).sum::<u64>() as f64
            / 1000.0
            / results.len().max(1) as f64,
        wall_secs,
        connect_ms: Percentiles::of(results.iter().filter_map(|r| r.connect_ms).collect()),
        started_ms: Percentiles::of(results.iter().filter_map(|r| r.started_ms).collect()),
        send_lag_ms: Percentiles::of(
            results
                .iter()
                .flat_map(|r| r.send_lag_us.iter().map(|us| f64::from(*us) / 1000.0))
                .collect(),
        ),
        final_latency_ms: Percentiles::of(
            results
                .iter()
                .flat_map(|r| r.final_latency_ms.iter().copied())
                .collect(),
        ),
        frames_sent: results.iter().map(|r| r.frames_sent).sum(),
        finals: results.iter().map(|r| r.finals.len()).sum(),
        feed_lagged: feed.map_or(0, |f| f.lagged.load(Ordering::Relaxed)),
        close_codes: std::collections::BTreeMap::new(),
        engine,
        soak,
        seed,
        end_paths: chaos::count_paths(results.iter().filter_map(|r| r.end_path.as_ref())),
        integrity: None,
        mock_deepgram: None,
        forwarding: None,
        results,
    };
    for r in &report.results {
        let code = r.close_code.map_or("none".into(), |c| c.to_string());
        *report.close_codes.entry(code).or_insert(0) += 1;
    }
    finish_report(&mut report, args.expect_turns);
    Ok(report)
}

/// Failures and verification counts from the per-call results.
fn finish_report(report: &mut Report, expect_turns: Option<usize>) {
    report.failures = report
        .results
        .iter()
        .filter_map(|r| {
            r.failed(expect_turns)
                .map(|why| format!("{}: {why}", r.external_id))
        })
        .collect();
    if let Some(totals) = report.integrity.as_ref().filter(|t| t.broken()) {
        report.failures.push(totals.line());
    }
    if report.feed_lagged > 0 {
        report.failures.push(format!(
            "the event feed lost {} events: latency and turn counts are incomplete",
            report.feed_lagged
        ));
    }
    report.failed_calls = report
        .results
        .iter()
        .filter(|r| r.failed(expect_turns).is_some())
        .count();
    report.verified_calls = report
        .results
        .iter()
        .filter(|r| r.verified.is_some())
        .count();
    report.verified_ok = report
        .results
        .iter()
        .filter(|r| r.verified == Some(true))
        .count();
}

fn soak_summary(engine: &stats::ProcessSummary, calls: usize, wall_secs: f64) -> SoakSummary {
    let half: Vec<(f64, f64)> = engine
        .samples
        .iter()
        .filter(|s| s.at_s >= wall_secs / 2.0 && s.at_s <= wall_secs)
        .map(|s| (s.at_s, s.rss_mb))
        .collect();
    let slope_per_s = stats::slope(&half);
    SoakSummary {
        calls_started: calls,
        rss_mb_baseline: engine.rss_mb_start,
        rss_mb_after: engine.rss_mb_end,
        rss_after_vs_baseline_percent: (engine.rss_mb_end / engine.rss_mb_start.max(0.001) - 1.0)
            * 100.0,
        rss_slope_mb_per_hour: slope_per_s * 3600.0,
    }
}

async fn report_progress(progress: Arc<Progress>, total: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p = &progress;
        let done = p.done.load(Ordering::Relaxed);
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
        eprint!(
            "\r[{}{}] {done}/{} done, {} live, {} failed, {} frames, {} finals   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            if total == 0 {
                "∞".to_string()
            } else {
                total.to_string()
            },
            p.live.load(Ordering::Relaxed),
            p.failed.load(Ordering::Relaxed),
            p.frames.load(Ordering::Relaxed),
            p.finals.load(Ordering::Relaxed),
        );
    }
}

struct CallPlan {
    protocol: LoadProtocol,
    base: String,
    audiosocket_addr: String,
    tenant_id: Uuid,
    token: Option<String>,
    frames: transport::Frames,
    /// Audio per call: fixed, or a random length up to the second figure.
    audio_ms: (u64, Option<u64>),
    tail_ms: u64,
    final_wait: Duration,
    quiet: Duration,
    expect_turns: Option<usize>,
    feed: Option<feed::Feed>,
    chaos: Option<chaos::Chaos>,
    seed: u64,
    /// For API hang-ups: the agent, and the API's base URL and token.
    http: ureq::Agent,
    api: Option<(String, String)>,
}

impl CallPlan {
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

async fn one_call(plan: &CallPlan, progress: &Progress, index: u64) -> CallResult {
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
    let link = transport::Link::open(
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
        match tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await {
            Ok(Some((at, Seen::Started(call_id)))) => {
                result.call_id = Some(call_id);
                result.started_ms = Some(at.duration_since(began).as_secs_f64() * 1000.0);
            }
            Ok(Some((_, Seen::Error(e)))) => result.errors.push(e),
            _ => result.errors.push("no call event within 10 s".into()),
        }
    }

    let total_ms = audio_ms + plan.tail_ms;
    let frames = total_ms / FRAME_MS;
    let end = plan
        .chaos
        .as_ref()
        .map(|c| c.plan(&mut rng, audio_ms / FRAME_MS, frames));
    result.end_path = end.map(|e| e.path);
    let frames = end.map_or(frames, |e| e.frames);
    let clip_frames = plan.frames.clip_frames().max(1);
    let start = Instant::now();
    result.audio_start = Some(start);
    if result.errors.is_empty() {
        result.send_lag_us.reserve(frames as usize);
        for k in 0..frames {
            let due = start + Duration::from_millis(k * FRAME_MS);
            tokio::time::sleep_until(due.into()).await;
            let lag = Instant::now().saturating_duration_since(due);
            result
                .send_lag_us
                .push(lag.as_micros().min(u128::from(u32::MAX)) as u32);
            let clip_index = (k * FRAME_MS < audio_ms).then_some(k % clip_frames);
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
    forget(plan, &external_id);
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
                }
                result.final_seqs.push(seq);
                result.finals.push(text);
                progress.finals.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Error(e) => result.errors.push(e),
            Seen::Ended => {}
        }
    }
    result
}

/// After the audio: until the expected number of finals, or (without one) a quiet spell, or
/// the deadline, or the end of the events.
async fn wait_for_finals(
    plan: &CallPlan,
    seen_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Seen)>,
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
fn frame_sent_at(start: Instant, send_lag_us: &[u32], end_ms: i64) -> Instant {
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

/// An event of the generic socket.
fn parse_event(text: &str) -> Option<Seen> {
    parse_value(&serde_json::from_str(text).ok()?)
}

/// An event as a call sees it, in either vocabulary: the generic socket's (`call`, `final`,
/// `error`) or the `/api/v1/events` feed's (`call.started`, `turn.final`, `call.ended`).
pub(crate) fn parse_value(value: &serde_json::Value) -> Option<Seen> {
    match value["type"].as_str()? {
        "call" | "call.started" => Some(Seen::Started(value["call_id"].as_str()?.parse().ok()?)),
        "final" | "turn.final" => Some(Seen::Final {
            seq: value["seq"].as_i64()?,
            text: value["text"].as_str().unwrap_or_default().to_string(),
            speaker: value["speaker"].as_str().map(String::from),
            start_ms: value["start_ms"].as_i64(),
            end_ms: value["end_ms"].as_i64(),
        }),
        "error" => Some(Seen::Error(
            value["message"].as_str().unwrap_or("error").to_string(),
        )),
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
    fn a_call_fails_on_errors_bad_close_gaps_a_wrong_turn_count_or_verification() {
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
        let lost = CallResult {
            verified: Some(false),
            verify_error: Some("1 turns stored, expected 2".into()),
            ..ok.clone()
        };
        assert!(lost
            .failed(None)
            .is_some_and(|why| why.contains("verification")));
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
            expect_turns: None,
            tenant_id: None,
            token: None,
            api_token: None,
            no_verify: false,
            pid: None,
            soak_secs: None,
            soak_calls: None,
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
