//! The call lifecycle in the database: create-or-link, append turns, complete, sweep, read.
//!
//! SQLite note: a deferred transaction that reads first and writes later cannot wait for the
//! write lock (SQLite answers `SQLITE_BUSY` at once to avoid deadlock, whatever `busy_timeout`
//! says). So every write transaction here *starts with a write* to the call row; that takes the
//! lock up front, where `busy_timeout` applies, and the reads that follow are safe.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::model::*;
use super::rows::{convert_all, CallRow, JobRow, TurnRow};
use super::schema::{call_turns, calls, jobs, tenants};
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::turns::{insert_numbered, materialise_transcript, turn_row, validate_turn};
use super::{with_conn, Store, StoreError};

/// Longest external id, phone number or speaker label accepted.
const MAX_SHORT_TEXT: usize = 256;

/// Statuses that hold a transport id and take media or turns.
pub(super) const LIVE_STATUSES: [&str; 2] = ["active", "registered"];
/// `postcall_status` values.
pub const POSTCALL_PENDING: &str = "pending";
pub const POSTCALL_WAITING: &str = "waiting_recording";
pub const POSTCALL_PROCESSED: &str = "processed";
pub const POSTCALL_FAILED: &str = "failed";

impl Store {
    /// Creates the call row for a starting media session, or links to the existing one.
    ///
    /// Idempotent: with `id` set, a second call returns the same row; with `external_id` set, a
    /// second session for the same live `(tenant, protocol, external_id)` gets the live call
    /// instead of a twin. Transport ids are a per-tenant namespace: another tenant's live call
    /// with the same id is neither found nor blocks this one. Linking to an ended call, or to
    /// another tenant's, is refused alike.
    pub async fn create_or_link_call(
        &self,
        new: &NewCall,
    ) -> Result<(Call, LinkOutcome), StoreError> {
        validate_new_call(new)?;
        let row = new_call_row(new, &self.options().node_id);
        // A conflicting row can vanish between the insert and the read (the live call with
        // this external id ends); then the insert is simply tried again.
        for _ in 0..3 {
            let inserted = with_conn!(self, conn => {
                diesel::insert_into(calls::table)
                    .values(&row)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?
            });
            if inserted == 1 {
                return Ok((Call::try_from(row)?, LinkOutcome::Created));
            }
            if let Some(found) = self.find_conflicting_call(new).await? {
                let found = self.activate_registered(found, new.started_at).await?;
                return Ok((found, LinkOutcome::Linked));
            }
        }
        Err(StoreError::InvalidInput(format!(
            "call {} could neither be created nor linked",
            row.id.0
        )))
    }

    async fn find_conflicting_call(&self, new: &NewCall) -> Result<Option<Call>, StoreError> {
        if let Some(id) = new.id {
            if let Some(call) = self.get_call(id).await? {
                // Another tenant's call looks exactly like an ended one: the caller learns
                // nothing about it and cannot link into it.
                if call.tenant_id != new.tenant_id {
                    return Err(StoreError::CallUnavailable);
                }
                if call.status.is_terminal() {
                    return Err(StoreError::CallNotActive {
                        call_id: id,
                        status: call.status,
                    });
                }
                return Ok(Some(call));
            }
        }
        let Some(external_id) = &new.external_id else {
            return Ok(None);
        };
        let protocol = new.protocol.as_str();
        let live: Option<CallRow> = with_conn!(self, conn => {
            calls::table
                .filter(calls::tenant_id.eq(DbUuid(new.tenant_id)))
                .filter(calls::protocol.eq(protocol))
                .filter(calls::external_id.eq(external_id))
                .filter(calls::status.eq_any(LIVE_STATUSES))
                .select(CallRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        match (live, new.id) {
            (Some(live), Some(_)) => Err(StoreError::ExternalIdInUse {
                external_id: external_id.clone(),
                protocol: new.protocol,
                existing: live.id.0,
            }),
            (Some(live), None) => Ok(Some(Call::try_from(live)?)),
            (None, _) => Ok(None),
        }
    }

    /// Media (or a first turn) reached a registered call: it becomes `active`, started now
    /// (billing runs from the first audio, not from the registration) and owned by this node.
    /// A call that is not `registered` is returned as it is.
    pub(super) async fn activate_registered(
        &self,
        call: Call,
        started_at: DateTime<Utc>,
    ) -> Result<Call, StoreError> {
        if call.status != CallStatus::Registered {
            return Ok(call);
        }
        let started = DbTime::from(started_at);
        let node = &self.options().node_id;
        let row: Option<CallRow> = with_conn!(self, conn => {
            diesel::update(calls::table.find(DbUuid(call.id)))
                .filter(calls::status.eq(CallStatus::Registered.as_str()))
                .set((
                    calls::status.eq(CallStatus::Active.as_str()),
                    calls::started_at.eq(started),
                    calls::last_activity_at.eq(started),
                    calls::node_id.eq(node),
                    calls::updated_at.eq(DbTime::from(Utc::now())),
                ))
                .execute(conn)
                .await?;
            calls::table.find(DbUuid(call.id)).select(CallRow::as_select()).first(conn).await.optional()?
        });
        let call = Call::try_from(row.ok_or(StoreError::CallNotFound(call.id))?)?;
        if call.status.is_terminal() {
            return Err(StoreError::CallNotActive {
                call_id: call.id,
                status: call.status,
            });
        }
        Ok(call)
    }

    /// Registered calls that never started and were registered before `before` become
    /// `expired`: no turns, no post-call job, no webhook. Returns how many.
    pub async fn expire_registered_calls(
        &self,
        before: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let now = DbTime::from(Utc::now());
        let n = with_conn!(self, conn => {
            diesel::update(calls::table)
                .filter(calls::status.eq(CallStatus::Registered.as_str()))
                .filter(calls::created_at.lt(DbTime::from(before)))
                .set((
                    calls::status.eq(CallStatus::Expired.as_str()),
                    calls::end_reason.eq(Some("never_started")),
                    calls::ended_at.eq(Some(now)),
                    calls::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        });
        Ok(n)
    }

    /// Ends a call: stores the pending partial, then sets status, end time, duration, exact
    /// cost, end reason and the materialised transcript, and queues the post-call job — all in
    /// one transaction. Completing an ended call changes nothing and returns `AlreadyEnded`.
    pub async fn complete_call(
        &self,
        call_id: Uuid,
        completion: &CallCompletion,
    ) -> Result<CompletionOutcome, StoreError> {
        if !matches!(
            completion.status,
            CallStatus::Completed | CallStatus::Failed
        ) {
            return Err(StoreError::InvalidInput(format!(
                "a call is completed as completed or failed, not {}",
                completion.status
            )));
        }
        if let Some(partial) = &completion.pending_partial {
            validate_turn(partial)?;
        }
        self.finish(
            call_id,
            completion.status,
            Some(completion.ended_at),
            &completion.end_reason,
            EndDetails {
                partial: completion.pending_partial.as_ref(),
                dtmf: completion.dtmf.as_deref().filter(|d| !d.is_empty()),
                recording_url: completion.recording_url.as_deref(),
            },
        )
        .await
    }

    /// Marks calls left `active` by a dead process as `interrupted`, ended at their last
    /// activity, with transcript, cost and post-call job like any other end. Sweeps this node's
    /// active calls (call at start-up, before taking calls) and any node's calls idle since
    /// before `stale_before`. Returns the ids swept.
    pub async fn sweep_orphaned_calls(
        &self,
        stale_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let node = self.options().node_id.clone();
        let cutoff = DbTime::from(stale_before.unwrap_or(DateTime::UNIX_EPOCH));
        let orphans: Vec<(DbUuid, String)> = with_conn!(self, conn => {
            calls::table
                .filter(calls::status.eq(CallStatus::Active.as_str()))
                .filter(calls::node_id.eq(&node).or(calls::last_activity_at.lt(cutoff)))
                .select((calls::id, calls::node_id))
                .load(conn)
                .await?
        });
        let mut swept = Vec::with_capacity(orphans.len());
        for (id, owner) in orphans {
            let reason = if owner == node {
                "node_restarted"
            } else {
                "stale_call"
            };
            if let CompletionOutcome::Completed(_) = self
                .finish(
                    id.0,
                    CallStatus::Interrupted,
                    None,
                    reason,
                    EndDetails::default(),
                )
                .await?
            {
                swept.push(id.0);
            }
        }
        Ok(swept)
    }

    /// The shared end-of-call transaction; `ended_at = None` means "at last activity". One
    /// transaction written once for both backends inside `with_conn!` (its body is expanded per
    /// connection type, so it cannot be cut into generic helpers without naming diesel's
    /// backend bounds); what it decides is the pure [`EndPlan`].
    async fn finish(
        &self,
        call_id: Uuid,
        status: CallStatus,
        ended_at: Option<DateTime<Utc>>,
        reason: &str,
        details: EndDetails<'_>,
    ) -> Result<CompletionOutcome, StoreError> {
        let EndDetails {
            partial,
            dtmf,
            recording_url,
        } = details;
        let now = DbTime::from(Utc::now());
        let partial_row = partial.map(|t| turn_row(call_id, t, now));
        let partial_row = &partial_row;
        let default_rate = self.options().default_cost_per_second_micros;
        let max_attempts = self.options().postcall_max_attempts;
        let recording_wait = self.options().recording_wait;
        let outcome: Result<CompletionOutcome, StoreError> = with_conn!(self, conn => {
            conn.transaction(async |conn| {
                let id = DbUuid(call_id);
                let claimed = diesel::update(calls::table.find(id))
                    .filter(calls::status.eq(CallStatus::Active.as_str()))
                    .set(calls::updated_at.eq(now))
                    .execute(conn)
                    .await?;
                let row: Option<CallRow> = calls::table.find(id).select(CallRow::as_select()).first(conn).await.optional()?;
                let row = row.ok_or(StoreError::CallNotFound(call_id))?;
                if claimed == 0 {
                    return Ok(CompletionOutcome::AlreadyEnded(Call::try_from(row)?));
                }
                if let Some(partial) = partial_row {
                    insert_numbered!(conn, id, std::slice::from_ref(partial));
                }
                let turns: Vec<TurnRow> = call_turns::table
                    .filter(call_turns::call_id.eq(id))
                    .order(call_turns::seq.asc())
                    .select(TurnRow::as_select())
                    .load(conn)
                    .await?;
                let tenant: Option<(i64, Option<DbJson>)> = tenants::table
                    .find(row.tenant_id)
                    .select((tenants::cost_per_second_micros, tenants::postcall_config))
                    .first(conn)
                    .await
                    .optional()?;
                let (rate, config) = tenant.map_or((None, None), |(rate, config)| (Some(rate), config));
                let end = EndPlan::new(&row, rate.unwrap_or(default_rate), config.as_ref(), ended_at, recording_url.is_some(), recording_wait, now)?;
                let EndPlan { ended, seconds, cost, run_at, postcall_status } = end;
                let turns: Vec<Turn> = convert_all(turns)?;
                let (text, transcript) = materialise_transcript(&turns);
                diesel::update(calls::table.find(id))
                    .set((
                        calls::status.eq(status.as_str()),
                        calls::ended_at.eq(Some(ended)),
                        calls::last_activity_at.eq(ended.max(row.last_activity_at)),
                        calls::duration_seconds.eq(Some(seconds)),
                        calls::cost_micros.eq(Some(cost)),
                        calls::end_reason.eq(Some(reason)),
                        calls::transcript_text.eq(Some(text)),
                        calls::transcript_json.eq(Some(DbJson(transcript))),
                        calls::dtmf.eq(dtmf),
                        calls::postcall_status.eq(Some(postcall_status)),
                        calls::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                if let Some(url) = recording_url {
                    diesel::update(calls::table.find(id))
                        .set((
                            calls::recording_url.eq(Some(url)),
                            calls::recording_id.eq(Some("engine")),
                            calls::recording_status.eq(Some("completed")),
                        ))
                        .execute(conn)
                        .await?;
                }
                diesel::insert_into(jobs::table)
                    .values(postcall_job(call_id, max_attempts, now, run_at))
                    .on_conflict(jobs::dedupe_key)
                    .do_nothing()
                    .execute(conn)
                    .await?;
                let row: CallRow = calls::table.find(id).select(CallRow::as_select()).first(conn).await?;
                Ok(CompletionOutcome::Completed(Call::try_from(row)?))
            })
            .await
        });
        outcome
    }
}

/// The row of a new, live call (every later field empty).
pub(super) fn new_call_row(new: &NewCall, node_id: &str) -> CallRow {
    let now = DbTime::from(Utc::now());
    let started = DbTime::from(new.started_at);
    CallRow {
        id: DbUuid(new.id.unwrap_or_else(Uuid::new_v4)),
        tenant_id: DbUuid(new.tenant_id),
        campaign_id: new.campaign_id.map(DbUuid),
        lead_id: new.lead_id.map(DbUuid),
        phone_number: new.phone_number.clone().unwrap_or_else(|| "unknown".into()),
        external_id: new.external_id.clone(),
        protocol: new.protocol.as_str().into(),
        direction: new.direction.as_str().into(),
        // Registered through the API: waiting for its media or first turn.
        status: match new.protocol {
            Protocol::Api => CallStatus::Registered,
            _ => CallStatus::Active,
        }
        .as_str()
        .into(),
        started_at: started,
        ended_at: None,
        last_activity_at: started,
        duration_seconds: None,
        cost_micros: None,
        end_reason: None,
        transcript_text: None,
        transcript_json: None,
        recording_id: None,
        recording_url: None,
        offline_transcript: None,
        summary: None,
        extracted_fields: None,
        node_id: node_id.into(),
        created_at: now,
        updated_at: now,
        dtmf: None,
        media_metadata: new.media_metadata.clone().map(DbJson),
        recording_status: None,
        postcall_error: None,
        postcall_status: None,
        processed_at: None,
        recording_expected: false,
    }
}

/// What ending a call writes, decided from its row alone: the end (never before the start), the
/// billable seconds and their cost, and whether the post-call job waits for a recording.
#[derive(Debug, Clone, Copy, PartialEq)]
struct EndPlan {
    ended: DbTime,
    seconds: i64,
    cost: i64,
    run_at: DbTime,
    postcall_status: &'static str,
}

impl EndPlan {
    fn new(
        row: &CallRow,
        rate: i64,
        config: Option<&DbJson>,
        ended_at: Option<DateTime<Utc>>,
        recording_given: bool,
        recording_wait: std::time::Duration,
        now: DbTime,
    ) -> Result<Self, StoreError> {
        let expects_recording = row.recording_expected
            || config.is_some_and(|c| c.0["expect_recording"] == serde_json::Value::Bool(true));
        let waiting = expects_recording && !recording_given && row.recording_url.is_none();
        let run_at = match waiting {
            true => {
                DbTime::from(now.0 + chrono::Duration::from_std(recording_wait).unwrap_or_default())
            }
            false => now,
        };
        let ended = ended_at
            .map(DbTime::from)
            .unwrap_or(row.last_activity_at)
            .max(row.started_at);
        let seconds = billable_seconds(row.started_at.0, ended.0);
        let cost = seconds
            .checked_mul(rate)
            .ok_or_else(|| StoreError::InvalidInput("call cost overflows".into()))?;
        Ok(Self {
            ended,
            seconds,
            cost,
            run_at,
            postcall_status: if waiting {
                POSTCALL_WAITING
            } else {
                POSTCALL_PENDING
            },
        })
    }
}

/// What an end writes besides status and times.
#[derive(Default, Clone, Copy)]
struct EndDetails<'a> {
    partial: Option<&'a NewTurn>,
    dtmf: Option<&'a str>,
    recording_url: Option<&'a str>,
}

fn postcall_job(call_id: Uuid, max_attempts: i32, now: DbTime, run_at: DbTime) -> JobRow {
    JobRow {
        id: DbUuid(Uuid::new_v4()),
        kind: JOB_KIND_POSTCALL.into(),
        call_id: Some(DbUuid(call_id)),
        dedupe_key: Some(format!("{JOB_KIND_POSTCALL}:{call_id}")),
        payload: DbJson(json!({ "call_id": call_id })),
        status: JOB_STATUS_QUEUED.into(),
        attempts: 0,
        max_attempts,
        run_at,
        locked_by: None,
        locked_at: None,
        lease_expires_at: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

fn validate_new_call(new: &NewCall) -> Result<(), StoreError> {
    let too_long = |name: &str, value: &Option<String>| match value {
        Some(v) if v.is_empty() || v.len() > MAX_SHORT_TEXT => Err(StoreError::InvalidInput(
            format!("{name} must be 1 to {MAX_SHORT_TEXT} bytes"),
        )),
        _ => Ok(()),
    };
    too_long("external_id", &new.external_id)?;
    too_long("phone_number", &new.phone_number)
}

/// Whole seconds billed for a call: any started second counts, never negative.
pub fn billable_seconds(started: DateTime<Utc>, ended: DateTime<Utc>) -> i64 {
    let millis = (ended - started).num_milliseconds().max(0);
    (millis + 999) / 1000
}

#[cfg(test)]
mod tests;
