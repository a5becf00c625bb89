//! Durable storage behind one API, on SQLite (embedded default) or PostgreSQL.
//!
//! The backend is chosen at runtime from the database URL. Queries are written once against
//! [`schema`] and compiled for each backend by [`with_conn!`], the only place where the two
//! backends are told apart; the portable column types live in [`sql_types`].

mod call_reads;
mod calls;
mod deliveries;
mod jobs;
mod migrate;
pub mod model;
mod rows;
pub mod schema;
pub mod sql_types;
mod tenants;
mod turns;
mod webhooks;

pub use calls::{POSTCALL_FAILED, POSTCALL_PENDING, POSTCALL_PROCESSED, POSTCALL_WAITING};
pub use deliveries::{Delivery, DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING};
pub use jobs::{JobResult, PostcallUpdate, JOB_STATUS_RUNNING};
pub use turns::materialise_transcript;
pub use webhooks::{
    RecordingOutcome, RecordingUpdate, StoredWebhookTurn, WebhookTurn, WEBHOOK_NODE,
};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

pub use model::*;

/// SQLite connection driven through diesel-async (blocking work runs on tokio's blocking pool).
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Errors from the store. User-facing text never contains credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL's scheme is not one callengine speaks.
    #[error(
        "unsupported database URL scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedScheme { scheme: String },
    /// The URL is malformed.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached or a connection could not be had in time.
    #[error("database unavailable ({backend}): {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// Migrations failed.
    #[error("migration failed ({backend}): {message}")]
    Migration {
        backend: &'static str,
        message: String,
    },
    /// No call with this id.
    #[error("call {0} not found")]
    CallNotFound(uuid::Uuid),
    /// The call has ended; it takes no new turns.
    #[error("call {call_id} is {status}, not active")]
    CallNotActive {
        call_id: uuid::Uuid,
        status: CallStatus,
    },
    /// Another live call already holds this external id.
    #[error("external id {external_id:?} ({protocol}) is live on call {existing}")]
    ExternalIdInUse {
        external_id: String,
        protocol: Protocol,
        existing: uuid::Uuid,
    },
    /// The call named cannot be used by this tenant: it has ended, or it belongs to another
    /// tenant (the two are not told apart, so no foreign id or state leaks).
    #[error("the call named does not exist for this tenant or has ended")]
    CallUnavailable,
    /// The request itself is invalid (e.g. sequence number below 1).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored value could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

impl StoreError {
    /// True when no retry of the same write can succeed: the call is gone, ended or another
    /// tenant's, the input is invalid, or a stored value is corrupt. The persister drops such a
    /// batch instead of retrying it; everything else (connectivity above all) is retried.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::CallNotFound(_)
                | Self::CallNotActive { .. }
                | Self::InvalidInput(_)
                | Self::ExternalIdInUse { .. }
                | Self::CallUnavailable
                | Self::Corrupt(_)
        )
    }

    /// True when retrying later may succeed (connectivity, pool exhaustion, lock timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Database(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::ClosedConnection
                        // diesel-async's name for a PostgreSQL socket that went away
                        // mid-query ("connection closed"): the pool drops that connection and
                        // the next attempt gets a fresh one.
                        | diesel::result::DatabaseErrorKind::UnableToSendCommand
                        | diesel::result::DatabaseErrorKind::SerializationFailure
                ) || info.message().contains("database is locked")
            }
            _ => false,
        }
    }
}

/// How a store error reads over HTTP: the caller's mistakes by name, a database that cannot
/// answer now as 503 (retry), anything else as a logged 500 without its cause.
impl From<StoreError> for crate::http_error::ApiError {
    fn from(err: StoreError) -> Self {
        use crate::http_error::ApiError;
        match err {
            StoreError::InvalidInput(message) => ApiError::bad_request(message),
            StoreError::CallNotFound(_) => ApiError::not_found("no such call"),
            StoreError::ExternalIdInUse { .. }
            | StoreError::CallUnavailable
            | StoreError::CallNotActive { .. } => ApiError::conflict(err.to_string()),
            err if err.is_transient() => {
                tracing::warn!(error = %err, "database unavailable for a request");
                ApiError::unavailable("database unavailable").retry_after(1)
            }
            err => ApiError::internal("database error", err),
        }
    }
}

impl From<UnknownValue> for StoreError {
    fn from(err: UnknownValue) -> Self {
        Self::Corrupt(err.to_string())
    }
}

/// A parsed database URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file.
    Sqlite { path: PathBuf },
    /// A PostgreSQL server.
    Postgres { url: Secret },
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    /// Anything else is an error; nothing is created for an unknown scheme.
    ///
    /// ```
    /// use callengine::store::DatabaseUrl;
    ///
    /// let url = DatabaseUrl::parse("postgres://app:secret@db:5432/calls").unwrap();
    /// assert_eq!(url.backend(), "postgres");
    /// assert_eq!(url.to_string(), "postgres://app:***@db:5432/calls");
    /// assert!(DatabaseUrl::parse("mysql://db/calls").is_err());
    /// assert!(DatabaseUrl::parse("calls.db").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(StoreError::InvalidUrl(
                "no scheme: use sqlite://PATH or postgres://USER@HOST/DB".into(),
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() || path == ":memory:" {
                    return Err(StoreError::InvalidUrl(
                        "sqlite URL needs a file path (in-memory databases are not shared by a pool)"
                            .into(),
                    ));
                }
                Ok(Self::Sqlite {
                    path: PathBuf::from(path),
                })
            }
            "postgres" | "postgresql" => Ok(Self::Postgres {
                url: Secret::new(url),
            }),
            other => Err(StoreError::UnsupportedScheme {
                scheme: other.to_string(),
            }),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DatabaseUrl {
    /// Shows the URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            Self::Postgres { url } => f.write_str(&redact_password(url.expose())),
        }
    }
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, tail) = rest
        .split_once('/')
        .map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let query_has_password = tail.is_some_and(|t| t.to_ascii_lowercase().contains("password="));
    match tail {
        Some(_) if query_has_password => format!("{scheme}://{authority}/***"),
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// Pool and behaviour options for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub pool_size: u32,
    pub connect_timeout: Duration,
    pub acquire_timeout: Duration,
    pub busy_timeout: Duration,
    /// Rate for tenants without their own.
    pub default_cost_per_second_micros: i64,
    /// Attempts a post-call job gets.
    pub postcall_max_attempts: i32,
    /// How long a call's post-call job waits for a carrier recording that is expected.
    pub recording_wait: Duration,
    /// Written on every call this store creates.
    pub node_id: String,
    /// Seals tenant secrets written and opens those read. `None`: tenants with secrets can
    /// be neither written nor read (the application always sets one).
    pub node_key: Option<crate::crypto::NodeKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool_size: 0,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            default_cost_per_second_micros: 1_000,
            postcall_max_attempts: 8,
            recording_wait: Duration::from_secs(300),
            node_id: "local".into(),
            node_key: None,
        }
    }
}

enum Pools {
    Sqlite(Pool<SqliteConn>),
    Postgres(Pool<AsyncPgConnection>),
}

/// The store: a connection pool for one backend plus the call-lifecycle operations.
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    url: DatabaseUrl,
    pools: Pools,
    options: StoreOptions,
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever backend the store uses.
/// The body is compiled once per backend, so it must only use SQL both understand.
macro_rules! with_conn {
    ($store:expr, $conn:ident => $body:expr) => {
        match &$store.inner.pools {
            $crate::store::Pools::Sqlite(pool) => {
                let mut pooled = $store.checkout(pool).await?;
                let $conn: &mut $crate::store::SqliteConn = &mut pooled;
                $body
            }
            $crate::store::Pools::Postgres(pool) => {
                let mut pooled = $store.checkout(pool).await?;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

impl Store {
    /// Builds the pool for `url`. Connections open lazily; use [`Store::ping`] or
    /// [`Store::migrate`] to find out whether the database is reachable.
    pub fn connect(url: &DatabaseUrl, options: StoreOptions) -> Result<Self, StoreError> {
        let pools = match url {
            DatabaseUrl::Sqlite { path } => {
                check_sqlite_parent(path)?;
                let busy = options.busy_timeout;
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(move |url| {
                    let url = url.to_string();
                    Box::pin(async move {
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.batch_execute(&sqlite_pragmas(busy))
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(
                    path.to_string_lossy(),
                    config,
                );
                Pools::Sqlite(build_pool(manager, &options, 4)?)
            }
            DatabaseUrl::Postgres { url: secret } => {
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                config.recycling_method = RecyclingMethod::Fast;
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                    secret.expose(),
                    config,
                );
                Pools::Postgres(build_pool(manager, &options, 16)?)
            }
        };
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                url: url.clone(),
                pools,
                options,
            }),
        })
    }

    /// The backend in use: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.inner.url.backend()
    }

    /// The database URL with any password redacted.
    pub fn redacted_url(&self) -> String {
        self.inner.url.to_string()
    }

    /// The options this store was built with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Runs a trivial query: Ok when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, conn => {
            diesel::sql_query("SELECT 1").execute(conn).await?;
            Ok(())
        })
    }

    /// Applies pending migrations (PostgreSQL: under an advisory lock, so nodes may start
    /// together). Returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        migrate::run(&self.inner.url, &self.inner.options).await
    }

    async fn checkout<C>(&self, pool: &Pool<C>) -> Result<Object<C>, StoreError>
    where
        C: diesel_async::pooled_connection::PoolableConnection + Send + 'static,
        AsyncDieselConnectionManager<C>: deadpool::managed::Manager<
            Type = C,
            Error = diesel_async::pooled_connection::PoolError,
        >,
    {
        pool.get().await.map_err(|err| StoreError::Unavailable {
            backend: self.backend(),
            message: describe_pool_error(err),
        })
    }
}

fn describe_pool_error(err: PoolError) -> String {
    match err {
        PoolError::Timeout(kind) => format!("timed out waiting for a connection ({kind:?})"),
        PoolError::Backend(err) => err.to_string(),
        PoolError::Closed => "pool closed".into(),
        PoolError::NoRuntimeSpecified => "no runtime for pool timeouts".into(),
        PoolError::PostCreateHook(err) => err.to_string(),
    }
}

fn build_pool<C>(
    manager: AsyncDieselConnectionManager<C>,
    options: &StoreOptions,
    default_size: u32,
) -> Result<Pool<C>, StoreError>
where
    C: diesel_async::pooled_connection::PoolableConnection + Send + 'static,
    AsyncDieselConnectionManager<C>:
        deadpool::managed::Manager<Type = C, Error = diesel_async::pooled_connection::PoolError>,
{
    let size = if options.pool_size == 0 {
        default_size
    } else {
        options.pool_size
    };
    Pool::builder(manager)
        .max_size(size as usize)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(options.acquire_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|err| StoreError::InvalidUrl(format!("cannot build pool: {err}")))
}

/// PRAGMAs set on every SQLite connection. `busy_timeout` first: switching to WAL needs a lock.
fn sqlite_pragmas(busy_timeout: Duration) -> String {
    format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON;",
        busy_timeout.as_millis()
    )
}

fn check_sqlite_parent(path: &std::path::Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(StoreError::Unavailable {
            backend: "sqlite",
            message: format!("directory {} does not exist", dir.display()),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
