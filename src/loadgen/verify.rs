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
    let id = pick_call(&found, protocol)?;
    let transcript = get(&format!("/api/v1/calls/{id}/transcript"))?;
    judge_turns(&transcript, result, expect_turns)
}

/// The one completed call of `protocol` among the rows found for an external id.
fn pick_call(found: &serde_json::Value, protocol: &str) -> Result<String, String> {
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
    Ok(call["id"].as_str().unwrap_or_default().to_string())
}

/// The stored transcript against what the call saw: realtime turns numbered 1..n, the finals
/// first and at most one partial (flushed at hang-up) last, the finals exactly the ones the
/// call received, and the expected count.
fn judge_turns(
    transcript: &serde_json::Value,
    result: &CallResult,
    expect_turns: Option<usize>,
) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(seq: i64, text: &str, is_final: bool) -> serde_json::Value {
        json!({"seq": seq, "text": text, "is_final": is_final, "source": "realtime"})
    }

    fn saw(finals: &[&str]) -> CallResult {
        CallResult {
            final_seqs: (1..=finals.len() as i64).collect(),
            finals: finals.iter().map(|t| t.to_string()).collect(),
            ..CallResult::default()
        }
    }

    #[test]
    fn the_stored_finals_must_be_exactly_the_ones_seen() {
        let good = json!({"turns": [turn(1, "a", true), turn(2, "b", true), turn(3, "c", false),
            {"seq": 4, "text": "offline", "is_final": true, "source": "offline"}]});
        assert_eq!(judge_turns(&good, &saw(&["a", "b"]), Some(2)), Ok(()));
        // A lost turn, an extra one, a different text, a gap, a partial in the middle.
        assert!(judge_turns(&good, &saw(&["a", "b"]), Some(3)).is_err());
        assert!(judge_turns(&good, &saw(&["a"]), None).is_err());
        assert!(judge_turns(&good, &saw(&["a", "x"]), None).is_err());
        let gap = json!({"turns": [turn(1, "a", true), turn(3, "b", true)]});
        assert!(judge_turns(&gap, &saw(&["a", "b"]), None).is_err_and(|e| e.contains("gaps")));
        let middle = json!({"turns": [turn(1, "a", false), turn(2, "b", true)]});
        assert!(judge_turns(&middle, &saw(&["b"]), None).is_err());
    }

    #[test]
    fn one_completed_call_of_the_protocol_is_picked() {
        let found = json!({"calls": [
            {"id": "x", "protocol": "twilio", "status": "completed"},
            {"id": "y", "protocol": "vonage", "status": "completed"}]});
        assert_eq!(pick_call(&found, "vonage"), Ok("y".to_string()));
        assert!(pick_call(&found, "audiofork").is_err_and(|e| e.contains("no audiofork")));
        let live = json!({"calls": [{"id": "y", "protocol": "vonage", "status": "active"}]});
        assert!(pick_call(&live, "vonage").is_err_and(|e| e.contains("active")));
        let twins = json!({"calls": [
            {"id": "a", "protocol": "vonage", "status": "completed"},
            {"id": "b", "protocol": "vonage", "status": "completed"}]});
        assert!(pick_call(&twins, "vonage").is_err_and(|e| e.contains("2 call rows")));
    }
}
