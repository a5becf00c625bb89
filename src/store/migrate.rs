//! Embedded migrations, one folder per backend, applied on a dedicated thread.
//!
//! diesel's migration harness is synchronous. It runs on a thread of its own (never on an actor
//! or HTTP worker thread), with a private tokio runtime driving the PostgreSQL connection.
//! PostgreSQL migrations hold a session advisory lock so that several nodes starting at once
//! apply them exactly once; SQLite migrations run inside one `BEGIN IMMEDIATE` transaction,
//! which serialises concurrent processes through the database lock.

use std::time::Duration;

use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{sqlite_pragmas, DatabaseUrl, StoreError, StoreOptions};

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Key of the PostgreSQL advisory lock held while migrating ("callengine" in ASCII, truncated).
const MIGRATION_LOCK_KEY: i64 = 0x6361_6c6c_656e_6769;

/// Applies pending migrations; returns the versions applied.
pub(super) async fn run(
    url: &DatabaseUrl,
    options: &StoreOptions,
) -> Result<Vec<String>, StoreError> {
    let backend = url.backend();
    let url = url.clone();
    let options = options.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("callengine-migrate".into())
        .spawn(move || {
            let result = match &url {
                DatabaseUrl::Sqlite { path } => migrate_sqlite(&path.to_string_lossy(), &options),
                DatabaseUrl::Postgres { url } => migrate_postgres(url.expose(), &options),
            };
            let _ = tx.send(result);
        })
        .map_err(|err| migration_error(backend, err))?;
    rx.await
        .map_err(|_| migration_error("migrate", "migration thread ended without a result"))?
}

fn migration_error(backend: &'static str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Migration {
        backend,
        message: err.to_string(),
    }
}

fn versions(applied: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    applied.into_iter().map(|v| v.to_string()).collect()
}

fn migrate_sqlite(path: &str, options: &StoreOptions) -> Result<Vec<String>, StoreError> {
    let unavailable = |err: &dyn std::fmt::Display| StoreError::Unavailable {
        backend: "sqlite",
        message: err.to_string(),
    };
    // Switching a new database to WAL needs exclusive access and can answer "database is
    // locked" at once while another process does the same; wait for it like busy_timeout would.
    let started = std::time::Instant::now();
    let mut conn = loop {
        let attempt = SqliteConnection::establish(path)
            .map_err(|err| unavailable(&err))
            .and_then(|mut conn| {
                diesel::connection::SimpleConnection::batch_execute(
                    &mut conn,
                    &sqlite_pragmas(options.busy_timeout),
                )
                .map(|()| conn)
                .map_err(|err| unavailable(&err))
            });
        match attempt {
            Err(err)
                if err.to_string().contains("locked")
                    && started.elapsed() < options.busy_timeout =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    conn.immediate_transaction(|conn| {
        conn.run_pending_migrations(SQLITE_MIGRATIONS)
            .map(versions)
            .map_err(|err| diesel::result::Error::QueryBuilderError(err.to_string().into()))
    })
    .map_err(|err| migration_error("sqlite", err))
}

fn migrate_postgres(url: &str, options: &StoreOptions) -> Result<Vec<String>, StoreError> {
    let unavailable = |message: String| StoreError::Unavailable {
        backend: "postgres",
        message,
    };
    // A multi-threaded runtime keeps driving the connection's background task while this
    // thread blocks inside diesel's synchronous harness.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|err| migration_error("postgres", err))?;
    let connect_timeout = options.connect_timeout;
    let conn = runtime.block_on(async {
        match tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(url)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(unavailable(format!(
                "{err} ({})",
                super::redact_password(url)
            ))),
            Err(_) => Err(unavailable(format!(
                "connect timed out after {} ms",
                connect_timeout.as_millis()
            ))),
        }
    })?;
    let applied = {
        let _entered = runtime.enter();
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        migrate_locked(&mut conn)
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    applied
}

/// Runs the PostgreSQL migrations while holding the advisory lock. The lock is session-scoped:
/// released here, or by the server when the connection drops on error.
fn migrate_locked(
    conn: &mut AsyncConnectionWrapper<AsyncPgConnection>,
) -> Result<Vec<String>, StoreError> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .execute(conn)
        .map_err(|err| migration_error("postgres", err))?;
    let result = conn
        .run_pending_migrations(POSTGRES_MIGRATIONS)
        .map(versions)
        .map_err(|err| migration_error("postgres", err));
    let unlock =
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(conn);
    let applied = result?;
    unlock.map_err(|err| migration_error("postgres", err))?;
    Ok(applied)
}
