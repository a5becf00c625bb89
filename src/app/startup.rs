//! Start-up steps: the store opened and migrated (retrying an unreachable database), calls
//! orphaned by a dead process swept, registered calls expired, the STT providers and the
//! post-call workers built from settings.

use super::*;

/// Opens the configured store and, when enabled, applies migrations.
pub async fn open_store(settings: &Settings) -> Result<Store, StartError> {
    let url = settings.database_url()?;
    if settings.database.url.is_none() {
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::Io {
            context: format!(
                "cannot create data directory {}",
                settings.data_dir.display()
            ),
            source,
        })?;
    }
    let store = Store::connect(&url, store_options(settings)?)?;
    if settings.database.migrate_on_start {
        migrate_with_retry(
            &store,
            &url,
            Duration::from_millis(settings.database.startup_timeout_ms),
        )
        .await?;
        let secured = store.secure_tenant_secrets().await?;
        if secured > 0 {
            tracing::info!(
                tenants = secured,
                "sealed tenant secrets stored in plain text"
            );
        }
    }
    Ok(store)
}

/// The open local tenant of a loopback-only node (see
/// [`crate::ingress::admission::LOCAL_TENANT`]), created when missing.
pub(super) async fn ensure_local_tenant(store: &Store) -> Result<(), StartError> {
    use crate::ingress::admission::LOCAL_TENANT;
    if store.get_tenant(LOCAL_TENANT).await?.is_some() {
        return Ok(());
    }
    let created = store
        .insert_tenant(&crate::store::NewTenant {
            id: Some(LOCAL_TENANT),
            name: "local".into(),
            media_open: true,
            cost_per_second_micros: crate::config::CallSettings::default()
                .default_cost_per_second_micros,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => {
            tracing::info!(tenant_id = %LOCAL_TENANT, "created the open local tenant (served on loopback only)");
            Ok(())
        }
        // Another node created it meanwhile.
        Err(_) if store.get_tenant(LOCAL_TENANT).await?.is_some() => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Store options from the settings, with the node key that seals tenant secrets.
pub fn store_options(settings: &Settings) -> Result<StoreOptions, StartError> {
    let mut options = settings.store_options();
    let key = crate::crypto::resolve_node_key(&settings.security, &settings.data_dir).map_err(
        |message| StartError::Io {
            context: "cannot load the node key".into(),
            source: std::io::Error::other(message),
        },
    )?;
    options.node_key = Some(key);
    Ok(options)
}

/// Applies migrations, retrying while the database is unreachable, up to `patience`.
pub async fn migrate_with_retry(
    store: &Store,
    url: &DatabaseUrl,
    patience: Duration,
) -> Result<Vec<String>, StoreError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match store.migrate().await {
            Ok(applied) => {
                tracing::info!(database = %url, applied = ?applied, "migrations up to date");
                return Ok(applied);
            }
            Err(err) if err.is_transient() && started.elapsed() + delay < patience => {
                tracing::warn!(database = %url, error = %err, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Starts the post-call workers and webhook senders configured for this process.
pub fn start_postcall(
    settings: &Settings,
    store: &Store,
    metrics: crate::metrics::PostcallMetrics,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Option<crate::postcall::PostcallHandle>, StartError> {
    let p = &settings.postcall;
    if p.workers == 0 && p.webhook_workers == 0 {
        return Ok(None);
    }
    crate::postcall::Pipeline::start(
        store.clone(),
        p.clone(),
        crate::postcall::Workplace {
            node: settings.node_id.clone(),
            data_dir: settings.data_dir.clone(),
            model_dir: settings.stt.whisper.model_dir.clone(),
        },
        metrics,
        crate::egress::EgressPolicy::from_settings(&settings.egress),
        cancel,
    )
    .map(Some)
    .map_err(|message| {
        StartError::Config(ConfigError::Invalid {
            key: "postcall".into(),
            origin: String::new(),
            message,
        })
    })
}

/// Audio messages a provider stream queues: the live queue plus room for a full replay burst.
fn stt_queue_frames(settings: &Settings) -> usize {
    settings.stt.audio_queue_frames + (settings.stt.replay_buffer_ms / 20) as usize
}

pub(super) async fn build_stt_provider(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Arc<dyn SttProvider>, StartError> {
    let queue = stt_queue_frames(settings);
    let invalid = |key: &str, message: String| {
        StartError::Config(ConfigError::Invalid {
            key: key.into(),
            origin: String::new(),
            message,
        })
    };
    let deepgram = |api| {
        DeepgramProvider::new(settings.stt.deepgram.clone(), api, queue, true)
            .map(|p| Arc::new(p) as Arc<dyn SttProvider>)
            .map_err(|message| invalid("stt.deepgram", message))
    };
    match settings.stt.provider.as_str() {
        "deepgram" => deepgram(DeepgramApi::V1),
        "flux" => deepgram(DeepgramApi::Flux),
        "whisper" => {
            let whisper = settings.stt.whisper.clone();
            let cache = settings.data_dir.join("models");
            let whisper_metrics = metrics.whisper.clone();
            let pool = tokio::task::spawn_blocking(move || {
                let dir = fetch::resolve_model_dir(whisper.model_dir.as_deref(), &cache)
                    .map_err(|err| err.to_string())?;
                WhisperPool::start(&dir, whisper.workers, whisper.queue, whisper_metrics)
                    .map(|pool| (pool, whisper))
            })
            .await
            .map_err(|err| invalid("stt.whisper", err.to_string()))?
            .map_err(|message| invalid("stt.whisper", message))?;
            let (pool, whisper) = pool;
            Ok(Arc::new(WhisperProvider::new(
                Arc::new(pool),
                whisper,
                queue,
            )))
        }
        _ => ScriptedProvider::new(settings.stt.scripted.clone(), queue)
            .map(|p| Arc::new(p) as Arc<dyn SttProvider>)
            .map_err(|message| invalid("stt.scripted", message)),
    }
}

/// Providers a tenant may pick besides the default: `scripted`, `deepgram` and `flux` (with the
/// tenant's own key, or the node's `stt.deepgram.api_key`). Local Whisper loads ~300 MB per
/// worker, so it is only there when it is the default.
pub(super) fn other_stt_providers(settings: &Settings) -> Vec<Arc<dyn SttProvider>> {
    let queue = stt_queue_frames(settings);
    let mut others: Vec<Arc<dyn SttProvider>> = Vec::new();
    if let Ok(scripted) = ScriptedProvider::new(settings.stt.scripted.clone(), queue) {
        others.push(Arc::new(scripted));
    }
    for api in [DeepgramApi::V1, DeepgramApi::Flux] {
        if let Ok(provider) =
            DeepgramProvider::new(settings.stt.deepgram.clone(), api, queue, false)
        {
            others.push(Arc::new(provider));
        }
    }
    others
}

/// Registered calls that never started expire (`calls.registered_expiry_secs`): at start-up,
/// then once a minute. No post-call job and no webhook for a call that never happened.
async fn expire_registered(store: &Store, expiry_secs: u64) -> Result<usize, StoreError> {
    if expiry_secs == 0 {
        return Ok(0);
    }
    let before = chrono::Utc::now() - chrono::Duration::seconds(expiry_secs as i64);
    let n = store.expire_registered_calls(before).await?;
    if n > 0 {
        tracing::info!(count = n, "registered calls that never started expired");
    }
    Ok(n)
}

pub(super) fn spawn_registered_expiry(
    store: Store,
    expiry_secs: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    if expiry_secs == 0 {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                () = cancel.cancelled() => return,
            }
            if let Err(err) = expire_registered(&store, expiry_secs).await {
                tracing::warn!(error = %err, "cannot expire registered calls");
            }
        }
    });
}

pub(super) async fn sweep_orphans(
    store: &Store,
    settings: &Settings,
) -> Result<Vec<uuid::Uuid>, StoreError> {
    expire_registered(store, settings.calls.registered_expiry_secs).await?;
    let stale = settings.calls.stale_call_after_secs;
    let stale_before =
        (stale > 0).then(|| chrono::Utc::now() - chrono::Duration::seconds(stale as i64));
    store.sweep_orphaned_calls(stale_before).await
}
