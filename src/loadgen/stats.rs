//! Percentiles, and the engine's CPU and RSS read from `/proc/<pid>`.

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

/// Samples a process every 500 ms on a thread of its own.
pub struct ProcessSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ProcessSummary>,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// `(utime + stime)` in ticks, and RSS in MB.
pub fn read_process(pid: u32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some((ticks, rss_kb / 1024.0))
}

impl ProcessSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let mut samples = Vec::new();
            let mut previous = read_process(pid).map(|(t, _)| (Instant::now(), t));
            let start_rss = read_process(pid).map_or(0.0, |(_, r)| r);
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let Some((ticks, rss_mb)) = read_process(pid) else {
                    break;
                };
                let now = Instant::now();
                let cpu_percent = previous.map_or(0.0, |(at, t)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (ticks.saturating_sub(t)) as f64 / TICKS_PER_SEC / secs * 100.0
                });
                previous = Some((now, ticks));
                samples.push(ProcessSample {
                    at_s: began.elapsed().as_secs_f64(),
                    cpu_percent,
                    rss_mb,
                });
            }
            summarise(pid, start_rss, samples)
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
    fn reads_this_process() {
        let (_, rss_mb) = read_process(std::process::id()).unwrap();
        assert!(rss_mb > 1.0, "{rss_mb}");
    }
}
