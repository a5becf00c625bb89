//! After the run: every call the load generator made is read back through the engine's API
//! (`/api/v1/calls/by-external/{id}`, then its transcript) and must be `completed` with its
//! realtime turns numbered 1..n without gaps, its final turns exactly the finals the call saw
//! (and the expected count when one was given) — a partial the hang-up flushed may follow them.
//! Anything else is reported per call and fails the run.
//!
//! With `--chaos` calls end every way (and the engine may mark an abruptly ended call
//! `interrupted` or `failed`), so the check is the one a client can rely on whatever happens:
//! every turn it was told about (a `final` event: `seq`, `text`, …) is stored exactly once — a
//! realtime row with that seq and text; no two realtime rows of the call with the same
//! speaker, start and end (a duplicate); seqs 1..n without gaps. Both modes count told,
//! stored, missing and duplicated turns for the report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::integrity::{exactly_once, realtime_rows, Integrity};
use super::CallResult;

/// A GET of the API as JSON, retried a few times (the database may be back in a moment).
fn get_json(
    agent: &ureq::Agent,
    http_base: &str,
    token: &str,
    path: &str,
) -> Result<serde_json::Value, String> {
    let url = format!("{http_base}{path}");
    let once = || -> Result<serde_json::Value, String> {
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
    let mut last = once();
    for _ in 0..3 {
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        last = once();
    }
    last
}

/// What the API says about one call: its exactly-once figures (when its transcript could be
/// read) and whether it passes — the strict check, or with `chaos` exactly-once alone.
pub fn check(
    agent: &ureq::Agent,
    http_base: &str,
    token: &str,
    protocol: &str,
    result: &CallResult,
    expect_turns: Option<usize>,
    chaos: bool,
) -> (Option<Integrity>, Result<(), String>) {
    let get = |path: &str| get_json(agent, http_base, token, path);
    let by_external = format!("/api/v1/calls/by-external/{}", result.external_id);
    let picked = match get(&by_external) {
        Ok(found) if chaos => settled(&get, &by_external, found, protocol, result),
        Ok(found) => pick_call(&found, protocol).map(|id| Some((id, "completed".to_string()))),
        Err(err) => Err(err),
    };
    let (id, status) = match picked {
        Ok(Some(picked)) => picked,
        // No row at all (a call refused at its start, e.g. while the database was cut): fine
        // as long as it was told nothing.
        Ok(None) => {
            let integrity = exactly_once(&[], &result.told, "none");
            let outcome = integrity.problem().map_or(Ok(()), Err);
            return (Some(integrity), outcome);
        }
        Err(err) => return (None, Err(err)),
    };
    let transcript = match get(&format!("/api/v1/calls/{id}/transcript")) {
        Ok(transcript) => transcript,
        Err(err) => return (None, Err(err)),
    };
    let integrity = exactly_once(&realtime_rows(&transcript), &result.told, &status);
    let outcome = if chaos {
        integrity.problem().map_or(Ok(()), Err)
    } else {
        judge_turns(&transcript, result, expect_turns)
    };
    (Some(integrity), outcome)
}

/// With chaos: the call's row (by the id the call was given, when it got one) once it is no
/// longer `active` — an abruptly ended call may take the engine a moment — or after 30 s.
fn settled(
    get: &dyn Fn(&str) -> Result<serde_json::Value, String>,
    path: &str,
    mut found: serde_json::Value,
    protocol: &str,
    result: &CallResult,
) -> Result<Option<(String, String)>, String> {
    for _ in 0..30 {
        match pick_any(&found, protocol, result.call_id)? {
            Some((_, status)) if status == "active" => {}
            other => return Ok(other),
        }
        std::thread::sleep(Duration::from_secs(1));
        found = get(path)?;
    }
    pick_any(&found, protocol, result.call_id)
}

/// The call's row among those found for an external id, in any status: `(id, status)`.
fn pick_any(
    found: &serde_json::Value,
    protocol: &str,
    call_id: Option<uuid::Uuid>,
) -> Result<Option<(String, String)>, String> {
    let calls = found["calls"].as_array().cloned().unwrap_or_default();
    let mine: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c["protocol"] == protocol)
        .filter(|c| call_id.is_none_or(|id| c["id"].as_str() == Some(id.to_string().as_str())))
        .collect();
    match mine.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((
            one["id"].as_str().unwrap_or_default().to_string(),
            one["status"].as_str().unwrap_or("unknown").to_string(),
        ))),
        more => Err(format!("{} call rows for one call", more.len())),
    }
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
    chaos: bool,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let next = Arc::new(AtomicUsize::new(0));
    let total = results.len();
    type Outcome = (usize, (Option<Integrity>, Result<(), String>));
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
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
                                chaos,
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
    for (i, (integrity, outcome)) in outcomes {
        results[i].integrity = integrity;
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

    #[test]
    fn a_chaos_call_is_found_in_any_status_by_its_id() {
        let id = uuid::Uuid::new_v4();
        let found = json!({"calls": [
            {"id": "other", "protocol": "voice", "status": "completed"},
            {"id": id.to_string(), "protocol": "voice", "status": "interrupted"}]});
        assert_eq!(
            pick_any(&found, "voice", Some(id)),
            Ok(Some((id.to_string(), "interrupted".to_string())))
        );
        assert!(pick_any(&found, "voice", None).is_err());
        assert_eq!(pick_any(&found, "twilio", None), Ok(None));
    }
}
