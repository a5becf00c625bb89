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
            webhook_secret: new.webhook_secret.as_ref().map(|s| s.expose().to_owned()),
            cost_per_second_micros: new.cost_per_second_micros,
            stt_provider: new.stt_provider.clone(),
            created_at: now,
            updated_at: now,
            stt_api_key: new.stt_api_key.as_ref().map(|s| s.expose().to_owned()),
            media_token: new.media_token.as_ref().map(|s| s.expose().to_owned()),
            media_open: new.media_open,
            twilio_auth_token: new
                .twilio_auth_token
                .as_ref()
                .map(|s| s.expose().to_owned()),
            max_concurrent_calls: new.max_concurrent_calls,
            inbound_token: new.inbound_token.as_ref().map(|s| s.expose().to_owned()),
            elevenlabs_webhook_secret: new
                .elevenlabs_webhook_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            postcall_config: new.postcall_config.clone().map(super::sql_types::DbJson),
            api_token_sha256: new.api_token.as_ref().map(|t| token_hash(t.expose())),
        };
        with_conn!(self, conn => {
            diesel::insert_into(tenants::table).values(&row).execute(conn).await?
        });
        Ok(row.into())
    }

    /// The tenant whose API token this is.
    pub async fn tenant_by_api_token(&self, token: &str) -> Result<Option<Tenant>, StoreError> {
        let hash = token_hash(token);
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table
                .filter(tenants::api_token_sha256.eq(&hash))
                .select(TenantRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        Ok(row.map(Tenant::from))
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table.find(DbUuid(id)).select(TenantRow::as_select()).first(conn).await.optional()?
        });
        Ok(row.map(Tenant::from))
    }
}

/// SHA-256 hex of an API token: what the database keeps.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
