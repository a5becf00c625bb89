//! The application: storage, start-up checks and the HTTP server, shared by `main` and the tests.
//!
//! `Application::build` does everything that can fail at start-up (configuration, database,
//! migrations, the orphan sweep, binding the port) and reports it as a [`StartError`];
//! `run_until_stopped` then serves until a [`ShutdownHandle`] stops it. Signals belong to `main`
//! (the framework's own signal handling is disabled), so shutdown order stays ours.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::call::limits::HandshakeSlots;
use crate::call::registry::{CallRegistry, Drain};
use crate::call::{CallDeps, SttProviders};
use crate::config::{ConfigError, Settings};
use crate::ingress::audiosocket::AudioSocketListener;
use crate::ingress::{carriers, voice};
use crate::metrics::Metrics;
use crate::ops::{api, health, metrics};
pub use crate::state::AppState;
use crate::store::{DatabaseUrl, Store, StoreError, StoreOptions};
use crate::stt::deepgram::{DeepgramApi, DeepgramProvider};
use crate::stt::scripted::ScriptedProvider;
use crate::stt::whisper::fetch;
use crate::stt::whisper::stream::{WhisperPool, WhisperProvider};
use crate::stt::SttProvider;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened, reached or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory or the listening socket could not be set up.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// A built, bound application, ready to serve.
pub struct Application {
    port: u16,
    audiosocket_port: Option<u16>,
    server: Server,
    state: web::Data<AppState>,
    persist_arbiter: Arbiter,
    drain_timeout: Duration,
    postcall: Option<crate::postcall::PostcallHandle>,
}

/// Stops a running application: marks the node draining, finishes every call (close 1001, final
/// flush) within the drain deadline, then stops the HTTP server gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    postcall: Option<crate::postcall::PostcallHandle>,
    draining: Arc<AtomicBool>,
    registry: Addr<CallRegistry>,
    drain_timeout: Duration,
}

impl ShutdownHandle {
    /// Marks the node draining: `/readyz` answers 503 so load balancers stop sending work,
    /// while the server keeps serving what it has.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Stops taking calls, finishes and flushes every live call (bounded by the drain
    /// deadline), then stops the server gracefully.
    pub async fn shutdown(&self) {
        self.begin_drain();
        if let Some(postcall) = &self.postcall {
            postcall.stop();
        }
        match tokio::time::timeout(self.drain_timeout, self.registry.send(Drain)).await {
            Ok(Ok(report)) => {
                tracing::info!(calls = report.calls, "all calls finished and flushed")
            }
            Ok(Err(err)) => tracing::error!(error = %err, "call registry unavailable during drain"),
            Err(_) => tracing::error!(
                timeout_s = self.drain_timeout.as_secs(),
                "drain deadline passed with calls still flushing"
            ),
        }
        self.server.stop(true).await;
    }
}

impl Application {
    /// Opens the database, applies migrations (retrying an unreachable database for
    /// `database.startup_timeout_ms`), sweeps calls orphaned by a previous run of this node, and
    /// binds the HTTP listener.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let store = open_store(&settings).await?;
        let swept = sweep_orphans(&store, &settings).await?;
        spawn_registered_expiry(store.clone(), settings.calls.registered_expiry_secs);
        if !swept.is_empty() {
            tracing::warn!(
                count = swept.len(),
                "swept calls left active by a dead process to interrupted"
            );
        }
        let addr = settings.bind_addr()?;
        let loopback_only = addr.ip().is_loopback()
            && settings
                .media
                .audiosocket_bind
                .parse::<std::net::SocketAddr>()
                .map_or(true, |a| a.ip().is_loopback());
        if loopback_only {
            ensure_local_tenant(&store).await?;
        }
        let listener = TcpListener::bind(addr).map_err(|source| StartError::Io {
            context: format!("cannot listen on {addr}"),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Io {
                context: "cannot read bound address".into(),
                source,
            })?
            .port();
        let metrics = Arc::new(Metrics::default());
        let stt = SttProviders::new(
            build_stt_provider(&settings, &metrics).await?,
            other_stt_providers(&settings),
        );
        let registry = CallRegistry::default().start();
        let persist_arbiter = Arbiter::new();
        let mut deps = CallDeps::new(
            &settings.stt,
            &settings.calls,
            &settings.data_dir,
            store.clone(),
            stt,
            CallRegistry::roster(&registry),
            persist_arbiter.handle(),
        );
        deps.metrics = metrics.calls.clone();
        deps.events = crate::call::events::EventBus::new(
            settings.api.event_feed_capacity,
            settings.api.max_event_subscribers_per_token,
        );
        let calls = Arc::new(deps);
        let state = web::Data::new(AppState {
            store,
            node_id: settings.node_id.clone(),
            readiness_timeout_ms: settings.database.readiness_timeout_ms,
            calls,
            registry,
            admin_token: settings.api.admin_token.clone(),
            metrics,
            metrics_token: settings.api.metrics_token.clone(),
            limiter: crate::call::limits::CallLimiter::new(
                settings.media.max_calls,
                settings.media.max_calls_per_tenant,
            ),
            media: settings.media.clone(),
            public_base_url: settings.webhooks.public_base_url.clone(),
            loopback_only,
            handshakes: Arc::new(HandshakeSlots::new(settings.ingress.max_pending_handshakes)),
            egress: crate::egress::EgressPolicy::from_settings(&settings.egress),
            draining: Arc::new(AtomicBool::new(false)),
        });
        let audiosocket_port = match settings.media.audiosocket_bind.as_str() {
            "" => None,
            bind => {
                let listener = AudioSocketListener::bind(bind, &settings.media.audiosocket_allow)
                    .map_err(|source| StartError::Io {
                    context: format!("cannot listen for AudioSocket on {bind}"),
                    source,
                })?;
                let port = listener
                    .local_addr()
                    .map_err(|source| StartError::Io {
                        context: "cannot read the AudioSocket address".into(),
                        source,
                    })?
                    .port();
                listener
                    .run(state.clone())
                    .map_err(|source| StartError::Io {
                        context: "cannot start the AudioSocket listener".into(),
                        source,
                    })?;
                tracing::info!(%bind, port, "AudioSocket listening");
                Some(port)
            }
        };
        let postcall = start_postcall(&settings, &state.store, state.metrics.postcall.clone())?;
        let shared = state.clone();
        let inbound = web::Data::new(crate::webhooks::Inbound {
            settings: settings.webhooks.clone(),
            body_timeout: Duration::from_millis(settings.ingress.body_timeout_ms),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(inbound.clone())
                .service(health::healthz)
                .service(health::readyz)
                .service(health::dashboard)
                .service(metrics::scrape)
                .service(voice::voice_ws)
                .service(carriers::vonage_ws)
                .service(carriers::twilio_ws)
                .service(carriers::audiofork_ws)
                .configure(crate::webhooks::configure)
                .service(api::list_calls)
                .service(api::register_call)
                .service(api::events)
                .service(api::calls_by_external)
                .service(api::get_call)
                .service(api::transcript)
                .service(api::hangup)
                .service(api::list_jobs)
                .service(api::call_deliveries)
                .service(api::resend_delivery)
        })
        .disable_signals()
        // Events (finals) leave at once; every accepted socket is counted with the option as
        // read back from it (see crate::net).
        .tcp_nodelay(true)
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                crate::net::observe(crate::net::SocketKind::Http, tcp.nodelay().unwrap_or(false));
            }
        })
        // A client that closed its socket is gone: an event stream's slot frees at once
        // instead of at the next failed write.
        .h1_allow_half_closed(false)
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .client_request_timeout(Duration::from_millis(settings.ingress.request_timeout_ms))
        .client_disconnect_timeout(Duration::from_millis(
            settings.ingress.disconnect_timeout_ms,
        ))
        .keep_alive(Duration::from_secs(settings.ingress.keep_alive_secs))
        .max_connections(settings.ingress.max_connections_per_worker)
        .max_connection_rate(settings.ingress.max_connection_rate_per_worker);
        if settings.http_workers > 0 {
            server = server.workers(settings.http_workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Io {
                context: format!("cannot serve on {addr}"),
                source,
            })?
            .run();
        tracing::info!(%addr, port, database = %state.store.redacted_url(), node_id = %settings.node_id, "callengine listening");
        let drain_timeout = Duration::from_secs(settings.calls.drain_timeout_secs);
        Ok(Self {
            port,
            audiosocket_port,
            server,
            state,
            persist_arbiter,
            drain_timeout,
            postcall,
        })
    }

    /// The bound port (useful when binding port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The AudioSocket listener's port, when one is configured.
    pub fn audiosocket_port(&self) -> Option<u16> {
        self.audiosocket_port
    }

    /// Shared state (the store, the draining flag).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that stops this application.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            server: self.server.handle(),
            postcall: self.postcall.clone(),
            draining: self.state.draining.clone(),
            registry: self.state.registry.clone(),
            drain_timeout: self.drain_timeout,
        }
    }

    /// Serves until stopped through a [`ShutdownHandle`], then stops the persisters' arbiter.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.persist_arbiter.stop();
        result
    }
}

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
async fn ensure_local_tenant(store: &Store) -> Result<(), StartError> {
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
) -> Result<Option<crate::postcall::PostcallHandle>, StartError> {
    let p = &settings.postcall;
    if p.workers == 0 && p.webhook_workers == 0 {
        return Ok(None);
    }
    crate::postcall::Pipeline::start(
        store.clone(),
        p.clone(),
        settings.data_dir.clone(),
        settings.stt.whisper.model_dir.clone(),
        settings.node_id.clone(),
        metrics,
        crate::egress::EgressPolicy::from_settings(&settings.egress),
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

async fn build_stt_provider(
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
fn other_stt_providers(settings: &Settings) -> Vec<Arc<dyn SttProvider>> {
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

fn spawn_registered_expiry(store: Store, expiry_secs: u64) {
    if expiry_secs == 0 {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            if let Err(err) = expire_registered(&store, expiry_secs).await {
                tracing::warn!(error = %err, "cannot expire registered calls");
            }
        }
    });
}

async fn sweep_orphans(store: &Store, settings: &Settings) -> Result<Vec<uuid::Uuid>, StoreError> {
    expire_registered(store, settings.calls.registered_expiry_secs).await?;
    let stale = settings.calls.stale_call_after_secs;
    let stale_before =
        (stale > 0).then(|| chrono::Utc::now() - chrono::Duration::seconds(stale as i64));
    store.sweep_orphaned_calls(stale_before).await
}
