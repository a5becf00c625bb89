//! Tenants: webhook target, billing rate, STT choice and the secrets each way in checks.
//!
//! At rest, secrets the engine must use again are sealed with the node key
//! ([`crate::crypto::NodeKey`]), including credentials inside `postcall_config` (any `password`,
//! `api_key`, `secret` or `token` field); tokens that are only compared (media, inbound webhook,
//! API) are kept as their SHA-256. [`Store::secure_tenant_secrets`] converts rows written before
//! that (plain text) at start-up.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use uuid::Uuid;

use super::model::{NewTenant, Secret, Tenant};
use super::rows::TenantRow;
use super::schema::tenants;
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::{with_conn, Store, StoreError};
use crate::crypto::{is_hashed, is_sealed, stored_token_hash, validate_token, NodeKey};

/// Names of `postcall_config` fields that hold credentials and are sealed at rest.
const SECRET_FIELDS: [&str; 4] = ["password", "api_key", "secret", "token"];

impl Store {
    fn node_key(&self) -> Result<&NodeKey, StoreError> {
        self.options().node_key.as_ref().ok_or_else(|| {
            StoreError::InvalidInput("no node key configured (security.node_key)".into())
        })
    }

    fn seal(&self, secret: Option<&Secret>) -> Result<Option<String>, StoreError> {
        secret
            .map(|s| {
                self.node_key()?
                    .seal(s.expose())
                    .map_err(|e| StoreError::InvalidInput(e.to_string()))
            })
            .transpose()
    }

    fn open(&self, stored: Option<String>) -> Result<Option<Secret>, StoreError> {
        stored
            .map(|s| {
                self.node_key()?
                    .open(&s)
                    .map(Secret::new)
                    .map_err(|e| StoreError::Corrupt(format!("tenant secret: {e}")))
            })
            .transpose()
    }

    /// A row as the engine uses it: secrets opened.
    pub(super) fn tenant_from_row(&self, row: TenantRow) -> Result<Tenant, StoreError> {
        let key = self.options().node_key.as_ref();
        let postcall_config = match (row.postcall_config, key) {
            (Some(DbJson(config)), Some(key)) => Some(open_config(config, key)?),
            (config, _) => config.map(|c| c.0),
        };
        Ok(Tenant {
            id: row.id.0,
            name: row.name,
            webhook_url: row.webhook_url,
            webhook_secret: self.open(row.webhook_secret)?,
            cost_per_second_micros: row.cost_per_second_micros,
            stt_provider: row.stt_provider,
            stt_api_key: self.open(row.stt_api_key)?,
            media_token_sha256: row.media_token,
            media_open: row.media_open,
            twilio_auth_token: self.open(row.twilio_auth_token)?,
            max_concurrent_calls: row.max_concurrent_calls,
            has_inbound_token: row.inbound_token.is_some(),
            elevenlabs_webhook_secret: self.open(row.elevenlabs_webhook_secret)?,
            vonage_signature_secret: self.open(row.vonage_signature_secret)?,
            webhooks_unsigned: row.webhooks_unsigned,
            recording_hosts: row
                .recording_hosts
                .map(|hosts| split_hosts(&hosts))
                .unwrap_or_default(),
            postcall_config,
            has_api_token: row.api_token_sha256.is_some(),
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        })
    }

    /// Creates a tenant. Names are unique; tokens must be at least
    /// [`crate::crypto::MIN_TOKEN_LEN`] characters.
    pub async fn insert_tenant(&self, new: &NewTenant) -> Result<Tenant, StoreError> {
        validate_new_tenant(new)?;
        let now = DbTime::from(Utc::now());
        let postcall_config = match &new.postcall_config {
            Some(config) => Some(DbJson(seal_config(config.clone(), self.node_key()?)?)),
            None => None,
        };
        let row = TenantRow {
            id: DbUuid(new.id.unwrap_or_else(Uuid::new_v4)),
            name: new.name.clone(),
            webhook_url: new.webhook_url.clone(),
            webhook_secret: self.seal(new.webhook_secret.as_ref())?,
            cost_per_second_micros: new.cost_per_second_micros,
            stt_provider: new.stt_provider.clone(),
            created_at: now,
            updated_at: now,
            stt_api_key: self.seal(new.stt_api_key.as_ref())?,
            media_token: new
                .media_token
                .as_ref()
                .map(|s| stored_token_hash(s.expose())),
            media_open: new.media_open,
            twilio_auth_token: self.seal(new.twilio_auth_token.as_ref())?,
            max_concurrent_calls: new.max_concurrent_calls,
            inbound_token: new
                .inbound_token
                .as_ref()
                .map(|s| stored_token_hash(s.expose())),
            elevenlabs_webhook_secret: self.seal(new.elevenlabs_webhook_secret.as_ref())?,
            postcall_config,
            api_token_sha256: new
                .api_token
                .as_ref()
                .map(|t| crate::crypto::token_hash(t.expose())),
            vonage_signature_secret: self.seal(new.vonage_signature_secret.as_ref())?,
            webhooks_unsigned: new.webhooks_unsigned,
            recording_hosts: Some(new.recording_hosts.join(",")).filter(|h| !h.is_empty()),
        };
        with_conn!(self, conn => {
            diesel::insert_into(tenants::table).values(&row).execute(conn).await?
        });
        self.tenant_from_row(row)
    }

    /// The tenant whose API token this is.
    pub async fn tenant_by_api_token(&self, token: &str) -> Result<Option<Tenant>, StoreError> {
        let hash = crate::crypto::token_hash(token);
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table
                .filter(tenants::api_token_sha256.eq(&hash))
                .select(TenantRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        row.map(|r| self.tenant_from_row(r)).transpose()
    }

    /// The tenant whose inbound webhook route token this is.
    pub async fn tenant_by_inbound_token(&self, token: &str) -> Result<Option<Tenant>, StoreError> {
        let hash = stored_token_hash(token);
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table
                .filter(tenants::inbound_token.eq(&hash))
                .select(TenantRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        row.map(|r| self.tenant_from_row(r)).transpose()
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        let row: Option<TenantRow> = with_conn!(self, conn => {
            tenants::table.find(DbUuid(id)).select(TenantRow::as_select()).first(conn).await.optional()?
        });
        row.map(|r| self.tenant_from_row(r)).transpose()
    }

    /// Every text column of a tenant's row as stored, joined: for checks that nothing secret is
    /// kept in the clear.
    #[doc(hidden)]
    pub async fn raw_tenant_row_text(&self, id: Uuid) -> Result<String, StoreError> {
        let row: TenantRow = with_conn!(self, conn => {
            tenants::table.find(DbUuid(id)).select(TenantRow::as_select()).first(conn).await?
        });
        Ok(format!("{row:?}"))
    }

    /// Seals secrets and hashes tokens that rows written before sealing existed still hold in
    /// plain text. Idempotent; run at start-up after the migrations. Returns the rows changed.
    pub async fn secure_tenant_secrets(&self) -> Result<usize, StoreError> {
        let key = self.node_key()?.clone();
        let rows: Vec<TenantRow> = with_conn!(self, conn => {
            tenants::table.select(TenantRow::as_select()).load(conn).await?
        });
        let mut changed = 0;
        for row in rows {
            let seal = |v: &Option<String>| -> Result<Option<String>, StoreError> {
                v.as_ref()
                    .map(|v| match is_sealed(v) {
                        true => Ok(v.clone()),
                        false => key
                            .seal(v)
                            .map_err(|e| StoreError::InvalidInput(e.to_string())),
                    })
                    .transpose()
            };
            let hash = |v: &Option<String>| {
                v.as_ref().map(|v| match is_hashed(v) {
                    true => v.clone(),
                    false => stored_token_hash(v),
                })
            };
            let config = match &row.postcall_config {
                Some(DbJson(c)) => Some(DbJson(seal_config(c.clone(), &key)?)),
                None => None,
            };
            let secured = TenantRow {
                webhook_secret: seal(&row.webhook_secret)?,
                stt_api_key: seal(&row.stt_api_key)?,
                twilio_auth_token: seal(&row.twilio_auth_token)?,
                elevenlabs_webhook_secret: seal(&row.elevenlabs_webhook_secret)?,
                vonage_signature_secret: seal(&row.vonage_signature_secret)?,
                media_token: hash(&row.media_token),
                inbound_token: hash(&row.inbound_token),
                postcall_config: config,
                ..row.clone()
            };
            let same = secured.webhook_secret == row.webhook_secret
                && secured.stt_api_key == row.stt_api_key
                && secured.twilio_auth_token == row.twilio_auth_token
                && secured.elevenlabs_webhook_secret == row.elevenlabs_webhook_secret
                && secured.vonage_signature_secret == row.vonage_signature_secret
                && secured.media_token == row.media_token
                && secured.inbound_token == row.inbound_token
                && secured.postcall_config.as_ref().map(|c| &c.0)
                    == row.postcall_config.as_ref().map(|c| &c.0);
            if same {
                continue;
            }
            with_conn!(self, conn => {
                diesel::update(tenants::table.find(secured.id))
                    .set((
                        tenants::webhook_secret.eq(&secured.webhook_secret),
                        tenants::stt_api_key.eq(&secured.stt_api_key),
                        tenants::twilio_auth_token.eq(&secured.twilio_auth_token),
                        tenants::elevenlabs_webhook_secret.eq(&secured.elevenlabs_webhook_secret),
                        tenants::vonage_signature_secret.eq(&secured.vonage_signature_secret),
                        tenants::media_token.eq(&secured.media_token),
                        tenants::inbound_token.eq(&secured.inbound_token),
                        tenants::postcall_config.eq(&secured.postcall_config),
                    ))
                    .execute(conn)
                    .await?
            });
            changed += 1;
        }
        Ok(changed)
    }
}

fn validate_new_tenant(new: &NewTenant) -> Result<(), StoreError> {
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
    if new.webhook_url.is_some() && new.webhook_secret.is_none() {
        return Err(StoreError::InvalidInput(
            "a tenant with a webhook URL needs a webhook secret: webhooks are never sent unsigned"
                .into(),
        ));
    }
    for (what, token) in [
        ("media token", &new.media_token),
        ("inbound webhook token", &new.inbound_token),
        ("API token", &new.api_token),
    ] {
        if let Some(token) = token {
            validate_token(what, token.expose()).map_err(StoreError::InvalidInput)?;
        }
    }
    for host in &new.recording_hosts {
        crate::egress::validate_host_name(host).map_err(StoreError::InvalidInput)?;
    }
    Ok(())
}

fn split_hosts(hosts: &str) -> Vec<String> {
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Seals every credential field (see [`SECRET_FIELDS`]) of a post-call configuration.
fn seal_config(config: Value, key: &NodeKey) -> Result<Value, StoreError> {
    map_secret_fields(config, &mut |v| match is_sealed(v) {
        true => Ok(v.to_string()),
        false => key
            .seal(v)
            .map_err(|e| StoreError::InvalidInput(e.to_string())),
    })
}

/// Opens every sealed credential field of a post-call configuration.
fn open_config(config: Value, key: &NodeKey) -> Result<Value, StoreError> {
    map_secret_fields(config, &mut |v| {
        key.open(v)
            .map_err(|e| StoreError::Corrupt(format!("tenant postcall_config: {e}")))
    })
}

fn map_secret_fields(
    value: Value,
    f: &mut impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<Value, StoreError> {
    Ok(match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let v = match v {
                    Value::String(s) if SECRET_FIELDS.contains(&k.as_str()) => {
                        Value::String(f(&s)?)
                    }
                    other => map_secret_fields(other, f)?,
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| map_secret_fields(v, f))
                .collect::<Result<_, _>>()?,
        ),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_fields_are_sealed_and_opened_anywhere_in_the_config() {
        let key = NodeKey::from_base64(&NodeKey::generate_base64().unwrap()).unwrap();
        let config = serde_json::json!({
            "recording_auth": {"username": "AC1", "password": "p4ss"},
            "offline_stt": {"base_url": "https://x", "api_key": "sk-1"},
            "list": [{"token": "t"}],
        });
        let sealed = seal_config(config.clone(), &key).unwrap();
        let text = sealed.to_string();
        assert!(!text.contains("p4ss") && !text.contains("sk-1"));
        assert!(text.contains("AC1"));
        assert_eq!(seal_config(sealed.clone(), &key).unwrap(), sealed);
        assert_eq!(open_config(sealed, &key).unwrap(), config);
    }
}
