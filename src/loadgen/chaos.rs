//! Random termination paths (`--chaos`): each call ends one of the ways real calls end, picked
//! from `--seed` and the call's number, so a run can be repeated:
//!
//! - `normal`: the whole audio and the tail of silence, the finals awaited, then the
//!   protocol's own stop (Twilio `stop`, AudioSocket hangup) and a close frame;
//! - `hangup`: at a random point, `POST /api/v1/calls/{id}/hangup` with the API token, then
//!   the engine's close is awaited (a call whose id is not known yet ends `normal`ly);
//! - `drop`: at a random point the TCP connection is dropped, no close frame, no stop;
//! - `early-close`: at a random point of the audio (mid-utterance, no tail), the normal stop
//!   and close.
//!
//! Whatever the path, the turns the client was told about must all be stored exactly once
//! (checked afterwards by [`super::verify`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use super::transport::Link;
use super::{CallPlan, CallResult, Report, Seen};

/// How a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndPath {
    Normal,
    Hangup,
    Drop,
    EarlyClose,
}

impl EndPath {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Hangup => "hangup",
            Self::Drop => "drop",
            Self::EarlyClose => "early-close",
        }
    }
}

/// The chaos options of `callengine loadgen`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChaosArgs {
    /// Random termination paths (normal stop, API hang-up, TCP drop, early close), picked per
    /// call from --seed; the run then checks that every turn a client was told about is stored
    /// exactly once (needs --api-token).
    #[arg(long)]
    pub chaos: bool,
    /// With --chaos: the paths to pick from (default: all four).
    #[arg(long, value_enum, value_delimiter = ',', requires = "chaos")]
    pub end_paths: Vec<EndPath>,
    /// Seed of the run's random choices (call lengths, end paths and points, the mock's cuts);
    /// default: a random one, written in the report.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// One call's ending: the path, and how many frames go out before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndPlan {
    pub path: EndPath,
    pub frames: u64,
}

/// The run's chaos settings.
#[derive(Debug, Clone)]
pub struct Chaos {
    paths: Vec<EndPath>,
}

impl Chaos {
    /// From the options; None without `--chaos`.
    pub fn from_args(args: &ChaosArgs) -> Option<Self> {
        args.chaos.then(|| {
            let mut paths = args.end_paths.clone();
            if paths.is_empty() {
                paths = vec![
                    EndPath::Normal,
                    EndPath::Hangup,
                    EndPath::Drop,
                    EndPath::EarlyClose,
                ];
            }
            paths.sort();
            paths.dedup();
            Self { paths }
        })
    }

    /// The ending of a call of `audio_frames` of audio followed by silence, `total_frames` in
    /// all. A cut falls in the last 90 % of the frames (of the audio, for an early close), so a
    /// call has said something first.
    pub fn plan(&self, rng: &mut fastrand::Rng, audio_frames: u64, total_frames: u64) -> EndPlan {
        let path = self.paths[rng.usize(..self.paths.len())];
        let mut cut = |n: u64| {
            let earliest = (n / 10).max(1).min(n);
            rng.u64(earliest..=n.max(earliest))
        };
        let frames = match path {
            EndPath::Normal => total_frames,
            EndPath::EarlyClose => cut(audio_frames.max(1)),
            EndPath::Hangup | EndPath::Drop => cut(total_frames.max(1)),
        };
        EndPlan {
            path,
            frames: frames.min(total_frames),
        }
    }
}

/// The generator of call `index`'s random choices in a run seeded `seed`.
pub fn call_rng(seed: u64, index: u64) -> fastrand::Rng {
    // splitmix64 of the index: neighbouring calls get unrelated streams.
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    fastrand::Rng::with_seed(seed ^ z ^ (z >> 31))
}

/// `POST /api/v1/calls/{id}/hangup`; Ok once the engine accepted it (202).
pub async fn hangup(
    agent: &ureq::Agent,
    http_base: &str,
    token: &str,
    call_id: Uuid,
) -> Result<(), String> {
    let url = format!("{http_base}/api/v1/calls/{call_id}/hangup");
    let (agent, auth) = (agent.clone(), format!("Bearer {token}"));
    let posted = tokio::task::spawn_blocking(move || {
        agent
            .post(&url)
            .header("Authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty()
            .map(|response| response.status().as_u16())
    })
    .await;
    match posted {
        Ok(Ok(202)) => Ok(()),
        Ok(Ok(status)) => Err(format!("hangup: HTTP {status}")),
        Ok(Err(err)) => Err(format!("hangup: {err}")),
        Err(err) => Err(format!("hangup: {err}")),
    }
}

/// The agent hang-ups go through.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Calls per end path, for the report.
pub fn count_paths<'a>(paths: impl Iterator<Item = &'a EndPath>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for path in paths {
        *counts.entry(path.name().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Ends the call the path's way: the protocol's stop and close (`normal`, `early-close`), an
/// abrupt drop, or an API hang-up and the engine's close (the protocol's stop when the call's
/// id is not known or the hang-up is refused).
pub(super) async fn end_link(
    plan: &CallPlan,
    link: Link,
    path: EndPath,
    result: &mut CallResult,
    seen_rx: &mut UnboundedReceiver<(Instant, Seen)>,
    pending: &mut Vec<(Instant, Seen)>,
) -> Result<Option<u16>, String> {
    match path {
        EndPath::Normal | EndPath::EarlyClose => link.finish(result.frames_sent).await,
        EndPath::Drop => {
            link.abort();
            Ok(None)
        }
        EndPath::Hangup => {
            while let Ok(seen) = seen_rx.try_recv() {
                pending.push(seen);
            }
            let started = pending.iter().find_map(|(_, seen)| match seen {
                Seen::Started(id) => Some(*id),
                _ => None,
            });
            let hung_up = match (result.call_id.or(started), &plan.api) {
                (Some(id), Some((base, token))) => hangup(&plan.http, base, token, id).await,
                _ => Err("hangup: the call's id is not known".into()),
            };
            match hung_up {
                Ok(()) => link.closed(result.frames_sent).await,
                Err(err) => {
                    result
                        .errors
                        .push(format!("{err}; stopped normally instead"));
                    link.finish(result.frames_sent).await
                }
            }
        }
    }
}

/// The report's lines about integrity, the chaos and the mock (empty when none applies).
pub(super) fn summary_lines(report: &Report) -> String {
    let mut out = String::new();
    if let Some(integrity) = &report.integrity {
        out += &format!("  {}\n", integrity.line());
    }
    if !report.end_paths.is_empty() {
        out += &format!(
            "  chaos (seed {}): end paths {:?}\n",
            report.seed, report.end_paths
        );
    }
    if let Some(mock) = &report.mock_deepgram {
        out += &format!(
            "  mock Deepgram on {}: {} streams ({} cut on purpose, {} refused), {:.0} s of audio, {} finals, {} interims\n",
            mock.addr, mock.streams, mock.streams_dropped, mock.rejected, mock.audio_secs,
            mock.finals_sent, mock.interims_sent
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Chaos {
        Chaos::from_args(&ChaosArgs {
            chaos: true,
            ..ChaosArgs::default()
        })
        .unwrap_or_else(|| Chaos { paths: Vec::new() })
    }

    #[test]
    fn the_same_seed_gives_the_same_endings_and_every_path_occurs() {
        let chaos = all();
        let plans = |seed| -> Vec<EndPlan> {
            (0..200)
                .map(|i| chaos.plan(&mut call_rng(seed, i), 150, 190))
                .collect()
        };
        assert_eq!(plans(7), plans(7));
        assert_ne!(plans(7), plans(8));
        let seen = count_paths(plans(7).iter().map(|p| &p.path));
        assert_eq!(seen.len(), 4, "{seen:?}");
        for plan in plans(7) {
            match plan.path {
                EndPath::Normal => assert_eq!(plan.frames, 190),
                EndPath::EarlyClose => assert!((15..=150).contains(&plan.frames)),
                _ => assert!((19..=190).contains(&plan.frames)),
            }
        }
    }

    #[test]
    fn chosen_paths_only_and_none_without_chaos() {
        let drops = Chaos::from_args(&ChaosArgs {
            chaos: true,
            end_paths: vec![EndPath::Drop, EndPath::Drop],
            seed: None,
        });
        let drops = drops.map(|c| c.paths);
        assert_eq!(drops, Some(vec![EndPath::Drop]));
        assert!(Chaos::from_args(&ChaosArgs::default()).is_none());
        // A call too short to cut still sends a frame.
        let plan = all().plan(&mut call_rng(1, 1), 0, 1);
        assert_eq!(plan.frames, 1);
    }
}
