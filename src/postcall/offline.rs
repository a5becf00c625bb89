//! Steps 1–3 of a job: the recording fetched (or reused) and transcribed offline, by the
//! local Whisper engine or a remote OpenAI-compatible endpoint.

use super::*;

impl Pipeline {
    /// Downloads (or reuses) the recording and transcribes it with the local engine.
    /// The recording's transcript as `(start_ms, text)` parts (30 s windows, or one part from a
    /// remote endpoint).
    pub(super) async fn offline_transcript(
        self: &Arc<Self>,
        call: &Call,
    ) -> Result<Vec<(i64, String)>, String> {
        let url = call.recording_url.clone().unwrap_or_default();
        let tenant = self.store.get_tenant(call.tenant_id).await.ok().flatten();
        let bytes = self.recording_bytes(call, &url, tenant.as_ref()).await?;
        let extension = url
            .rsplit('/')
            .next()
            .and_then(|last| last.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase());
        let remote = tenant
            .as_ref()
            .and_then(|t| t.postcall_config.as_ref())
            .and_then(|c| openai::Endpoint::from_config(&c["offline_stt"], "whisper-1"));
        if let Some(endpoint) = remote {
            let filename = url
                .rsplit('/')
                .next()
                .filter(|n| n.contains('.'))
                .unwrap_or("recording.wav")
                .to_string();
            let timeout = Duration::from_secs(self.settings.recording_timeout_secs);
            let egress = self.egress.clone();
            let text = tokio::task::spawn_blocking(move || {
                openai::transcribe(&egress, &endpoint, &bytes, &filename, timeout)
            })
            .await
            .map_err(|e| e.to_string())??;
            return Ok(vec![(0, text)]);
        }
        let max_secs = self.egress.max_recording.as_secs();
        let samples = tokio::task::spawn_blocking(move || {
            audio::decode_to_16k_mono_capped(&bytes, extension.as_deref(), max_secs)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.transcribe(samples).await
    }

    /// The recording's bytes: the engine's own file for a `file://` URL (nothing else on this
    /// disk), the cached copy of an earlier attempt, or a fetch through the egress policy.
    async fn recording_bytes(
        &self,
        call: &Call,
        url: &str,
        tenant: Option<&crate::store::Tenant>,
    ) -> Result<Vec<u8>, String> {
        let cached = self.recordings_dir.join(format!("{}.rec", call.id));
        if let Some(path) = url.strip_prefix("file://").map(PathBuf::from) {
            return self.own_recording(call, &path);
        }
        match std::fs::read(&cached) {
            Ok(bytes) if !bytes.is_empty() => Ok(bytes),
            _ => self.fetch_recording(call, url, tenant, cached).await,
        }
    }

    /// A `file://` recording must be the engine's own recording of this very call.
    fn own_recording(&self, call: &Call, path: &std::path::Path) -> Result<Vec<u8>, String> {
        let own = self.recordings_dir.join(format!("{}.wav", call.id));
        let same = match (path.canonicalize(), own.canonicalize()) {
            (Ok(file), Ok(own)) => file == own,
            _ => false,
        };
        if !same {
            return Err(
                "a file:// recording must be the engine's own recording of this call".into(),
            );
        }
        std::fs::read(&own).map_err(|e| format!("reading the recording: {e}"))
    }

    /// Fetches the recording (the tenant's basic auth, size and time bounds) and caches it.
    async fn fetch_recording(
        &self,
        call: &Call,
        url: &str,
        tenant: Option<&crate::store::Tenant>,
        cached: PathBuf,
    ) -> Result<Vec<u8>, String> {
        let auth = tenant
            .and_then(|t| t.postcall_config.as_ref())
            .and_then(|c| {
                let a = &c["recording_auth"];
                Some((
                    a["username"].as_str()?.to_string(),
                    a["password"].as_str()?.to_string(),
                ))
            });
        let (max, timeout) = (
            self.settings.recording_max_bytes,
            Duration::from_secs(self.settings.recording_timeout_secs),
        );
        let source = match call.protocol {
            crate::store::Protocol::Twilio => crate::egress::RecordingSource::Twilio,
            crate::store::Protocol::Vonage => crate::egress::RecordingSource::Vonage,
            _ => crate::egress::RecordingSource::Other,
        };
        let tenant_hosts = tenant
            .map(|t| t.recording_hosts.clone())
            .unwrap_or_default();
        let checked = self
            .egress
            .check_recording_url(url, source, &tenant_hosts)
            .map_err(|e| format!("recording fetch: {e}"))?;
        let (egress, dir, file) = (self.egress.clone(), self.recordings_dir.clone(), cached);
        tokio::task::spawn_blocking(move || {
            let basic = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let bytes = egress
                .get(&checked, basic, max, timeout)
                .map_err(|e| format!("recording fetch failed: {e}"))?;
            std::fs::create_dir_all(&dir).map_err(|e| format!("recordings directory: {e}"))?;
            let partial = file.with_extension("part");
            std::fs::write(&partial, &bytes).map_err(|e| format!("saving the recording: {e}"))?;
            std::fs::rename(&partial, &file).map_err(|e| format!("saving the recording: {e}"))?;
            Ok::<_, String>(bytes)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn transcribe(self: &Arc<Self>, samples: Vec<f32>) -> Result<Vec<(i64, String)>, String> {
        let beam = self.settings.offline_beam.max(1);
        // The engine is loaded once per process, on first use, and used by one job at a time.
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut guard = this
                .engine
                .lock()
                .map_err(|_| "whisper engine poisoned".to_string())?;
            if guard.is_none() {
                let dir = crate::stt::whisper::fetch::resolve_model_dir(
                    this.model_dir.as_deref(),
                    &this.models_cache,
                )
                .map_err(|e| e.to_string())?;
                *guard = Some(WhisperEngine::load(&dir).map_err(|e| e.to_string())?);
            }
            let engine = guard.as_mut().ok_or("whisper engine missing")?;
            let mut parts = Vec::new();
            let window_ms = (crate::stt::whisper::mel::N_SAMPLES / 16) as i64;
            for (i, window) in samples
                .chunks(crate::stt::whisper::mel::N_SAMPLES)
                .enumerate()
            {
                let text = engine.decode(window, beam).map_err(|e| e.to_string())?.text;
                if !text.trim().is_empty() {
                    parts.push((i as i64 * window_ms, text.trim().to_string()));
                }
            }
            Ok(parts)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
