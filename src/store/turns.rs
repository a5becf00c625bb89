//! Turns: numbered by the database in the transaction that stores them, found again by their
//! idempotency key, and mirrored on the call row's transcript. See D26 in docs/decisions.md.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::model::*;
use super::rows::{convert_all, TurnRow};
use super::schema::{call_turns, calls};
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::{with_conn, Store, StoreError};

/// Longest turn key or speaker accepted.
const MAX_SHORT_TEXT: usize = 256;

/// Inside a transaction that holds the call row: inserts `rows` (`&[TurnRow]`) numbered after
/// the call's highest turn, except a row whose key is already stored; yields the outcomes.
macro_rules! insert_numbered {
    ($conn:ident, $id:expr, $rows:expr) => {{
        let last: Option<i32> = call_turns::table
            .filter(call_turns::call_id.eq($id))
            .select(diesel::dsl::max(call_turns::seq))
            .first($conn)
            .await?;
        let mut next = last.unwrap_or(0);
        let mut outcomes = Vec::with_capacity($rows.len());
        for row in $rows.iter() {
            if let Some(key) = &row.turn_key {
                let stored: Option<i32> = call_turns::table
                    .filter(call_turns::call_id.eq($id))
                    .filter(call_turns::turn_key.eq(key))
                    .select(call_turns::seq)
                    .first($conn)
                    .await
                    .optional()?;
                if let Some(seq) = stored {
                    outcomes.push(AppendOutcome::AlreadyPresent { seq });
                    continue;
                }
            }
            next += 1;
            let numbered = TurnRow {
                seq: next,
                ..row.clone()
            };
            diesel::insert_into(call_turns::table)
                .values(&numbered)
                .execute($conn)
                .await?;
            outcomes.push(AppendOutcome::Inserted { seq: next });
        }
        outcomes
    }};
}
pub(super) use insert_numbered;

/// Inside a transaction: rewrites the call's `transcript_text` / `transcript_json` from its
/// stored turns, so readers of the row see every committed turn.
macro_rules! refresh_transcript {
    ($conn:ident, $id:expr, $now:expr) => {{
        let stored: Vec<TurnRow> = call_turns::table
            .filter(call_turns::call_id.eq($id))
            .order(call_turns::seq.asc())
            .select(TurnRow::as_select())
            .load($conn)
            .await?;
        let stored: Vec<Turn> = convert_all(stored)?;
        let (text, json) = materialise_transcript(&stored);
        diesel::update(calls::table.find($id))
            .set((
                calls::transcript_text.eq(Some(text)),
                calls::transcript_json.eq(Some(DbJson(json))),
            ))
            .execute($conn)
            .await?;
    }};
}
pub(super) use refresh_transcript;

impl Store {
    /// Appends one turn; see [`Store::append_turns`].
    pub async fn append_turn(
        &self,
        call_id: Uuid,
        turn: &NewTurn,
    ) -> Result<AppendOutcome, StoreError> {
        let outcomes = self
            .append_turns(call_id, std::slice::from_ref(turn))
            .await?;
        outcomes
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::InvalidInput("no outcome for appended turn".into()))
    }

    /// Appends turns to an active call in one transaction, in the order given.
    ///
    /// The database numbers them: the call row is locked first (every writer of the call —
    /// streams, channels, webhooks, nodes — queues there), then each turn gets the call's next
    /// number, so one call has one gap-free sequence whoever writes. A turn whose `key` is
    /// already stored is not written again and reports `AlreadyPresent` with its number (a
    /// retry after a lost acknowledgement); that holds after the call has ended too, while new
    /// turns are then refused with `CallNotActive`. The call's `transcript_text` and
    /// `transcript_json` are rewritten in the same transaction, so the row is always current.
    pub async fn append_turns(
        &self,
        call_id: Uuid,
        turns: &[NewTurn],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        turns.iter().try_for_each(validate_turn)?;
        let now = DbTime::from(Utc::now());
        let rows: Vec<TurnRow> = turns.iter().map(|t| turn_row(call_id, t, now)).collect();
        let rows = &rows;
        let id = DbUuid(call_id);
        with_conn!(self, conn => {
            conn.transaction(async |conn| {
                let touched = diesel::update(calls::table.find(id))
                    .filter(calls::status.eq(CallStatus::Active.as_str()))
                    .set((calls::last_activity_at.eq(now), calls::updated_at.eq(now)))
                    .execute(conn)
                    .await?;
                if touched == 0 {
                    let status: Option<String> = calls::table
                        .find(id)
                        .select(calls::status)
                        .first(conn)
                        .await
                        .optional()?;
                    let status: CallStatus = status.ok_or(StoreError::CallNotFound(call_id))?.parse()?;
                    let mut outcomes = Vec::with_capacity(rows.len());
                    for row in rows {
                        let stored: Option<i32> = match &row.turn_key {
                            Some(key) => call_turns::table
                                .filter(call_turns::call_id.eq(id))
                                .filter(call_turns::turn_key.eq(key))
                                .select(call_turns::seq)
                                .first(conn)
                                .await
                                .optional()?,
                            None => None,
                        };
                        match stored {
                            Some(seq) => outcomes.push(AppendOutcome::AlreadyPresent { seq }),
                            None => return Err(StoreError::CallNotActive { call_id, status }),
                        }
                    }
                    return Ok(outcomes);
                }
                let outcomes = insert_numbered!(conn, id, rows);
                if outcomes.iter().any(|o| matches!(o, AppendOutcome::Inserted { .. })) {
                    refresh_transcript!(conn, id, now);
                }
                Ok(outcomes)
            })
            .await
        })
    }

    /// A call's turns in sequence order.
    pub async fn list_turns(&self, call_id: Uuid) -> Result<Vec<Turn>, StoreError> {
        let rows: Vec<TurnRow> = with_conn!(self, conn => {
            call_turns::table
                .filter(call_turns::call_id.eq(DbUuid(call_id)))
                .order(call_turns::seq.asc())
                .select(TurnRow::as_select())
                .load(conn)
                .await?
        });
        convert_all(rows)
    }
}

/// A turn's row; its `seq` (0 here) is allocated when it is inserted.
pub(super) fn turn_row(call_id: Uuid, turn: &NewTurn, now: DbTime) -> TurnRow {
    TurnRow {
        id: DbUuid(Uuid::new_v4()),
        call_id: DbUuid(call_id),
        seq: 0,
        turn_key: turn.key.clone(),
        speaker: turn.speaker.clone(),
        speaker_label: turn.speaker_label.clone(),
        text: turn.text.clone(),
        is_final: turn.is_final,
        start_ms: turn.start_ms,
        end_ms: turn.end_ms,
        confidence: turn.confidence,
        source: turn.source.as_str().into(),
        created_at: now,
    }
}

pub(super) fn validate_turn(turn: &NewTurn) -> Result<(), StoreError> {
    if turn
        .key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_SHORT_TEXT)
    {
        return Err(StoreError::InvalidInput(
            "turn key must be 1 to 256 bytes".into(),
        ));
    }
    if turn.speaker.is_empty() || turn.speaker.len() > MAX_SHORT_TEXT {
        return Err(StoreError::InvalidInput(
            "turn speaker must be 1 to 256 bytes".into(),
        ));
    }
    if matches!(turn.confidence, Some(c) if !c.is_finite()) {
        return Err(StoreError::InvalidInput(
            "turn confidence must be finite".into(),
        ));
    }
    Ok(())
}

/// The transcript stored on the call row: `speaker: text` lines, and the same turns as JSON.
pub fn materialise_transcript(turns: &[Turn]) -> (String, serde_json::Value) {
    let text = turns
        .iter()
        .map(|t| format!("{}: {}", t.speaker, t.text))
        .collect::<Vec<_>>()
        .join("\n");
    let json = turns
        .iter()
        .map(|t| {
            json!({
                "seq": t.seq, "speaker": t.speaker, "text": t.text, "is_final": t.is_final,
                "start_ms": t.start_ms, "end_ms": t.end_ms, "confidence": t.confidence,
                "source": t.source,
            })
        })
        .collect();
    (text, serde_json::Value::Array(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn transcript_lists_turns_in_given_order() {
        let turn = |seq, speaker: &str, text: &str| Turn {
            id: Uuid::nil(),
            call_id: Uuid::nil(),
            seq,
            speaker: speaker.into(),
            speaker_label: None,
            text: text.into(),
            is_final: seq == 1,
            start_ms: None,
            end_ms: None,
            confidence: None,
            source: TurnSource::Realtime,
            created_at: DateTime::UNIX_EPOCH,
        };
        let (text, json) =
            materialise_transcript(&[turn(1, "agent", "hello"), turn(2, "contact", "hi the")]);
        assert_eq!(text, "agent: hello\ncontact: hi the");
        assert_eq!(json[1]["is_final"], false);
        assert_eq!(json[1]["source"], "realtime");
    }
}
