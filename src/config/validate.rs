//! Settings checked once, at load, section by section; every error names the key and, when
//! one set it, the environment variable or file.

use std::collections::BTreeMap;

use super::{invalid, origin_note, ConfigError, Settings};

/// Where each key came from, for the error.
pub(super) struct Check<'a>(pub(super) &'a BTreeMap<String, String>);

impl Check<'_> {
    fn fail(&self, key: &str, message: String) -> ConfigError {
        invalid(key, &origin_note(self.0, key), message)
    }
}

impl Settings {
    /// Every section's rules; the first broken one is the error.
    pub(super) fn validate(&self, origins: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let c = Check(origins);
        self.check_media(&c)?;
        self.check_identity_and_database(&c)?;
        self.check_calls(&c)?;
        self.check_stt(&c)?;
        self.check_security(&c)?;
        self.check_durations(&c)
    }

    /// The AudioSocket listener's tenant and allow list, the handshake deadline (addresses and
    /// tenant ids are typed: they were parsed, key named, as the settings were read).
    fn check_media(&self, c: &Check) -> Result<(), ConfigError> {
        let m = &self.media;
        if m.audiosocket_bind.is_some() && m.audiosocket_tenant_id.is_none() {
            return Err(c.fail(
                "media.audiosocket_tenant_id",
                "is required when media.audiosocket_bind is set".into(),
            ));
        }
        for entry in m.audiosocket_allow.split(',').map(str::trim) {
            if entry != "*" && !entry.is_empty() && entry.parse::<std::net::IpAddr>().is_err() {
                return Err(c.fail(
                    "media.audiosocket_allow",
                    format!("{entry:?} is not an IP address (or *)"),
                ));
            }
        }
        if m.handshake_timeout_ms == 0 {
            return Err(c.fail(
                "media.handshake_timeout_ms",
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// The node id, the pool, the database deadlines and URL.
    fn check_identity_and_database(&self, c: &Check) -> Result<(), ConfigError> {
        if self.node_id.trim().is_empty() || self.node_id.len() > 128 {
            return Err(c.fail("node_id", "must be 1 to 128 characters".into()));
        }
        if self.database.pool_size > 1_000 {
            return Err(c.fail("database.pool_size", "must be at most 1000".into()));
        }
        let db = &self.database;
        for (key, value) in [
            ("database.connect_timeout_ms", db.connect_timeout_ms),
            ("database.acquire_timeout_ms", db.acquire_timeout_ms),
            ("database.readiness_timeout_ms", db.readiness_timeout_ms),
        ] {
            if value == 0 {
                return Err(c.fail(key, "must be greater than 0".into()));
            }
        }
        self.database_url()
            .map_err(|err| c.fail("database.url", err.to_string()))?;
        Ok(())
    }

    /// Call costs and post-call attempts, and the webhook retry schedule.
    fn check_calls(&self, c: &Check) -> Result<(), ConfigError> {
        if self.calls.default_cost_per_second_micros < 0 {
            return Err(c.fail(
                "calls.default_cost_per_second_micros",
                "must not be negative".into(),
            ));
        }
        if self.calls.postcall_max_attempts < 1 {
            return Err(c.fail("calls.postcall_max_attempts", "must be at least 1".into()));
        }
        if let Err(message) =
            crate::postcall::deliver::parse_schedule(&self.postcall.webhook_retry_secs)
        {
            return Err(c.fail("postcall.webhook_retry_secs", message));
        }
        Ok(())
    }

    /// The STT provider name and the scripted provider's lines.
    fn check_stt(&self, c: &Check) -> Result<(), ConfigError> {
        if !["scripted", "deepgram", "flux", "whisper"].contains(&self.stt.provider.as_str()) {
            return Err(c.fail(
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
            .map_err(|err| c.fail("stt.scripted", err))?;
        Ok(())
    }

    /// The node key and the egress policy.
    fn check_security(&self, c: &Check) -> Result<(), ConfigError> {
        if let Some(key) = &self.security.node_key {
            crate::crypto::NodeKey::from_base64(key.expose())
                .map_err(|err| c.fail("security.node_key", err.to_string()))?;
        }
        self.egress
            .validate()
            .map_err(|(key, message)| c.fail(key, message))?;
        Ok(())
    }

    /// Durations and sizes that must not be zero.
    fn check_durations(&self, c: &Check) -> Result<(), ConfigError> {
        for (key, value) in [
            ("calls.idle_timeout_secs", self.calls.idle_timeout_secs),
            ("calls.finish_timeout_secs", self.calls.finish_timeout_secs),
            ("calls.start_timeout_secs", self.calls.start_timeout_secs),
            ("stt.restart_window_secs", self.stt.restart_window_secs),
            ("stt.audio_queue_frames", self.stt.audio_queue_frames as u64),
        ] {
            if value == 0 {
                return Err(c.fail(key, "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}
