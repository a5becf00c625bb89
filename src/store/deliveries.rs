//! The webhook outbox: deliveries queued once per event id, claimed like jobs (the same
//! [`claim_oldest!`](super::jobs) on both backends), each attempt recorded with its next time.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::jobs::claim_oldest;
use super::schema::webhook_deliveries;
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::{with_conn, Pools, Store, StoreError};

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

impl Store {
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
        let row: Option<DeliveryRow> = claim_oldest!(
            self,
            webhook_deliveries::table,
            webhook_deliveries::id,
            due,
            webhook_deliveries::next_attempt_at.asc(),
            claim,
            DeliveryRow
        );
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
