//! The durable job queue.
//!
//! Claiming ([`claim_oldest!`], shared with the webhook outbox in `deliveries.rs`): on
//! PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED` inside a transaction, so workers on several
//! machines take different jobs without waiting on each other; on SQLite an optimistic pick
//! and a guarded `UPDATE … RETURNING`, atomic under SQLite's single write lock. A claim sets a lease and counts an attempt; a job whose lease expired (its
//! worker died) is due again, unless that was its last attempt: then it is `dead`. Retries back
//! off exponentially with jitter up to a cap; after the last attempt a job is `dead`.
//! Webhook deliveries are claimed the same way.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::model::{Job, JOB_STATUS_DEAD, JOB_STATUS_DONE, JOB_STATUS_QUEUED};
use super::rows::JobRow;
use super::schema::jobs;
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::{with_conn, Pools, Store, StoreError};

/// Status of a claimed job.
pub const JOB_STATUS_RUNNING: &str = "running";

/// `last_error` of a job made dead because its last attempt's lease lapsed without a result.
pub const LEASE_LAPSED_ON_LAST_ATTEMPT: &str =
    "the lease of the last attempt lapsed without a result (the worker died, hung or panicked)";

/// What a post-call step saves on the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostcallUpdate {
    pub offline_transcript: Option<String>,
    /// Offline turns `(start_ms, text)`, stored with source `offline` after the call's turns,
    /// in the same transaction as the offline transcript.
    pub offline_turns: Vec<(i64, String)>,
    pub summary: Option<String>,
    pub extracted_fields: Option<Value>,
    pub postcall_error: Option<String>,
}

/// How a finished attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Done,
    /// Try again at this time (or `dead` when out of attempts).
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Never retry.
    Dead {
        error: String,
    },
    /// Not a failure: run again at `until` (waiting for a carrier recording); the attempt is
    /// given back.
    Wait {
        until: DateTime<Utc>,
    },
}

/// The one claim of both queues (jobs and webhook deliveries): the oldest row matching `due`
/// in `order`, updated with `claim`, returned as `row`. PostgreSQL: `SELECT … FOR UPDATE SKIP
/// LOCKED` and the update in one transaction. SQLite: optimistic — pick the oldest due id,
/// claim it with one UPDATE guarded by `due` again (atomic under SQLite's write lock), and pick
/// again if another worker won it (at most 8 tries).
macro_rules! claim_oldest {
    ($store:expr, $table:expr, $id:expr, $due:expr, $order:expr, $claim:expr, $row:ty) => {
        match &$store.inner.pools {
            Pools::Postgres(pool) => {
                let mut conn = $store.checkout(pool).await?;
                conn.transaction(async |conn| {
                    let id: Option<DbUuid> = $table
                        .filter($due)
                        .order($order)
                        .select($id)
                        .limit(1)
                        .for_update()
                        .skip_locked()
                        .first(conn)
                        .await
                        .optional()?;
                    let Some(id) = id else {
                        return Ok::<_, StoreError>(None);
                    };
                    let row = diesel::update($table.find(id))
                        .set($claim)
                        .returning(<$row>::as_returning())
                        .get_result(conn)
                        .await?;
                    Ok(Some(row))
                })
                .await?
            }
            Pools::Sqlite(pool) => {
                let mut conn = $store.checkout(pool).await?;
                let mut claimed = None;
                for _ in 0..8 {
                    let id: Option<DbUuid> = $table
                        .filter($due.clone())
                        .order($order)
                        .select($id)
                        .first(&mut *conn)
                        .await
                        .optional()?;
                    let Some(id) = id else { break };
                    #[allow(clippy::clone_on_copy)]
                    let update = diesel::update($table.find(id))
                        .filter($due.clone())
                        .set($claim.clone());
                    claimed = update
                        .returning(<$row>::as_returning())
                        .get_result(&mut *conn)
                        .await
                        .optional()?;
                    if claimed.is_some() {
                        break;
                    }
                }
                claimed
            }
        }
    };
}
pub(super) use claim_oldest;

impl Store {
    /// Claims the oldest due job of `kind` for `worker`, leased until `now + lease`.
    pub async fn claim_job(
        &self,
        kind: &str,
        worker: &str,
        lease: std::time::Duration,
    ) -> Result<Option<Job>, StoreError> {
        let now = Utc::now();
        let (stamp, expires) = (
            DbTime::from(now),
            DbTime::from(now + Duration::from_std(lease).unwrap_or(Duration::minutes(5))),
        );
        // A lapsed lease on the job's last attempt (its worker died, hung or lost the job to
        // a panic before reporting): the attempt counts, so the job is dead rather than run
        // again past `max_attempts`.
        let exhausted = jobs::kind
            .eq(kind.to_string())
            .and(jobs::status.eq(JOB_STATUS_RUNNING))
            .and(jobs::lease_expires_at.lt(Some(stamp)))
            .and(jobs::attempts.ge(jobs::max_attempts));
        let buried = with_conn!(self, conn => {
            diesel::update(jobs::table)
                .filter(exhausted)
                .set((
                    jobs::status.eq(JOB_STATUS_DEAD),
                    jobs::last_error.eq(Some(LEASE_LAPSED_ON_LAST_ATTEMPT)),
                    jobs::locked_by.eq(None::<String>),
                    jobs::lease_expires_at.eq(None::<DbTime>),
                    jobs::updated_at.eq(stamp),
                ))
                .execute(conn)
                .await?
        });
        if buried > 0 {
            tracing::warn!(
                kind,
                jobs = buried,
                "jobs dead: their last attempt's lease lapsed"
            );
        }
        let due = jobs::kind.eq(kind.to_string()).and(
            jobs::status
                .eq(JOB_STATUS_QUEUED)
                .and(jobs::run_at.le(stamp))
                .or(jobs::status
                    .eq(JOB_STATUS_RUNNING)
                    .and(jobs::lease_expires_at.lt(Some(stamp)))
                    // Never past the cap, even if the lease lapsed after the update above.
                    .and(jobs::attempts.lt(jobs::max_attempts))),
        );
        let claim = (
            jobs::status.eq(JOB_STATUS_RUNNING),
            jobs::locked_by.eq(Some(worker.to_string())),
            jobs::locked_at.eq(Some(stamp)),
            jobs::lease_expires_at.eq(Some(expires)),
            jobs::attempts.eq(jobs::attempts + 1),
            jobs::updated_at.eq(stamp),
        );
        let row: Option<JobRow> = claim_oldest!(
            self,
            jobs::table,
            jobs::id,
            due,
            jobs::run_at.asc(),
            claim,
            JobRow
        );
        Ok(row.map(Job::from))
    }

    /// Queues a job (once per `dedupe_key` when one is given). Returns whether it was new.
    pub async fn enqueue_job(
        &self,
        kind: &str,
        call_id: Option<Uuid>,
        payload: &Value,
        dedupe_key: Option<&str>,
        max_attempts: i32,
    ) -> Result<bool, StoreError> {
        let now = DbTime::from(Utc::now());
        let row = JobRow {
            id: DbUuid(Uuid::new_v4()),
            kind: kind.into(),
            call_id: call_id.map(DbUuid),
            dedupe_key: dedupe_key.map(str::to_string),
            payload: DbJson(payload.clone()),
            status: JOB_STATUS_QUEUED.into(),
            attempts: 0,
            max_attempts: max_attempts.max(1),
            run_at: now,
            locked_by: None,
            locked_at: None,
            lease_expires_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        };
        let n = with_conn!(self, conn => {
            diesel::insert_into(jobs::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?
        });
        Ok(n == 1)
    }

    /// Extends a running job's lease (the worker is alive). False: the job is no longer ours.
    pub async fn extend_lease(
        &self,
        job_id: Uuid,
        worker: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let expires =
            DbTime::from(Utc::now() + Duration::from_std(lease).unwrap_or(Duration::minutes(5)));
        let n = with_conn!(self, conn => {
            diesel::update(jobs::table.find(DbUuid(job_id)))
                .filter(jobs::status.eq(JOB_STATUS_RUNNING))
                .filter(jobs::locked_by.eq(worker))
                .set(jobs::lease_expires_at.eq(Some(expires)))
                .execute(conn)
                .await?
        });
        Ok(n == 1)
    }

    /// Records how a claimed job ended. A retry past `max_attempts` makes it `dead`. Only the
    /// worker holding the lease may finish it (a rescued job's old worker changes nothing).
    pub async fn finish_job(
        &self,
        job_id: Uuid,
        worker: &str,
        result: &JobResult,
    ) -> Result<String, StoreError> {
        // Guarded single-statement updates (no read-then-write transaction, which SQLite
        // could refuse under concurrent writers): only the lease holder's running job changes.
        let stamp = DbTime::from(Utc::now());
        let id = DbUuid(job_id);
        let owned = jobs::id
            .eq(id)
            .and(jobs::locked_by.eq(worker.to_string()))
            .and(jobs::status.eq(JOB_STATUS_RUNNING));
        let release = (
            jobs::locked_by.eq(None::<String>),
            jobs::lease_expires_at.eq(None::<DbTime>),
            jobs::updated_at.eq(stamp),
        );
        let (status, error, retry_at) = match result {
            JobResult::Wait { until } => return self.park_job(job_id, worker, *until).await,
            JobResult::Done => (JOB_STATUS_DONE, None, None),
            JobResult::Dead { error } => (JOB_STATUS_DEAD, Some(error.clone()), None),
            JobResult::Retry { error, at } => (JOB_STATUS_QUEUED, Some(error.clone()), Some(*at)),
        };
        let n = match retry_at {
            None => with_conn!(self, conn => {
                diesel::update(jobs::table)
                    .filter(owned.clone())
                    .set((jobs::status.eq(status), jobs::last_error.eq(error.clone()), release))
                    .execute(conn)
                    .await?
            }),
            Some(at) => {
                // Out of attempts: dead instead of queued.
                let dead = with_conn!(self, conn => {
                    diesel::update(jobs::table)
                        .filter(owned.clone())
                        .filter(jobs::attempts.ge(jobs::max_attempts))
                        .set((jobs::status.eq(JOB_STATUS_DEAD), jobs::last_error.eq(error.clone()), release.clone()))
                        .execute(conn)
                        .await?
                });
                if dead == 1 {
                    return Ok(JOB_STATUS_DEAD.into());
                }
                with_conn!(self, conn => {
                    diesel::update(jobs::table)
                        .filter(owned.clone())
                        .set((
                            jobs::status.eq(JOB_STATUS_QUEUED),
                            jobs::run_at.eq(DbTime::from(at)),
                            jobs::last_error.eq(error.clone()),
                            release,
                        ))
                        .execute(conn)
                        .await?
                })
            }
        };
        Ok(if n == 1 {
            status.into()
        } else {
            "not_owned".into()
        })
    }

    /// A claimed job that waits (for a recording) goes back to the queue until `until`, its
    /// attempt given back.
    async fn park_job(
        &self,
        job_id: Uuid,
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let stamp = DbTime::from(Utc::now());
        let owned = jobs::id
            .eq(DbUuid(job_id))
            .and(jobs::locked_by.eq(worker.to_string()))
            .and(jobs::status.eq(JOB_STATUS_RUNNING));
        // A recording that arrived while the job ran (its callback found no queued job to
        // wake) makes the job due at once instead.
        use super::schema::calls;
        let recording_arrived = diesel::dsl::exists(
            calls::table
                .filter(calls::id.nullable().eq(jobs::call_id))
                .filter(calls::recording_url.is_not_null()),
        );
        use diesel::IntoSql;
        let run_at = diesel::dsl::case_when(
            recording_arrived,
            stamp.into_sql::<super::sql_types::Timestamptz>(),
        )
        .otherwise(DbTime::from(until).into_sql::<super::sql_types::Timestamptz>());
        let n = with_conn!(self, conn => {
            diesel::update(jobs::table)
                .filter(owned.clone())
                .set((
                    jobs::status.eq(JOB_STATUS_QUEUED),
                    jobs::run_at.eq(run_at),
                    jobs::attempts.eq(jobs::attempts - 1),
                    jobs::last_error.eq(None::<String>),
                    jobs::locked_by.eq(None::<String>),
                    jobs::lease_expires_at.eq(None::<DbTime>),
                    jobs::updated_at.eq(stamp),
                ))
                .execute(conn)
                .await?
        });
        Ok(if n == 1 { "waiting" } else { "not_owned" }.into())
    }

    /// Records the post-call pipeline's end on the call: `processed` (with the time) or
    /// `failed`, or `waiting_recording` while it waits.
    pub async fn set_postcall_status(&self, call_id: Uuid, status: &str) -> Result<(), StoreError> {
        use super::schema::calls;
        let stamp = DbTime::from(Utc::now());
        let processed = (status == super::POSTCALL_PROCESSED).then_some(stamp);
        with_conn!(self, conn => {
            diesel::update(calls::table.find(DbUuid(call_id)))
                .set((
                    calls::postcall_status.eq(Some(status)),
                    calls::processed_at.eq(processed),
                    calls::updated_at.eq(stamp),
                ))
                .execute(conn)
                .await?
        });
        Ok(())
    }

    /// Jobs by status (for the API and tests).
    pub async fn jobs_with_status(&self, status: &str) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = with_conn!(self, conn => {
            jobs::table
                .filter(jobs::status.eq(status))
                .order(jobs::created_at.asc())
                .select(JobRow::as_select())
                .load(conn)
                .await?
        });
        Ok(rows.into_iter().map(Job::from).collect())
    }

    /// Checkpoints of the post-call pipeline on the call row: each `Some` field is written.
    pub async fn save_postcall(
        &self,
        call_id: Uuid,
        update: &PostcallUpdate,
    ) -> Result<(), StoreError> {
        use super::schema::calls;
        let stamp = DbTime::from(Utc::now());
        let id = DbUuid(call_id);
        with_conn!(self, conn => {
            conn.transaction(async |conn| {
                if let Some(text) = &update.offline_transcript {
                    diesel::update(calls::table.find(id))
                        .set(calls::offline_transcript.eq(Some(text)))
                        .execute(conn)
                        .await?;
                    let last: Option<i32> = super::schema::call_turns::table
                        .filter(super::schema::call_turns::call_id.eq(id))
                        .select(diesel::dsl::max(super::schema::call_turns::seq))
                        .first(conn)
                        .await?;
                    let first = last.unwrap_or(0) + 1;
                    for (seq, (start_ms, text)) in (first..).zip(update.offline_turns.iter()) {
                        let row = super::rows::TurnRow {
                            id: DbUuid(Uuid::new_v4()),
                            call_id: id,
                            seq,
                            speaker: "recording".into(),
                            speaker_label: None,
                            text: text.clone(),
                            is_final: true,
                            start_ms: Some(*start_ms),
                            end_ms: None,
                            confidence: None,
                            source: super::model::TurnSource::Offline.as_str().into(),
                            created_at: stamp,
                            turn_key: None,
                        };
                        diesel::insert_into(super::schema::call_turns::table)
                            .values(&row)
                            .execute(conn)
                            .await?;
                    }
                }
                if let Some(summary) = &update.summary {
                    diesel::update(calls::table.find(id))
                        .set(calls::summary.eq(Some(summary)))
                        .execute(conn)
                        .await?;
                }
                if let Some(fields) = &update.extracted_fields {
                    diesel::update(calls::table.find(id))
                        .set(calls::extracted_fields.eq(Some(DbJson(fields.clone()))))
                        .execute(conn)
                        .await?;
                }
                if let Some(error) = &update.postcall_error {
                    diesel::update(calls::table.find(id))
                        .set(calls::postcall_error.eq(Some(error)))
                        .execute(conn)
                        .await?;
                }
                diesel::update(calls::table.find(id))
                    .set(calls::updated_at.eq(stamp))
                    .execute(conn)
                    .await?;
                Ok::<(), StoreError>(())
            })
            .await?
        });
        Ok(())
    }
}
