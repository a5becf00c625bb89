//! Percentiles, and the engine's CPU and RSS: from `/proc/<pid>` for a local engine, else
//! from the `process_*` figures of its `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// p50/p90/p99/max of a sample (nearest-rank).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of `values` (any order; NaNs are ignored).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| !v.is_nan());
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        Self {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: values[values.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return f.write_str("(none)");
        }
        write!(
            f,
            "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }
}

/// One reading of the engine process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcessSample {
    /// Seconds since sampling began.
    pub at_s: f64,
    /// CPU used since the previous sample, percent of one core.
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

/// The engine's resource use over a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub rss_mb_start: f64,
    pub rss_mb_max: f64,
    pub rss_mb_end: f64,
    pub samples: Vec<ProcessSample>,
}

/// Where the engine's CPU and RSS are read.
#[derive(Debug, Clone)]
pub enum SampleSource {
    /// A local process.
    Pid(u32),
    /// The engine's `/metrics` (`process_cpu_seconds_total`, `process_resident_memory_bytes`).
    Metrics { url: String, token: Option<String> },
}

impl SampleSource {
    /// `(CPU seconds, RSS MB)` now.
    fn read(&self, agent: &ureq::Agent) -> Option<(f64, f64)> {
        match self {
            Self::Pid(pid) => crate::metrics::process::read(&pid.to_string())
                .map(|p| (p.cpu_seconds, p.resident_bytes as f64 / (1024.0 * 1024.0))),
            Self::Metrics { url, token } => {
                let mut request = agent.get(url);
                if let Some(token) = token {
                    request = request.header("Authorization", &format!("Bearer {token}"));
                }
                let text = request.call().ok()?.body_mut().read_to_string().ok()?;
                parse_process_metrics(&text)
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Self::Pid(pid) => *pid,
            Self::Metrics { .. } => 0,
        }
    }
}

/// `(CPU seconds, RSS MB)` from a Prometheus text exposition.
pub fn parse_process_metrics(text: &str) -> Option<(f64, f64)> {
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        value("process_cpu_seconds_total")?,
        value("process_resident_memory_bytes")? / (1024.0 * 1024.0),
    ))
}

/// Least-squares slope of `(x, y)` points (0 with fewer than two distinct x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Samples the engine every 500 ms on a thread of its own.
pub struct ProcessSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ProcessSummary>,
}

impl ProcessSampler {
    /// Starts sampling.
    pub fn start(source: SampleSource) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            let began = Instant::now();
            let mut samples = Vec::new();
            let first = source.read(&agent);
            let start_rss = first.map_or(0.0, |(_, r)| r);
            let mut previous = first.map(|(cpu, _)| (Instant::now(), cpu));
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let Some((cpu_s, rss_mb)) = source.read(&agent) else {
                    continue;
                };
                let now = Instant::now();
                let cpu_percent = previous.map_or(0.0, |(at, before)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (cpu_s - before).max(0.0) / secs * 100.0
                });
                previous = Some((now, cpu_s));
                samples.push(ProcessSample {
                    at_s: began.elapsed().as_secs_f64(),
                    cpu_percent,
                    rss_mb,
                });
            }
            summarise(source.pid(), start_rss, samples)
        });
        Self { stop, thread }
    }

    /// Stops sampling and summarises.
    pub fn finish(self) -> ProcessSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| summarise(0, 0.0, Vec::new()))
    }
}

fn summarise(pid: u32, rss_mb_start: f64, samples: Vec<ProcessSample>) -> ProcessSummary {
    let n = samples.len().max(1) as f64;
    ProcessSummary {
        pid,
        cpu_percent_avg: samples.iter().map(|s| s.cpu_percent).sum::<f64>() / n,
        cpu_percent_max: samples.iter().map(|s| s.cpu_percent).fold(0.0, f64::max),
        rss_mb_start,
        rss_mb_max: samples
            .iter()
            .map(|s| s.rss_mb)
            .fold(rss_mb_start, f64::max),
        rss_mb_end: samples.last().map_or(rss_mb_start, |s| s.rss_mb),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(Percentiles::of(vec![]).count, 0);
        assert_eq!(Percentiles::of(vec![3.0]).p99, 3.0);
    }

    #[test]
    fn reads_this_process_and_a_metrics_page() {
        let agent = ureq::Agent::new_with_defaults();
        let (_, rss_mb) = SampleSource::Pid(std::process::id()).read(&agent).unwrap();
        assert!(rss_mb > 1.0, "{rss_mb}");
        let page = "# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 52428800.0\n# EOF\n";
        assert_eq!(parse_process_metrics(page), Some((12.5, 50.0)));
        assert_eq!(parse_process_metrics("# EOF\n"), None);
    }

    #[test]
    fn slope_of_a_line_and_of_noise_free_flat_data() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0))
            .collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0), (2.0, 5.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }
}
