//! After the run: every call the load generator made is read back through the engine's API
//! (`/api/v1/calls/by-external/{id}`, then its transcript) and must be `completed` with its
//! realtime turns numbered 1..n without gaps, its final turns exactly the finals the call saw
//! (and the expected count when one was given) — a partial the hang-up flushed may follow them.
//! Anything else is reported per call and fails the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::CallResult;

/// What the API said about one call, or why it does not match.
pub fn check(
    agent: &ureq::Agent,
    http_base: &str,
    token: &str,
    protocol: &str,
    result: &CallResult,
    expect_turns: Option<usize>,
) -> Result<(), String> {
    let get = |path: &str| -> Result<serde_json::Value, String> {
        let url = format!("{http_base}{path}");
        let mut response = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| format!("GET {path}: {e}"))?;
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("GET {path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}"))
    };
    let found = get(&format!("/api/v1/calls/by-external/{}", result.external_id))?;
    let calls = found["calls"].as_array().cloned().unwrap_or_default();
    let mine: Vec<&serde_json::Value> =
        calls.iter().filter(|c| c["protocol"] == protocol).collect();
    let call = match mine.as_slice() {
        [one] => *one,
        [] => {
            let others: Vec<String> = calls.iter().map(|c| c["protocol"].to_string()).collect();
            return Err(format!(
                "no {protocol} call row (rows for this id: {others:?})"
            ));
        }
        more => return Err(format!("{} call rows for one call", more.len())),
    };
    if call["status"] != "completed" {
        return Err(format!(
            "status {} (end reason {})",
            call["status"], call["end_reason"]
        ));
    }
    let id = call["id"].as_str().unwrap_or_default();
    let transcript = get(&format!("/api/v1/calls/{id}/transcript"))?;
    // Realtime turns: the finals, then at most one partial the hang-up flushed.
    let turns: Vec<(i64, String, bool)> = transcript["turns"]
        .as_array()
        .map(|turns| {
            turns
                .iter()
                .filter(|t| t["source"] == "realtime")
                .map(|t| {
                    (
                        t["seq"].as_i64().unwrap_or(-1),
                        t["text"].as_str().unwrap_or_default().to_string(),
                        t["is_final"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let seqs: Vec<i64> = turns.iter().map(|t| t.0).collect();
    if seqs.iter().enumerate().any(|(i, s)| *s != i as i64 + 1) {
        return Err(format!("stored turns out of order or with gaps: {seqs:?}"));
    }
    if turns.iter().rev().skip(1).any(|t| !t.2) {
        return Err("a stored partial before the last turn".into());
    }
    let finals: Vec<&(i64, String, bool)> = turns.iter().filter(|t| t.2).collect();
    if let Some(n) = expect_turns {
        if finals.len() != n {
            return Err(format!("{} final turns stored, expected {n}", finals.len()));
        }
    }
    let seen: Vec<(i64, &str)> = result
        .final_seqs
        .iter()
        .zip(&result.finals)
        .map(|(s, t)| (*s, t.as_str()))
        .collect();
    let stored: Vec<(i64, &str)> = finals.iter().map(|t| (t.0, t.1.as_str())).collect();
    if seen != stored {
        return Err(format!(
            "stored turns differ from the finals the call saw: {} stored, {} seen",
            stored.len(),
            seen.len()
        ));
    }
    Ok(())
}

/// Checks every call on `threads` threads; fills `verify_error` of the ones that fail.
pub fn check_all(
    results: &mut [CallResult],
    http_base: &str,
    token: &str,
    protocol: &str,
    expect_turns: Option<usize>,
    threads: usize,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let next = Arc::new(AtomicUsize::new(0));
    let total = results.len();
    let outcomes: Vec<(usize, Result<(), String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let (agent, next) = (agent.clone(), next.clone());
                let results = &*results;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break out;
                        }
                        out.push((
                            i,
                            check(
                                &agent,
                                http_base,
                                token,
                                protocol,
                                &results[i],
                                expect_turns,
                            ),
                        ));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, outcome) in outcomes {
        results[i].verified = Some(outcome.is_ok());
        if let Err(why) = outcome {
            results[i].verify_error = Some(why);
        }
    }
}
