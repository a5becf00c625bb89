//! Reading calls: by id, by external id (within a tenant, or across tenants for the admin), with
//! their turns or their jobs.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::model::*;
use super::rows::{CallRow, JobRow};
use super::schema::{calls, jobs};
use super::sql_types::DbUuid;
use super::{with_conn, Store, StoreError};

impl Store {
    /// One call row.
    pub async fn get_call(&self, call_id: Uuid) -> Result<Option<Call>, StoreError> {
        let row: Option<CallRow> = with_conn!(self, conn => {
            calls::table.find(DbUuid(call_id)).select(CallRow::as_select()).first(conn).await.optional()?
        });
        row.map(Call::try_from).transpose()
    }

    /// Calls a transport knows by `external_id` (any protocol, any status), oldest first.
    pub async fn tenant_calls_by_external_id(
        &self,
        tenant_id: Uuid,
        external_id: &str,
    ) -> Result<Vec<Call>, StoreError> {
        let rows: Vec<CallRow> = with_conn!(self, conn => {
            calls::table
                .filter(calls::tenant_id.eq(DbUuid(tenant_id)))
                .filter(calls::external_id.eq(external_id))
                .order(calls::started_at.asc())
                .select(CallRow::as_select())
                .load(conn)
                .await?
        });
        rows.into_iter().map(Call::try_from).collect()
    }

    /// How many calls a tenant has (any status).
    pub async fn count_tenant_calls(&self, tenant_id: Uuid) -> Result<i64, StoreError> {
        let n: i64 = with_conn!(self, conn => {
            calls::table
                .filter(calls::tenant_id.eq(DbUuid(tenant_id)))
                .count()
                .get_result(conn)
                .await?
        });
        Ok(n)
    }

    /// Every tenant's calls with this external id, oldest first: for the operator (admin)
    /// only. Anything acting for a tenant uses [`Store::tenant_calls_by_external_id`].
    pub async fn calls_by_external_id(&self, external_id: &str) -> Result<Vec<Call>, StoreError> {
        let rows: Vec<CallRow> = with_conn!(self, conn => {
            calls::table
                .filter(calls::external_id.eq(external_id))
                .order(calls::started_at.asc())
                .select(CallRow::as_select())
                .load(conn)
                .await?
        });
        rows.into_iter().map(Call::try_from).collect()
    }

    /// A call with its turns, or `None` when there is no such call.
    pub async fn get_call_with_turns(
        &self,
        call_id: Uuid,
    ) -> Result<Option<CallWithTurns>, StoreError> {
        let Some(call) = self.get_call(call_id).await? else {
            return Ok(None);
        };
        let turns = self.list_turns(call_id).await?;
        Ok(Some(CallWithTurns { call, turns }))
    }

    /// The jobs queued for a call, oldest first.
    pub async fn list_jobs_for_call(&self, call_id: Uuid) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = with_conn!(self, conn => {
            jobs::table
                .filter(jobs::call_id.eq(Some(DbUuid(call_id))))
                .order(jobs::created_at.asc())
                .select(JobRow::as_select())
                .load(conn)
                .await?
        });
        Ok(rows.into_iter().map(Job::from).collect())
    }
}
