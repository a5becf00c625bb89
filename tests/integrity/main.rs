//! Transcript integrity (issue 14): every acknowledged turn stored exactly once in one gap-free
//! sequence whoever writes it; repeated answers kept; replays dropped by time; registered calls
//! that are not interrupted; provider ids stored verbatim. Every test runs on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod lifecycle;
mod turns;

/// Checks the durable promise for a call: its turns are numbered 1..n without gaps, and every
/// `(seq, text)` a client was told (`final` events) is the stored turn with that number.
pub async fn assert_told_turns_stored_once(
    store: &callengine::store::Store,
    call_id: uuid::Uuid,
    told: &[(i64, String)],
) -> Vec<callengine::store::Turn> {
    let turns = store.list_turns(call_id).await.unwrap();
    let seqs: Vec<i32> = turns.iter().map(|t| t.seq).collect();
    assert_eq!(
        seqs,
        (1..=turns.len() as i32).collect::<Vec<_>>(),
        "one gap-free sequence"
    );
    let mut told_seqs: Vec<i64> = told.iter().map(|(seq, _)| *seq).collect();
    told_seqs.sort_unstable();
    told_seqs.dedup();
    assert_eq!(
        told_seqs.len(),
        told.len(),
        "no number told twice: {told:?}"
    );
    for (seq, text) in told {
        let stored = turns.iter().find(|t| i64::from(t.seq) == *seq);
        assert_eq!(
            stored.map(|t| t.text.as_str()),
            Some(text.as_str()),
            "told turn {seq} is stored as told"
        );
    }
    turns
}
