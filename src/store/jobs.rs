//! The durable job queue and the webhook outbox.
//!
//! Claiming: on PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED` inside a transaction, so workers on
//! several machines take different jobs without waiting on each other; on SQLite one
//! `UPDATE … WHERE id IN (SELECT … LIMIT 1) RETURNING *` statement, which SQLite runs under its
//! single write lock. A claim sets a lease and counts an attempt; a job whose lease expired (its
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
use super::schema::{jobs, webhook_deliveries};
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::{with_conn, Pools, Store, StoreError};

/// Status of a claimed job.
pub const JOB_STATUS_RUNNING: &str = "running";

/// `last_error` of a job made dead because its last attempt's lease lapsed without a result.
pub const LEASE_LAPSED_ON_LAST_ATTEMPT: &str =
    "the lease of the last attempt lapsed without a result (the worker died, hung or panicked)";

/// A webhook to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    /// Stable across retries (`webhook-id`).
    pub event_id: String,
    pub call_id: Option<Uuid>,
    pub event_type: String,
    pub payload: Value,
    pub url: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub status: String,
    pub last_response_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Delivery statuses.
pub const DELIVERY_PENDING: &str = "pending";
pub const DELIVERY_SENDING: &str = "sending";
pub const DELIVERY_DELIVERED: &str = "delivered";
pub const DELIVERY_DEAD: &str = "dead";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_deliveries)]
struct DeliveryRow {
    id: DbUuid,
    event_id: String,
    call_id: Option<DbUuid>,
    event_type: String,
    payload: DbJson,
    url: String,
    attempts: i32,
    next_attempt_at: DbTime,
    status: String,
    last_response_status: Option<i32>,
    last_response_body: Option<String>,
    last_error: Option<String>,
    delivered_at: Option<DbTime>,
    created_at: DbTime,
    updated_at: DbTime,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Delivery {
            id: r.id.0,
            event_id: r.event_id,
            call_id: r.call_id.map(|c| c.0),
            event_type: r.event_type,
            payload: r.payload.0,
            url: r.url,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at.0,
            status: r.status,
            last_response_status: r.last_response_status,
            last_error: r.last_error,
            delivered_at: r.delivered_at.map(|t| t.0),
        }
    }
}

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
        let row: Option<JobRow> = match &self.inner.pools {
            Pools::Postgres(pool) => {
                let mut conn = self.checkout(pool).await?;
                conn.transaction(async |conn| {
                    let id: Option<DbUuid> = jobs::table
                        .filter(due)
                        .order(jobs::run_at.asc())
                        .select(jobs::id)
                        .limit(1)
                        .for_update()
                        .skip_locked()
                        .first(conn)
                        .await
                        .optional()?;
                    let Some(id) = id else {
                        return Ok::<_, StoreError>(None);
                    };
                    let row = diesel::update(jobs::table.find(id))
                        .set(claim)
                        .returning(JobRow::as_returning())
                        .get_result(conn)
                        .await?;
                    Ok(Some(row))
                })
                .await?
            }
            Pools::Sqlite(pool) => {
                // Optimistic: pick the oldest due id, then claim it with one guarded UPDATE
                // (atomic under SQLite's write lock); if another worker won, pick again.
                let mut conn = self.checkout(pool).await?;
                let mut claimed = None;
                for _ in 0..8 {
                    let id: Option<DbUuid> = jobs::table
                        .filter(due.clone())
                        .order(jobs::run_at.asc())
                        .select(jobs::id)
                        .first(&mut *conn)
                        .await
                        .optional()?;
                    let Some(id) = id else { break };
                    claimed = diesel::update(jobs::table.find(id))
                        .filter(due.clone())
                        .set(claim.clone())
                        .returning(JobRow::as_returning())
                        .get_result(&mut *conn)
                        .await
                        .optional()?;
                    if claimed.is_some() {
                        break;
                    }
                }
                claimed
            }
        };
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

    /// Whether a webhook with this event id was ever queued.
    pub async fn delivery_exists(&self, event_id: &str) -> Result<bool, StoreError> {
        let n: i64 = with_conn!(self, conn => {
            webhook_deliveries::table
                .filter(webhook_deliveries::event_id.eq(event_id))
                .count()
                .get_result(conn)
                .await?
        });
        Ok(n > 0)
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

    /// Queues a webhook once per `event_id` (a second enqueue changes nothing). Returns whether
    /// it was new.
    pub async fn enqueue_delivery(
        &self,
        event_id: &str,
        call_id: Option<Uuid>,
        event_type: &str,
        payload: &Value,
        url: &str,
    ) -> Result<bool, StoreError> {
        let now = DbTime::from(Utc::now());
        let row = DeliveryRow {
            id: DbUuid(Uuid::new_v4()),
            event_id: event_id.into(),
            call_id: call_id.map(DbUuid),
            event_type: event_type.into(),
            payload: DbJson(payload.clone()),
            url: url.into(),
            attempts: 0,
            next_attempt_at: now,
            status: DELIVERY_PENDING.into(),
            last_response_status: None,
            last_response_body: None,
            last_error: None,
            delivered_at: None,
            created_at: now,
            updated_at: now,
        };
        let n = with_conn!(self, conn => {
            diesel::insert_into(webhook_deliveries::table)
                .values(&row)
                .on_conflict(webhook_deliveries::event_id)
                .do_nothing()
                .execute(conn)
                .await?
        });
        Ok(n == 1)
    }

    /// Claims the oldest due delivery; it is `sending` until `now + lease` (a crashed sender's
    /// delivery is due again after that).
    pub async fn claim_delivery(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Delivery>, StoreError> {
        let now = Utc::now();
        let stamp = DbTime::from(now);
        let until = DbTime::from(now + Duration::from_std(lease).unwrap_or(Duration::minutes(1)));
        let due = webhook_deliveries::status
            .eq_any([DELIVERY_PENDING, DELIVERY_SENDING])
            .and(webhook_deliveries::next_attempt_at.le(stamp));
        let claim = (
            webhook_deliveries::status.eq(DELIVERY_SENDING),
            webhook_deliveries::next_attempt_at.eq(until),
            webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
            webhook_deliveries::updated_at.eq(stamp),
        );
        let row: Option<DeliveryRow> = match &self.inner.pools {
            Pools::Postgres(pool) => {
                let mut conn = self.checkout(pool).await?;
                conn.transaction(async |conn| {
                    let id: Option<DbUuid> = webhook_deliveries::table
                        .filter(due)
                        .order(webhook_deliveries::next_attempt_at.asc())
                        .select(webhook_deliveries::id)
                        .limit(1)
                        .for_update()
                        .skip_locked()
                        .first(conn)
                        .await
                        .optional()?;
                    let Some(id) = id else {
                        return Ok::<_, StoreError>(None);
                    };
                    let row = diesel::update(webhook_deliveries::table.find(id))
                        .set(claim)
                        .returning(DeliveryRow::as_returning())
                        .get_result(conn)
                        .await?;
                    Ok(Some(row))
                })
                .await?
            }
            Pools::Sqlite(pool) => {
                let mut conn = self.checkout(pool).await?;
                let mut claimed = None;
                for _ in 0..8 {
                    let id: Option<DbUuid> = webhook_deliveries::table
                        .filter(due.clone())
                        .order(webhook_deliveries::next_attempt_at.asc())
                        .select(webhook_deliveries::id)
                        .first(&mut *conn)
                        .await
                        .optional()?;
                    let Some(id) = id else { break };
                    claimed = diesel::update(webhook_deliveries::table.find(id))
                        .filter(due.clone())
                        .set(claim)
                        .returning(DeliveryRow::as_returning())
                        .get_result(&mut *conn)
                        .await
                        .optional()?;
                    if claimed.is_some() {
                        break;
                    }
                }
                claimed
            }
        };
        Ok(row.map(Delivery::from))
    }

    /// Records one delivery attempt: delivered, retry at `retry_at`, or dead (`retry_at` None).
    pub async fn record_delivery_attempt(
        &self,
        id: Uuid,
        delivered: bool,
        response_status: Option<i32>,
        response_body: Option<String>,
        error: Option<String>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let stamp = DbTime::from(now);
        let (status, next) = match (delivered, retry_at) {
            (true, _) => (DELIVERY_DELIVERED, stamp),
            (false, Some(at)) => (DELIVERY_PENDING, DbTime::from(at)),
            (false, None) => (DELIVERY_DEAD, stamp),
        };
        let body = response_body.map(|b| b.chars().take(1_000).collect::<String>());
        with_conn!(self, conn => {
            diesel::update(webhook_deliveries::table.find(DbUuid(id)))
                .set((
                    webhook_deliveries::status.eq(status),
                    webhook_deliveries::next_attempt_at.eq(next),
                    webhook_deliveries::last_response_status.eq(response_status),
                    webhook_deliveries::last_response_body.eq(body),
                    webhook_deliveries::last_error.eq(error),
                    webhook_deliveries::delivered_at.eq(delivered.then_some(stamp)),
                    webhook_deliveries::updated_at.eq(stamp),
                ))
                .execute(conn)
                .await?
        });
        Ok(())
    }

    /// Sends a dead (or any undelivered) delivery again, now, with a fresh attempt budget.
    pub async fn resend_delivery(&self, id: Uuid) -> Result<bool, StoreError> {
        let stamp = DbTime::from(Utc::now());
        let n = with_conn!(self, conn => {
            diesel::update(webhook_deliveries::table.find(DbUuid(id)))
                .filter(webhook_deliveries::status.ne(DELIVERY_DELIVERED))
                .set((
                    webhook_deliveries::status.eq(DELIVERY_PENDING),
                    webhook_deliveries::attempts.eq(0),
                    webhook_deliveries::next_attempt_at.eq(stamp),
                    webhook_deliveries::updated_at.eq(stamp),
                ))
                .execute(conn)
                .await?
        });
        Ok(n == 1)
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

    /// A call's deliveries.
    pub async fn deliveries_for_call(&self, call_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = with_conn!(self, conn => {
            webhook_deliveries::table
                .filter(webhook_deliveries::call_id.eq(Some(DbUuid(call_id))))
                .order(webhook_deliveries::created_at.asc())
                .select(DeliveryRow::as_select())
                .load(conn)
                .await?
        });
        Ok(rows.into_iter().map(Delivery::from).collect())
    }
}
