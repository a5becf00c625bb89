//! Tenants: webhook target, billing rate and STT choice per customer.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::model::{NewTenant, Tenant};
use super::rows::TenantRow;
use super::schema::tenants;
use super::sql_types::{DbTime, DbUuid};
use super::{with_conn, Store, StoreError};

impl Store {
    /// Creates a tenant. Names are unique.
    pub async fn insert_tenant(&self, new: &NewTenant) -> Result<Tenant, StoreError> {
        if new.name.trim().is_empty() {
            return Err(StoreError::InvalidInput(
                "tenant name must not be empty".into(),
            ));
        }
        if new.cost_per_second_micros < 0 {
            return Err(StoreError::InvalidInput(
                "tenant cost per second must not be negative".into(),
            ));
        }
        let now = DbTime::from(Utc::now());
        let row = TenantRow {
            id: DbUuid(new.id.unwrap_or_else(Uuid::new_v4)),
            name: new.name.clone(),
            webhook_url: new.webhook_url.clone(),
            webhook_secret: new.webhook_secret.clone(),
            cost_per_second_micros: new.cost_per_second_micros,
            stt_provider: new.stt_provider.clone(),
            created_at: now,
            updated_at: now,
        };
        with_conn!(self, conn => {
            diesel::insert_into(tenants::table).values(&row).execute(conn).await?
        });
        Ok(row.into())
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table.find(DbUuid(id)).select(TenantRow::as_select()).first(conn).await.optional()?
        });
        Ok(row.map(Tenant::from))
    }
}
