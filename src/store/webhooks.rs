//! Store operations behind the inbound webhooks: dialogue turns posted by a voice platform
//! (ElevenLabs), recording callbacks, and the tenant lookups they need.

mod build;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::calls::{new_call_row, LIVE_STATUSES};
use super::model::{
    AppendOutcome, CallStatus, Direction, NewCall, Protocol, Turn, TurnSource, JOB_KIND_POSTCALL,
    JOB_STATUS_DEAD, JOB_STATUS_DONE, JOB_STATUS_QUEUED,
};
use super::rows::{convert_all, CallRow, JobRow, TurnRow};
use super::schema::{call_turns, calls, jobs, tenant_phone_numbers};
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::turns::{insert_numbered, materialise_transcript, refresh_transcript};
use super::{with_conn, Store, StoreError};
use build::{announces_recording, conversation_call, recording_job, webhook_turn_row};

/// One dialogue turn a platform posted.
#[derive(Debug, Clone)]
pub struct WebhookTurn {
    pub tenant_id: Uuid,
    /// The platform's conversation id: the call's external id.
    pub conversation_id: String,
    pub protocol: Protocol,
    /// Role: `agent` or `contact`.
    pub speaker: String,
    /// The platform's own label (`agent`, `user`).
    pub speaker_label: String,
    pub text: String,
    /// When the turn was spoken (UTC).
    pub at: DateTime<Utc>,
}

/// Where a posted turn landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWebhookTurn {
    pub turn_id: Uuid,
    pub call_id: Uuid,
    pub seq: i32,
    /// False: the same turn was posted before; this is the original.
    pub created: bool,
    /// The call was created by this turn.
    pub call_created: bool,
    /// The call has a contact (lead) id.
    pub has_contact: bool,
}

/// A recording callback.
#[derive(Debug, Clone)]
pub struct RecordingUpdate {
    /// The call's external id (Twilio CallSid, Vonage conversation UUID).
    pub external_id: String,
    pub protocol: Protocol,
    pub recording_id: String,
    pub recording_url: Option<String>,
    /// `completed`, `in-progress`, `absent`, `failed`…
    pub status: String,
    pub duration_secs: Option<i64>,
    /// The tenant the callback proved itself for: only its calls are matched, and a call this
    /// node never saw is created for it.
    pub tenant_id: Uuid,
    pub phone_number: Option<String>,
}

/// What a recording callback changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingOutcome {
    pub call_id: Uuid,
    pub call_created: bool,
    /// The post-call job was queued (or re-queued) by this callback.
    pub job_enqueued: bool,
}

/// A posted turn's idempotency key: the platform's retry of the same post (same speaker
/// label, time and words) finds the stored turn; a different post is a new turn.
fn webhook_turn_key(turn: &WebhookTurn) -> String {
    let identity = format!(
        "{}\u{0}{}\u{0}{}",
        turn.speaker_label,
        turn.at.timestamp_micros(),
        turn.text
    );
    format!("webhook:{}", crate::crypto::token_hash(&identity))
}

/// `node_id` of calls created by webhooks.
pub const WEBHOOK_NODE: &str = "webhooks";

/// Races between concurrent posts (a unique violation, a busy SQLite database): worth another
/// try at once. An unreachable database is not retried here; the caller decides.
fn is_retryable(err: &StoreError) -> bool {
    let busy = err.is_transient()
        && !matches!(
            err,
            StoreError::Unavailable { .. }
                | StoreError::Database(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UnableToSendCommand,
                    _
                ))
        );
    busy || matches!(
        err,
        StoreError::Database(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

impl Store {
    /// The tenant that owns an E.164 number.
    pub async fn tenant_by_phone_number(&self, e164: &str) -> Result<Option<Uuid>, StoreError> {
        let id: Option<DbUuid> = with_conn!(self, conn => {
            tenant_phone_numbers::table
                .find(e164)
                .select(tenant_phone_numbers::tenant_id)
                .first(conn)
                .await
                .optional()?
        });
        Ok(id.map(|id| id.0))
    }

    /// Gives a number to a tenant (replacing an earlier owner).
    pub async fn add_tenant_phone_number(
        &self,
        tenant_id: Uuid,
        e164: &str,
    ) -> Result<(), StoreError> {
        let now = DbTime::from(Utc::now());
        with_conn!(self, conn => {
            diesel::insert_into(tenant_phone_numbers::table)
                .values((
                    tenant_phone_numbers::e164.eq(e164),
                    tenant_phone_numbers::tenant_id.eq(DbUuid(tenant_id)),
                    tenant_phone_numbers::created_at.eq(now),
                ))
                .on_conflict(tenant_phone_numbers::e164)
                .do_update()
                .set(tenant_phone_numbers::tenant_id.eq(DbUuid(tenant_id)))
                .execute(conn)
                .await?
        });
        Ok(())
    }

    /// Stores one posted dialogue turn: finds the conversation's live call (a call registered
    /// beforehand with this external id is linked) or creates it, then appends the turn with
    /// the next sequence number. The call row is locked first, so concurrent posts for one
    /// conversation get 1, 2, 3… without gaps; a unique-violation race is retried. A turn
    /// already stored (same speaker, text and time) is returned as it was.
    pub async fn append_webhook_turn(
        &self,
        turn: &WebhookTurn,
    ) -> Result<StoredWebhookTurn, StoreError> {
        if turn.conversation_id.is_empty() || turn.conversation_id.len() > 256 {
            return Err(StoreError::InvalidInput(
                "conversation_id must be 1 to 256 characters".into(),
            ));
        }
        let mut last = None;
        for attempt in 0..60u32 {
            match self.try_append_webhook_turn(turn).await {
                Err(err) if is_retryable(&err) => {
                    last = Some(err);
                    let wait = 2 + fastrand::u64(..(5 * u64::from(attempt.min(20)) + 5));
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| StoreError::InvalidInput("no attempt made".into())))
    }

    /// One transaction: find (or link, or create) the conversation's call, then store the turn
    /// with the call's next number. It starts with a write to the live call, which takes
    /// SQLite's write lock and PostgreSQL's row lock up front; two posts racing to create the
    /// same call meet the live-call unique index, and the loser is retried.
    // Longer than most: one transaction written once for both backends inside `with_conn!`
    // (expanded per connection type); the rows it writes are built by the pure helpers below.
    async fn try_append_webhook_turn(
        &self,
        turn: &WebhookTurn,
    ) -> Result<StoredWebhookTurn, StoreError> {
        let now = DbTime::from(Utc::now());
        let tenant = DbUuid(turn.tenant_id);
        let conversation = turn.conversation_id.as_str();
        // Not this node's media: a restart's sweep of this node's live calls must not end a
        // conversation the platform is still posting (the stale-call sweep still applies).
        let fresh = new_call_row(&conversation_call(turn), WEBHOOK_NODE);
        let fresh = &fresh;
        let key = webhook_turn_key(turn);
        let key = key.as_str();
        let at = DbTime::from(turn.at);
        with_conn!(self, conn => {
            conn.transaction(async |conn| {
                let touched = diesel::update(calls::table)
                    .filter(calls::tenant_id.eq(tenant))
                    .filter(calls::external_id.eq(conversation))
                    .filter(calls::status.eq_any(LIVE_STATUSES))
                    .set(calls::updated_at.eq(now))
                    .execute(conn)
                    .await?;
                let (call, call_created) = if touched > 0 {
                    let live: CallRow = calls::table
                        .filter(calls::tenant_id.eq(tenant))
                        .filter(calls::external_id.eq(conversation))
                        .filter(calls::status.eq_any(LIVE_STATUSES))
                        .order(calls::started_at.asc())
                        .select(CallRow::as_select())
                        .first(conn)
                        .await?;
                    // A registered call starts with its first turn.
                    let (started, status) = match live.status == CallStatus::Registered.as_str() {
                        true => (at, CallStatus::Active.as_str()),
                        false => (live.started_at, live.status.as_str()),
                    };
                    let last_activity = at.max(live.last_activity_at).max(started);
                    diesel::update(calls::table.find(live.id))
                        .set((
                            calls::status.eq(status),
                            calls::started_at.eq(started),
                            calls::last_activity_at.eq(last_activity),
                        ))
                        .execute(conn)
                        .await?;
                    (CallRow { started_at: started, ..live }, false)
                } else {
                    // A conversation whose call has ended takes no more turns (no second call).
                    // Only ended rows count: under READ COMMITTED a concurrent post's new live
                    // call can be visible here; then the insert below meets the live-call unique
                    // index and the post is retried, finding that call.
                    let ended: Option<(DbUuid, String)> = calls::table
                        .filter(calls::tenant_id.eq(tenant))
                        .filter(calls::external_id.eq(conversation))
                        .filter(calls::protocol.eq(turn.protocol.as_str()))
                        .filter(calls::status.ne_all(LIVE_STATUSES))
                        .select((calls::id, calls::status))
                        .first(conn)
                        .await
                        .optional()?;
                    if let Some((id, status)) = ended {
                        return Err(StoreError::CallNotActive { call_id: id.0, status: status.parse()? });
                    }
                    diesel::insert_into(calls::table).values(fresh).execute(conn).await?;
                    (fresh.clone(), true)
                };
                let row = webhook_turn_row(turn, &call, key, now);
                let outcome = insert_numbered!(conn, call.id, std::slice::from_ref(&row))[0];
                let created = matches!(outcome, AppendOutcome::Inserted { .. });
                if created {
                    refresh_transcript!(conn, call.id, now);
                }
                let turn_id: DbUuid = call_turns::table
                    .filter(call_turns::call_id.eq(call.id))
                    .filter(call_turns::seq.eq(outcome.seq()))
                    .select(call_turns::id)
                    .first(conn)
                    .await?;
                Ok(StoredWebhookTurn {
                    turn_id: turn_id.0,
                    call_id: call.id.0,
                    seq: outcome.seq(),
                    created,
                    call_created,
                    has_contact: call.lead_id.is_some(),
                })
            })
            .await
        })
    }

    /// The call a recording callback is about: the tenant's newest call with that external id,
    /// or a new one, already ended, known only from its recording. `true`: created here.
    async fn recorded_call(
        &self,
        update: &RecordingUpdate,
        now: DateTime<Utc>,
    ) -> Result<(Uuid, bool), StoreError> {
        let existing: Option<CallRow> = with_conn!(self, conn => {
            calls::table
                .filter(calls::tenant_id.eq(DbUuid(update.tenant_id)))
                .filter(calls::external_id.eq(&update.external_id))
                .order(calls::started_at.desc())
                .select(CallRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        Ok(match existing {
            Some(row) => (row.id.0, false),
            None => {
                let tenant_id = update.tenant_id;
                let seconds = update.duration_secs.unwrap_or(0).max(0);
                let started = now - chrono::Duration::seconds(seconds);
                let new = NewCall {
                    id: None,
                    tenant_id,
                    campaign_id: None,
                    lead_id: None,
                    phone_number: update.phone_number.clone(),
                    external_id: Some(update.external_id.clone()),
                    protocol: update.protocol,
                    direction: Direction::Inbound,
                    started_at: started,
                    media_metadata: None,
                };
                // Known only from its recording: the call is over.
                let ended = DbTime::from(now);
                let row = CallRow {
                    status: CallStatus::Completed.as_str().into(),
                    ended_at: Some(ended),
                    last_activity_at: ended,
                    duration_seconds: Some(seconds),
                    end_reason: Some("recording_callback".into()),
                    ..new_call_row(&new, &self.options().node_id)
                };
                with_conn!(self, conn => {
                    diesel::insert_into(calls::table).values(&row).execute(conn).await?
                });
                (row.id.0, true)
            }
        })
    }

    /// Saves a recording callback on its call (creating the call, ended, when this node never
    /// saw it and the tenant is known) and, on `completed` for an ended call, queues the
    /// post-call job — or re-queues a finished one — once per recording: a repeated callback
    /// changes nothing. Longer than most: its transaction is written once for both backends
    /// inside `with_conn!` (expanded per connection type), so it stays in one piece.
    pub async fn record_recording(
        &self,
        update: &RecordingUpdate,
    ) -> Result<RecordingOutcome, StoreError> {
        let now = Utc::now();
        let (call_id, call_created) = self.recorded_call(update, now).await?;
        let max_attempts = self.options().postcall_max_attempts;
        let id = DbUuid(call_id);
        let stamp = DbTime::from(now);
        let job_enqueued = with_conn!(self, conn => {
            conn.transaction(async |conn| {
                let before: CallRow = calls::table.find(id).select(CallRow::as_select()).first(conn).await?;
                let new_recording = before.recording_id.as_deref() != Some(update.recording_id.as_str());
                diesel::update(calls::table.find(id))
                    .set((
                        calls::recording_id.eq(Some(&update.recording_id)),
                        calls::recording_status.eq(Some(&update.status)),
                        calls::updated_at.eq(stamp),
                    ))
                    .execute(conn)
                    .await?;
                if let Some(url) = &update.recording_url {
                    diesel::update(calls::table.find(id))
                        .set(calls::recording_url.eq(Some(url)))
                        .execute(conn)
                        .await?;
                }
                let ended = !LIVE_STATUSES.contains(&before.status.as_str());
                if update.status != "completed" {
                    // The carrier announced a recording still being made: the post-call job
                    // (and its webhook) waits for it.
                    if announces_recording(&update.status) {
                        diesel::update(calls::table.find(id))
                            .set(calls::recording_expected.eq(true))
                            .execute(conn)
                            .await?;
                    }
                    return Ok::<bool, StoreError>(false);
                }
                if !ended {
                    return Ok(false);
                }
                let key = format!("{JOB_KIND_POSTCALL}:{call_id}");
                let job = recording_job(call_id, &update.recording_id, &key, max_attempts, stamp);
                let inserted = diesel::insert_into(jobs::table)
                    .values(&job)
                    .on_conflict(jobs::dedupe_key)
                    .do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1 {
                    return Ok(true);
                }
                // A job waiting for this recording runs now.
                let woken = diesel::update(jobs::table)
                    .filter(jobs::dedupe_key.eq(&key))
                    .filter(jobs::status.eq(JOB_STATUS_QUEUED))
                    .filter(jobs::run_at.gt(stamp))
                    .set((jobs::run_at.eq(stamp), jobs::updated_at.eq(stamp)))
                    .execute(conn)
                    .await?;
                if woken == 1 || !new_recording {
                    return Ok(woken == 1);
                }
                // A finished job runs again for the recording it did not have.
                let requeued = diesel::update(jobs::table)
                    .filter(jobs::dedupe_key.eq(&key))
                    .filter(jobs::status.eq_any([JOB_STATUS_DONE, JOB_STATUS_DEAD]))
                    .set((
                        jobs::status.eq(JOB_STATUS_QUEUED),
                        jobs::attempts.eq(0),
                        jobs::run_at.eq(stamp),
                        jobs::last_error.eq(None::<String>),
                        jobs::updated_at.eq(stamp),
                    ))
                    .execute(conn)
                    .await?;
                Ok(requeued == 1)
            })
            .await?
        });
        Ok(RecordingOutcome {
            call_id,
            call_created,
            job_enqueued,
        })
    }

    /// Marks a call whose media never reached this node (a platform transcribed it) as ended at
    /// `ended_at`, with the usual completion transaction.
    pub async fn complete_external_call(
        &self,
        call_id: Uuid,
        ended_at: DateTime<Utc>,
        end_reason: &str,
    ) -> Result<super::model::CompletionOutcome, StoreError> {
        self.complete_call(
            call_id,
            &super::model::CallCompletion {
                status: CallStatus::Completed,
                ended_at,
                end_reason: end_reason.into(),
                pending_partial: None,
                dtmf: None,
                recording_url: None,
            },
        )
        .await
    }
}
