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
    /// Address the HTTP server listens on.
    pub bind: String,
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
            bind: "127.0.0.1:8080".into(),
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

    fn validate(&self, origins: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| invalid(key, &origin_note(origins, key), message);
        self.bind.parse::<SocketAddr>().map_err(|err| {
            fail(
                "bind",
                format!("{err} (expected HOST:PORT, e.g. 127.0.0.1:8080)"),
            )
        })?;
        let m = &self.media;
        for (key, value) in [
            (
                "webhooks.default_tenant_id",
                &self.webhooks.default_tenant_id,
            ),
            ("media.default_tenant_id", &m.default_tenant_id),
            ("media.audiosocket_tenant_id", &m.audiosocket_tenant_id),
        ] {
            if !value.is_empty() && uuid::Uuid::parse_str(value).is_err() {
                return Err(fail(key, format!("must be a UUID, got {value:?}")));
            }
        }
        if !m.audiosocket_bind.is_empty() {
            m.audiosocket_bind.parse::<SocketAddr>().map_err(|err| {
                fail(
                    "media.audiosocket_bind",
                    format!("{err} (expected HOST:PORT)"),
                )
            })?;
            if m.audiosocket_tenant_id.is_empty() {
                return Err(fail(
                    "media.audiosocket_tenant_id",
                    "is required when media.audiosocket_bind is set".into(),
                ));
            }
        }
        for entry in m.audiosocket_allow.split(',').map(str::trim) {
            if entry != "*" && !entry.is_empty() && entry.parse::<std::net::IpAddr>().is_err() {
                return Err(fail(
                    "media.audiosocket_allow",
                    format!("{entry:?} is not an IP address (or *)"),
                ));
            }
        }
        if let Err(message) =
            crate::postcall::deliver::parse_schedule(&self.postcall.webhook_retry_secs)
        {
            return Err(fail("postcall.webhook_retry_secs", message));
        }
        if m.handshake_timeout_ms == 0 {
            return Err(fail(
                "media.handshake_timeout_ms",
                "must be greater than 0".into(),
            ));
        }
        if self.node_id.trim().is_empty() || self.node_id.len() > 128 {
            return Err(fail("node_id", "must be 1 to 128 characters".into()));
        }
        if self.database.pool_size > 1_000 {
            return Err(fail("database.pool_size", "must be at most 1000".into()));
        }
        let db = &self.database;
        for (key, value) in [
            ("database.connect_timeout_ms", db.connect_timeout_ms),
            ("database.acquire_timeout_ms", db.acquire_timeout_ms),
            ("database.readiness_timeout_ms", db.readiness_timeout_ms),
        ] {
            if value == 0 {
                return Err(fail(key, "must be greater than 0".into()));
            }
        }
        if self.calls.default_cost_per_second_micros < 0 {
            return Err(fail(
                "calls.default_cost_per_second_micros",
                "must not be negative".into(),
            ));
        }
        if self.calls.postcall_max_attempts < 1 {
            return Err(fail(
                "calls.postcall_max_attempts",
                "must be at least 1".into(),
            ));
        }
        self.database_url()
            .map_err(|err| fail("database.url", err.to_string()))?;
        if !["scripted", "deepgram", "flux", "whisper"].contains(&self.stt.provider.as_str()) {
            return Err(fail(
                "stt.provider",
                format!(
                    "unknown provider {:?} (available: whisper, scripted, deepgram, flux)",
                    self.stt.provider
                ),
            ));
        }
        self.stt
            .scripted
            .load_lines()
            .map_err(|err| fail("stt.scripted", err))?;
        if let Some(key) = &self.security.node_key {
            crate::crypto::NodeKey::from_base64(key.expose())
                .map_err(|err| fail("security.node_key", err.to_string()))?;
        }
        self.egress
            .validate()
            .map_err(|(key, message)| fail(key, message))?;
        for (key, value) in [
            ("calls.idle_timeout_secs", self.calls.idle_timeout_secs),
            ("calls.finish_timeout_secs", self.calls.finish_timeout_secs),
            ("calls.start_timeout_secs", self.calls.start_timeout_secs),
            ("stt.restart_window_secs", self.stt.restart_window_secs),
            ("stt.audio_queue_frames", self.stt.audio_queue_frames as u64),
        ] {
            if value == 0 {
                return Err(fail(key, "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    /// The socket address to listen on (validated at load).
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.bind
            .parse()
            .map_err(|err: std::net::AddrParseError| invalid("bind", "", err))
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

fn read_toml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|err| ConfigError::Toml {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    serde_json::to_value(table).map_err(|err| ConfigError::Toml {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// Overlays `layer` onto `base`, table by table.
fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (key, value) in layer {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Applies `CALLENGINE_*` and `DATABASE_URL` variables; returns which variable set each key.
fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name == "DATABASE_URL"
                || (name.starts_with(ENV_PREFIX)
                    && name != CONFIG_FILE_ENV
                    && !name.starts_with(LOADGEN_ENV_PREFIX))
        })
        .collect();
    // DATABASE_URL first so that CALLENGINE_DATABASE__URL, applied later, wins.
    vars.sort_by_key(|(name, _)| name != "DATABASE_URL");
    let mut origins = BTreeMap::new();
    for (name, raw) in vars {
        let path: Vec<String> = if name == "DATABASE_URL" {
            vec!["database".into(), "url".into()]
        } else {
            name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect()
        };
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: name,
                message: "empty key segment".into(),
            });
        }
        set_path(tree, &path, &raw).map_err(|message| ConfigError::Env {
            var: name.clone(),
            message,
        })?;
        origins.insert(path.join("."), name);
    }
    Ok(origins)
}

/// Sets one key from an environment string, typed after the value it replaces.
fn set_path(tree: &mut Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut node = tree;
    let (last, parents) = path.split_last().ok_or("empty key")?;
    for key in parents {
        let map = node.as_object_mut().ok_or("not a table")?;
        node = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let map = node
        .as_object_mut()
        .ok_or_else(|| format!("`{}` is not a table", parents.join(".")))?;
    let value = match map.get(last) {
        Some(Value::Bool(_)) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {raw:?}")),
        },
        Some(Value::Number(n)) if n.is_f64() => raw
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {raw:?}"))?,
        Some(Value::Number(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("expected an integer, got {raw:?}"))?,
        Some(Value::Object(_)) | Some(Value::Array(_)) => {
            return Err("this key is a table or list and cannot be set from the environment".into())
        }
        _ => Value::String(raw.to_string()),
    };
    map.insert(last.clone(), value);
    Ok(())
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
        assert_eq!(settings.bind, "127.0.0.1:8080");
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
        assert_eq!(settings.bind, "127.0.0.1:9000");
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
}
