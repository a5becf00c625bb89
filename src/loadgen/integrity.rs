//! Exactly-once, the check a client can rely on however its call ended: every turn it was
//! told about (a `final` event: `seq`, `text`, …) is stored once — a realtime row with that seq
//! and text; no two realtime rows of the call share speaker, start and end (a duplicate, e.g.
//! a replay after an STT reconnect stored again); the stored seqs are 1..n without gaps.
//! Figures per call and for the run. Pure: the stored transcript comes from [`super::verify`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::CallResult;

/// A turn a call was told about: one `final` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    pub seq: i64,
    pub text: String,
    pub speaker: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

/// One call's stored turns against what it was told.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// The call's status (`none`: no row).
    pub status: String,
    pub told: usize,
    /// Realtime rows stored.
    pub stored: usize,
    /// Told turns with no row of that seq and text.
    pub missing: usize,
    /// Rows beyond the first with one speaker, start and end.
    pub duplicated: usize,
    /// Stored seqs are not 1..n.
    pub gaps: bool,
}

impl Integrity {
    /// Why the call breaks exactly-once, if it does.
    pub fn problem(&self) -> Option<String> {
        (self.missing > 0 || self.duplicated > 0 || self.gaps).then(|| {
            format!(
                "exactly-once broken: {} of {} told turns missing, {} duplicated rows{} (status {})",
                self.missing,
                self.told,
                self.duplicated,
                if self.gaps { ", seqs with gaps" } else { "" },
                self.status
            )
        })
    }
}

/// A stored realtime row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    seq: i64,
    text: String,
    speaker: String,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
}

/// The realtime rows of a `/transcript` response.
pub fn realtime_rows(transcript: &serde_json::Value) -> Vec<Row> {
    let turns = transcript["turns"].as_array().cloned().unwrap_or_default();
    turns
        .iter()
        .filter(|t| t["source"] == "realtime")
        .map(|t| Row {
            seq: t["seq"].as_i64().unwrap_or(-1),
            text: t["text"].as_str().unwrap_or_default().to_string(),
            speaker: t["speaker"].as_str().unwrap_or_default().to_string(),
            start_ms: t["start_ms"].as_i64(),
            end_ms: t["end_ms"].as_i64(),
        })
        .collect()
}

/// Told turns against stored rows.
pub fn exactly_once(rows: &[Row], told: &[Told], status: &str) -> Integrity {
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    let mut same_time: HashMap<(&str, Option<i64>, Option<i64>), usize> = HashMap::new();
    for row in rows
        .iter()
        .filter(|r| r.start_ms.is_some() || r.end_ms.is_some())
    {
        *same_time
            .entry((row.speaker.as_str(), row.start_ms, row.end_ms))
            .or_insert(0) += 1;
    }
    let mut missing = 0;
    let mut duplicated: usize = same_time.values().map(|n| n - 1).sum();
    for turn in told {
        match rows
            .iter()
            .filter(|r| r.seq == turn.seq && r.text == turn.text)
            .count()
        {
            0 => missing += 1,
            // One seq, two rows: only a broken unique key allows it.
            n => duplicated += n - 1,
        }
    }
    Integrity {
        status: status.to_string(),
        told: told.len(),
        stored: rows.len(),
        missing,
        duplicated,
        gaps: seqs.iter().enumerate().any(|(i, s)| *s != i as i64 + 1),
    }
}

/// Exactly-once over the whole run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IntegrityTotals {
    pub calls: usize,
    /// Calls read back (the others were not verified).
    pub calls_checked: usize,
    pub told_turns: usize,
    pub stored_turns: usize,
    pub missing: usize,
    pub duplicated: usize,
    pub calls_with_gaps: usize,
    /// Calls per stored status (`none`: no row).
    pub statuses: BTreeMap<String, usize>,
}

impl IntegrityTotals {
    /// Sums the checked calls.
    pub fn of(results: &[CallResult]) -> Self {
        let mut totals = Self {
            calls: results.len(),
            ..Self::default()
        };
        for integrity in results.iter().filter_map(|r| r.integrity.as_ref()) {
            totals.calls_checked += 1;
            totals.told_turns += integrity.told;
            totals.stored_turns += integrity.stored;
            totals.missing += integrity.missing;
            totals.duplicated += integrity.duplicated;
            totals.calls_with_gaps += usize::from(integrity.gaps);
            *totals.statuses.entry(integrity.status.clone()).or_insert(0) += 1;
        }
        totals
    }

    /// Any told turn lost or stored twice, or a gap.
    pub fn broken(&self) -> bool {
        self.missing > 0 || self.duplicated > 0 || self.calls_with_gaps > 0
    }

    /// One line for the summary.
    pub fn line(&self) -> String {
        format!(
            "exactly once: {} calls ({} checked), {} told turns, {} stored turns, {} missing, {} duplicated, {} with gaps; statuses {:?}",
            self.calls,
            self.calls_checked,
            self.told_turns,
            self.stored_turns,
            self.missing,
            self.duplicated,
            self.calls_with_gaps,
            self.statuses
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(seq: i64, text: &str, start: i64, end: i64) -> serde_json::Value {
        json!({"seq": seq, "text": text, "is_final": true, "source": "realtime",
            "speaker": "caller", "start_ms": start, "end_ms": end})
    }

    fn told(seq: i64, text: &str) -> Told {
        Told {
            seq,
            text: text.into(),
            ..Told::default()
        }
    }

    #[test]
    fn every_told_turn_must_be_stored_once_and_repeated_words_are_separate_turns() {
        let stored = json!({"turns": [row(1, "Yes.", 0, 500), row(2, "Yes.", 900, 1400),
            row(3, "Yes.", 1800, 2100)]});
        let rows = realtime_rows(&stored);
        // Told about two of three (the third was committed as the client went): fine.
        let ok = exactly_once(&rows, &[told(1, "Yes."), told(2, "Yes.")], "interrupted");
        assert_eq!(
            (ok.told, ok.stored, ok.missing, ok.duplicated),
            (2, 3, 0, 0)
        );
        assert_eq!(ok.problem(), None);
        // Told about a turn that is not there, or with other words.
        let lost = exactly_once(&rows, &[told(4, "Yes."), told(1, "No.")], "completed");
        assert_eq!(lost.missing, 2);
        assert!(lost.problem().is_some_and(|p| p.contains("2 of 2")));
        // A replay stored twice: same speaker and audio range under two seqs.
        let twice = json!({"turns": [row(1, "Yes.", 0, 500), row(2, "Yes.", 0, 500)]});
        let dup = exactly_once(&realtime_rows(&twice), &[told(1, "Yes.")], "completed");
        assert_eq!((dup.missing, dup.duplicated), (0, 1));
        let gap = json!({"turns": [row(1, "a", 0, 1), row(3, "b", 2, 3)]});
        assert!(exactly_once(&realtime_rows(&gap), &[], "completed").gaps);
        // No row at all is fine only for a call told nothing.
        assert_eq!(exactly_once(&[], &[], "none").problem(), None);
        assert_eq!(exactly_once(&[], &[told(1, "a")], "none").missing, 1);
    }

    #[test]
    fn totals_add_up_the_checked_calls() {
        let checked = CallResult {
            integrity: Some(Integrity {
                status: "completed".into(),
                told: 3,
                stored: 4,
                missing: 1,
                duplicated: 0,
                gaps: false,
            }),
            ..CallResult::default()
        };
        let totals = IntegrityTotals::of(&[checked.clone(), checked, CallResult::default()]);
        assert_eq!((totals.calls, totals.calls_checked), (3, 2));
        assert_eq!(
            (totals.told_turns, totals.stored_turns, totals.missing),
            (6, 8, 2)
        );
        assert!(totals.broken());
        assert!(totals.line().contains("6 told turns"), "{}", totals.line());
    }
}
