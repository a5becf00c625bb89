//! The application: storage, start-up checks and the HTTP server, shared by `main` and the tests.
//!
//! `Application::build` does everything that can fail at start-up (configuration, database,
//! migrations, the orphan sweep, binding the port) and reports it as a [`StartError`];
//! `run_until_stopped` then serves until a [`ShutdownHandle`] stops it. Signals belong to `main`
//! (the framework's own signal handling is disabled), so shutdown order stays ours.

mod startup;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;

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
    cancel: CancellationToken,
    /// How long the post-call workers get to finish at exit.
    join_timeout: Duration,
}

/// Stops a running application: marks the node draining, finishes every call (close 1001, final
/// flush) within the drain deadline, then stops the HTTP server gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    /// The process's one cancellation token: the post-call workers and the background loops
    /// hold children of it.
    cancel: CancellationToken,
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
        // Post-call workers stop claiming (the job in hand finishes; `run_until_stopped` waits
        // for it) and the background loops end.
        self.cancel.cancel();
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
        let cancel = CancellationToken::new();
        spawn_registered_expiry(
            store.clone(),
            settings.calls.registered_expiry_secs,
            cancel.child_token(),
        );
        if !swept.is_empty() {
            tracing::warn!(
                count = swept.len(),
                "swept calls left active by a dead process to interrupted"
            );
        }
        let addr = settings.bind;
        let loopback_only = addr.ip().is_loopback()
            && settings
                .media
                .audiosocket_bind
                .is_none_or(|a| a.ip().is_loopback());
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
        let persist_arbiter = Arbiter::new();
        let state = shared_state(&settings, store, loopback_only, &persist_arbiter).await?;
        let audiosocket_port = start_audiosocket(&settings, &state)?;
        let postcall = start_postcall(
            &settings,
            &state.store,
            state.metrics.postcall.clone(),
            cancel.child_token(),
        )?;
        let server = http_server(&settings, &state, listener, addr)?;
        tracing::info!(%addr, port, database = %state.store.redacted_url(), node_id = %settings.node_id, "callengine listening");
        let drain_timeout = Duration::from_secs(settings.calls.drain_timeout_secs);
        Ok(Self {
            cancel,
            join_timeout: Duration::from_secs(settings.shutdown_timeout_secs),
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
            cancel: self.cancel.clone(),
            draining: self.state.draining.clone(),
            registry: self.state.registry.clone(),
            drain_timeout: self.drain_timeout,
        }
    }

    /// Serves until stopped through a [`ShutdownHandle`], then waits for the post-call workers
    /// to finish the job in hand (at most `shutdown_timeout_secs`) and stops the persisters'
    /// arbiter.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.cancel.cancel();
        if let Some(postcall) = &self.postcall {
            postcall.stop_and_join(self.join_timeout).await;
        }
        self.persist_arbiter.stop();
        result
    }
}

/// Everything the handlers share: metrics, the STT providers, the registry and the call
/// dependencies, limits, the egress policy.
async fn shared_state(
    settings: &Settings,
    store: Store,
    loopback_only: bool,
    persist_arbiter: &Arbiter,
) -> Result<web::Data<AppState>, StartError> {
    let metrics = Arc::new(Metrics::default());
    let stt = SttProviders::new(
        build_stt_provider(settings, &metrics).await?,
        other_stt_providers(settings),
    );
    let registry = CallRegistry::default().start();
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
    Ok(web::Data::new(AppState {
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
    }))
}

/// The AudioSocket listener, when `media.audiosocket_bind` names one; its port.
fn start_audiosocket(
    settings: &Settings,
    state: &web::Data<AppState>,
) -> Result<Option<u16>, StartError> {
    Ok(match settings.media.audiosocket_bind {
        None => None,
        Some(bind) => {
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
    })
}

/// The HTTP server on `listener`: every route, `TCP_NODELAY`, the ingress limits, signals
/// left to `main`.
fn http_server(
    settings: &Settings,
    state: &web::Data<AppState>,
    listener: TcpListener,
    addr: std::net::SocketAddr,
) -> Result<Server, StartError> {
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
    Ok(server
        .listen(listener)
        .map_err(|source| StartError::Io {
            context: format!("cannot serve on {addr}"),
            source,
        })?
        .run())
}

use startup::{
    build_stt_provider, ensure_local_tenant, other_stt_providers, spawn_registered_expiry,
    sweep_orphans,
};
pub use startup::{migrate_with_retry, open_store, start_postcall, store_options};
