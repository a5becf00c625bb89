//! What a run reports: each call's result ([`CallResult`]), the RSS figures of a soak
//! ([`SoakSummary`]), and the whole run ([`Report`]) with its human summary.

use std::time::Instant;

use serde::Serialize;
use uuid::Uuid;

use super::{
    chaos, forwarding, mock_deepgram, stats, Integrity, IntegrityTotals, LoadProtocol, LoadgenArgs,
    Percentiles, Told,
};

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
    /// End of the speech in the WAV that each final heard → its arrival, ms.
    pub time_to_final_ms: Vec<f64>,
    /// Word errors of the call's finals against `--reference`, and the reference's words.
    pub word_errors: Option<(usize, usize)>,
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
    pub(super) fn failed(&self, expect_turns: Option<usize>) -> Option<String> {
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
    /// From the end of speech in the WAV (what the caller feels) to the `final`.
    pub time_to_final_ms: Percentiles,
    /// Word error rate over the calls compared with `--reference`: errors, reference words.
    pub word_errors: Option<(usize, usize)>,
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
    /// The summary's timings: connect, start, send lag, forwarding, finals; and the WER.
    fn timing_lines(&self) -> String {
        let mut out = format!("  connect        {}\n", self.connect_ms);
        out += &format!("  call started   {}\n", self.started_ms);
        out += &format!("  send lag       {}\n", self.send_lag_ms);
        if let Some(forwarding) = &self.forwarding {
            out += &forwarding.summary_lines();
        }
        out += &format!("  final latency  {}\n", self.final_latency_ms);
        out += &format!(
            "  time to final  {}  (from the end of speech in the WAV)\n",
            self.time_to_final_ms
        );
        if let Some((errors, words)) = self.word_errors {
            out += &format!(
                "  word errors    {errors}/{words} = {:.1} % WER against the reference\n",
                100.0 * errors as f64 / words.max(1) as f64
            );
        }
        out
    }

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
        out += &self.timing_lines();
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

/// The report of a run from its calls' results and the engine's figures; [`finish_report`]
/// then counts failures and verifications.
pub(super) fn new_report(
    args: &LoadgenArgs,
    results: Vec<CallResult>,
    wall_secs: f64,
    engine: Option<stats::ProcessSummary>,
    seed: u64,
    feed_lagged: u64,
) -> Report {
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
        word_errors: results
            .iter()
            .filter_map(|r| r.word_errors)
            .reduce(|(e, w), (e2, w2)| (e + e2, w + w2)),
        time_to_final_ms: Percentiles::of(
            results
                .iter()
                .flat_map(|r| r.time_to_final_ms.iter().copied())
                .collect(),
        ),
        frames_sent: results.iter().map(|r| r.frames_sent).sum(),
        finals: results.iter().map(|r| r.finals.len()).sum(),
        feed_lagged,
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
    report
}

/// Failures and verification counts from the per-call results.
pub(super) fn finish_report(report: &mut Report, expect_turns: Option<usize>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
