//! Typed configuration: defaults < TOML file (`--config`) < environment.
//!
//! Environment keys are `CALLENGINE_` followed by the key path in upper case, with `__` between
//! nesting levels: `CALLENGINE_BIND`, `CALLENGINE_DATA_DIR`, `CALLENGINE_DATABASE__POOL_SIZE`.
//! `DATABASE_URL` is accepted for `database.url` (`CALLENGINE_DATABASE__URL` wins over it).
//! Every value is checked at start-up and a bad one is reported with the key (and the variable
//! that set it); secrets never appear in `Debug` output, logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod sources;
mod validate;

use sources::{apply_env, merge, read_toml};

pub use crate::call::CallSettings;
pub use crate::media::MediaSettings;
pub use crate::secret::Secret;
pub use crate::stt::SttSettings;
pub use crate::telemetry::LogFormat;
use serde_json::{Map, Value};

/// Environment variable prefix for settings.
pub const ENV_PREFIX: &str = "CALLENGINE_";
/// Environment variable naming the config file (read by the CLI, not a setting itself).
pub const CONFIG_FILE_ENV: &str = "CALLENGINE_CONFIG";
/// Variables of the `loadgen` command's own flags (`CALLENGINE_LOADGEN_API_TOKEN`…): read by
/// its argument parser, never settings of the engine.
pub const LOADGEN_ENV_PREFIX: &str = "CALLENGINE_LOADGEN_";

/// Why configuration could not be loaded. Messages name the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    /// An environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A key has the wrong type, is unknown, or has an invalid value.
    #[error("invalid setting `{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// Database connection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://…`; unset means SQLite in the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    /// Pool size; 0 picks a default per backend (SQLite 4, PostgreSQL 16).
    pub pool_size: u32,
    /// Time allowed to open one connection.
    pub connect_timeout_ms: u64,
    /// Time a caller may wait for a free pooled connection.
    pub acquire_timeout_ms: u64,
    /// SQLite `busy_timeout`: how long a writer waits for the lock.
    pub busy_timeout_ms: u64,
    /// How long start-up keeps retrying an unreachable database before giving up.
    pub startup_timeout_ms: u64,
    /// Deadline for the readiness probe's query.
    pub readiness_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 0,
            connect_timeout_ms: 5_000,
            acquire_timeout_ms: 5_000,
            busy_timeout_ms: 5_000,
            startup_timeout_ms: 30_000,
            readiness_timeout_ms: 2_000,
            migrate_on_start: true,
        }
    }
}

/// Operator API settings (`[api]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer token for `/api/*`. Unset: the API answers 503 (disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// Bearer token `/metrics` accepts besides the admin token. `/metrics` is open only when
    /// neither this nor `admin_token` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<Secret>,
    /// Concurrent `GET /api/v1/events` streams one API token may hold (the admin token counts
    /// as one token); the next one gets 429.
    pub max_event_subscribers_per_token: usize,
    /// Events one event-feed reader may fall behind its channel (its tenant's, or every
    /// tenant's for an admin reader) before it loses the oldest and gets `lagged`. Rounded up to
    /// a power of two, clamped to 1 ..= 1,048,576; tests set it small.
    pub event_feed_capacity: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            admin_token: None,
            metrics_token: None,
            max_event_subscribers_per_token: crate::call::events::MAX_SUBSCRIBERS_PER_TOKEN,
            event_feed_capacity: crate::call::events::CAPACITY,
        }
    }
}

/// All of callengine's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server listens on (`HOST:PORT`).
    pub bind: SocketAddr,
    /// Directory for the embedded database and other local state.
    pub data_dir: PathBuf,
    /// This node's name: written on every call it owns, used by the start-up sweep.
    pub node_id: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// HTTP worker threads; 0 means one per core.
    pub http_workers: usize,
    /// How long a graceful shutdown may take before the server stops anyway.
    pub shutdown_timeout_secs: u64,
    /// Database settings.
    pub database: DatabaseSettings,
    /// Call bookkeeping settings.
    pub calls: CallSettings,
    /// Speech-to-text.
    pub stt: SttSettings,
    /// Operator API.
    pub api: ApiSettings,
    /// Carrier media endpoints.
    pub media: MediaSettings,
    /// Inbound webhooks.
    pub webhooks: crate::webhooks::WebhookSettings,
    /// Post-call workers and outbound webhooks.
    pub postcall: crate::postcall::PostcallSettings,
    /// HTTP and handshake limits of every way in.
    pub ingress: crate::ingress::IngressSettings,
    /// Every outbound request: schemes, hosts, address ranges, caps.
    pub egress: crate::egress::EgressSettings,
    /// The node key that seals tenant secrets at rest.
    pub security: crate::crypto::SecuritySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            node_id: default_node_id(),
            log_format: LogFormat::Text,
            http_workers: 0,
            shutdown_timeout_secs: 30,
            database: DatabaseSettings::default(),
            calls: CallSettings::default(),
            stt: SttSettings::default(),
            api: ApiSettings::default(),
            media: MediaSettings::default(),
            webhooks: crate::webhooks::WebhookSettings::default(),
            postcall: crate::postcall::PostcallSettings::default(),
            ingress: crate::ingress::IngressSettings::default(),
            egress: crate::egress::EgressSettings::default(),
            security: crate::crypto::SecuritySettings::default(),
        }
    }
}

fn default_node_id() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok();
    let name = std::env::var("HOSTNAME")
        .ok()
        .or(from_file)
        .unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        "callengine".into()
    } else {
        name.into()
    }
}

impl Settings {
    /// The store's options: the `[database]` section with the few call and post-call values
    /// the store applies to rows it writes.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        let db = &self.database;
        crate::store::StoreOptions {
            pool_size: db.pool_size,
            connect_timeout: std::time::Duration::from_millis(db.connect_timeout_ms),
            acquire_timeout: std::time::Duration::from_millis(db.acquire_timeout_ms),
            busy_timeout: std::time::Duration::from_millis(db.busy_timeout_ms),
            default_cost_per_second_micros: self.calls.default_cost_per_second_micros,
            postcall_max_attempts: self.calls.postcall_max_attempts,
            recording_wait: std::time::Duration::from_secs(self.postcall.recording_wait_secs),
            node_id: self.node_id.clone(),
            node_key: None,
        }
    }

    /// Loads settings from the process environment and an optional TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads settings from the given environment (testable without touching the process's).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree =
            serde_json::to_value(Settings::default()).map_err(|err| invalid("", "", err))?;
        if let Some(path) = file {
            merge(&mut tree, read_toml(path)?);
        }
        let origins = apply_env(&mut tree, env)?;
        let settings: Settings = serde_path_to_error::deserialize(tree).map_err(|err| {
            let key = err.path().to_string();
            let origin = origin_note(&origins, &key);
            invalid(&key, &origin, err.into_inner())
        })?;
        settings.validate(&origins)?;
        Ok(settings)
    }

    /// The database to use: the configured URL, or SQLite in the data directory.
    pub fn database_url(&self) -> Result<crate::store::DatabaseUrl, crate::store::StoreError> {
        match &self.database.url {
            Some(url) => crate::store::DatabaseUrl::parse(url.expose()),
            None => Ok(crate::store::DatabaseUrl::Sqlite {
                path: self.data_dir.join("callengine.db"),
            }),
        }
    }
}

fn invalid(key: &str, origin: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: if key.is_empty() { "." } else { key }.to_string(),
        origin: origin.to_string(),
        message: message.to_string(),
    }
}

fn origin_note(origins: &BTreeMap<String, String>, key: &str) -> String {
    origins
        .get(key)
        .map(|var| format!(" (from {var})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stores_own_defaults_match_the_default_settings() {
        let (from_settings, own) = (
            super::Settings::default().store_options(),
            crate::store::StoreOptions::default(),
        );
        assert_eq!(
            format!(
                "{:?}",
                (
                    from_settings.pool_size,
                    from_settings.connect_timeout,
                    from_settings.acquire_timeout,
                    from_settings.busy_timeout,
                    from_settings.default_cost_per_second_micros,
                    from_settings.postcall_max_attempts,
                    from_settings.recording_wait
                )
            ),
            format!(
                "{:?}",
                (
                    own.pool_size,
                    own.connect_timeout,
                    own.acquire_timeout,
                    own.busy_timeout,
                    own.default_cost_per_second_micros,
                    own.postcall_max_attempts,
                    own.recording_wait
                )
            ),
        );
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_sqlite_on_localhost_8080() {
        let settings = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(settings.bind.to_string(), "127.0.0.1:8080");
        assert!(matches!(
            settings.database_url().unwrap(),
            crate::store::DatabaseUrl::Sqlite { .. }
        ));
        assert_eq!(
            settings.stt.provider, "whisper",
            "local speech-to-text by default"
        );
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\n[database]\npool_size = 3\nbusy_timeout_ms = 7\n",
        )
        .unwrap();
        let settings = Settings::load_from(
            Some(&path),
            env(&[
                ("CALLENGINE_DATABASE__POOL_SIZE", "9"),
                ("CALLENGINE_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.bind.to_string(), "127.0.0.1:9000");
        assert_eq!(settings.database.pool_size, 9);
        assert_eq!(settings.database.busy_timeout_ms, 7);
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn callengine_database_url_wins_over_database_url() {
        let settings = Settings::load_from(
            None,
            env(&[
                ("CALLENGINE_DATABASE__URL", "sqlite:///tmp/a.db"),
                ("DATABASE_URL", "postgres://u@h/db"),
            ]),
        )
        .unwrap();
        assert_eq!(
            settings.database.url.unwrap().expose(),
            "sqlite:///tmp/a.db"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_variable() {
        let err = Settings::load_from(None, env(&[("CALLENGINE_DATABASE__POOL_SIZE", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CALLENGINE_DATABASE__POOL_SIZE") && err.contains("integer"),
            "{err}"
        );

        // The load generator's own variables are not engine settings.
        Settings::load_from(None, env(&[("CALLENGINE_LOADGEN_API_TOKEN", "t0ken")])).unwrap();
        let err = Settings::load_from(None, env(&[("CALLENGINE_BIND", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`bind`") && err.contains("CALLENGINE_BIND"),
            "{err}"
        );

        let err = Settings::load_from(None, env(&[("CALLENGINE_DATABASE__POOL_SISE", "3")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database.pool_sise") && err.contains("unknown field"),
            "{err}"
        );

        let err = Settings::load_from(None, env(&[("CALLENGINE_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_format"), "{err}");
    }

    #[test]
    fn unknown_scheme_is_rejected_without_leaking_the_password() {
        let err = Settings::load_from(None, env(&[("DATABASE_URL", "mysql://root:hunter2@db/x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database.url") && err.contains("mysql"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let settings =
            Settings::load_from(None, env(&[("DATABASE_URL", "postgres://u:hunter2@h/db")]))
                .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&settings)
            .unwrap()
            .contains("hunter2"));
    }

    #[test]
    fn bad_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "bind = \n").unwrap();
        let err = Settings::load_from(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("TOML"), "{err}");
    }

    #[test]
    fn ids_and_addresses_are_typed_at_load_with_the_key_named() {
        let tenant = "6f1c2f5e-8a9b-4c2d-9e1f-0a1b2c3d4e5f";
        let settings = Settings::load_from(
            None,
            env(&[
                ("CALLENGINE_MEDIA__DEFAULT_TENANT_ID", tenant),
                ("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:9092"),
                ("CALLENGINE_MEDIA__AUDIOSOCKET_TENANT_ID", tenant),
                ("CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID", ""),
            ]),
        )
        .unwrap();
        assert_eq!(
            settings.media.default_tenant_id.map(|t| t.to_string()),
            Some(tenant.to_string())
        );
        assert_eq!(
            settings.media.audiosocket_bind.map(|a| a.port()),
            Some(9092)
        );
        assert_eq!(settings.webhooks.default_tenant_id, None, "empty: unset");

        for (key, var) in [
            (
                "media.default_tenant_id",
                "CALLENGINE_MEDIA__DEFAULT_TENANT_ID",
            ),
            (
                "media.audiosocket_bind",
                "CALLENGINE_MEDIA__AUDIOSOCKET_BIND",
            ),
            (
                "webhooks.default_tenant_id",
                "CALLENGINE_WEBHOOKS__DEFAULT_TENANT_ID",
            ),
        ] {
            let err = Settings::load_from(None, env(&[(var, "not-valid")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(var), "{key}: {err}");
        }
        // A listener needs its tenant.
        let err = Settings::load_from(
            None,
            env(&[("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:9092")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("media.audiosocket_tenant_id"), "{err}");
    }
}
