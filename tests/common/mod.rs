//! Shared test support: real databases (an SQLite file in a temp dir, a fresh PostgreSQL schema
//! per test), a raw HTTP/1.1 client over loopback TCP, and a TCP proxy that can cut a database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fake_deepgram;
pub mod voice;

/// `name(Backend)` as two actix tests, `sqlite::name` and `postgres::name` (for binaries that
/// include this module with `#[macro_use]`).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )+
        }
    };
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callengine::store::{DatabaseUrl, Store, StoreOptions};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The PostgreSQL server the tests use. CI exports `TEST_DATABASE_URL`; on a developer machine
/// the local server with trust auth is the default. Tests fail (never skip) when it is down.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A migrated, empty database that belongs to one test.
pub struct TestDb {
    pub store: Store,
    pub url: DatabaseUrl,
    pub url_string: String,
    dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    /// A fresh database on `backend` with default options and node id `test-node`.
    pub async fn new(backend: Backend) -> Self {
        Self::with_options(backend, test_options("test-node")).await
    }

    /// A fresh database on `backend` with the given options.
    pub async fn with_options(backend: Backend, options: StoreOptions) -> Self {
        let db = Self::unmigrated(backend, options).await;
        let applied = db
            .store
            .migrate()
            .await
            .expect("migrations apply to a fresh database");
        assert!(!applied.is_empty(), "a fresh database gets every migration");
        db
    }

    /// A fresh, empty database with no tables yet.
    pub async fn unmigrated(backend: Backend, options: StoreOptions) -> Self {
        let db = match backend {
            Backend::Sqlite => Self::sqlite_url(),
            Backend::Postgres => Self::postgres_url().await,
        };
        let (url_string, dir, schema) = db;
        let url = DatabaseUrl::parse(&url_string).unwrap();
        let store = Store::connect(&url, options).unwrap();
        Self {
            store,
            url,
            url_string,
            dir,
            schema,
        }
    }

    fn sqlite_url() -> (String, Option<tempfile::TempDir>, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        (url, Some(dir), None)
    }

    async fn postgres_url() -> (String, Option<tempfile::TempDir>, Option<String>) {
        let admin = postgres_admin_url();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AsyncPgConnection::establish(&admin)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "PostgreSQL at TEST_DATABASE_URL ({admin}) is required for these tests: {err}"
                )
            });
        conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-csearch_path%3D{schema}");
        (url, None, Some(schema))
    }

    /// The same database for a second node's app: its own store and options; dropping or
    /// cleaning it up leaves the database to `self`.
    pub fn shared(&self, options: StoreOptions) -> TestDb {
        TestDb {
            store: self.second_store(options),
            url: self.url.clone(),
            url_string: self.url_string.clone(),
            dir: None,
            schema: None,
        }
    }

    /// Another store on the same database, e.g. a second node.
    pub fn second_store(&self, options: StoreOptions) -> Store {
        Store::connect(&self.url, options).unwrap()
    }

    /// Drops the PostgreSQL schema (SQLite's temp dir goes with `self`).
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema {
            let mut conn = AsyncPgConnection::establish(&postgres_admin_url())
                .await
                .unwrap();
            conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap();
        }
        drop(self.dir);
    }
}

/// The node key of every test store and app (32 bytes 0..=31, base64).
pub const TEST_NODE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Store options for tests: short timeouts, the given node id, the test node key.
pub fn test_options(node_id: &str) -> StoreOptions {
    StoreOptions {
        node_id: node_id.into(),
        node_key: Some(callengine::crypto::NodeKey::from_base64(TEST_NODE_KEY).unwrap()),
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
        ..StoreOptions::default()
    }
}

/// Scrapes `/metrics` with the test apps' admin token (`/metrics` needs it once one is set).
pub async fn metrics(port: u16) -> (u16, String) {
    http_request(port, "GET", "/metrics", Some(voice::TOKEN)).await
}

/// Sends one HTTP/1.1 GET over a fresh loopback connection; returns status and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, None).await
}

/// Sends one HTTP/1.1 request with an empty body (and a bearer token if given).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends one HTTP/1.1 POST with `body` and extra headers; returns status and body.
pub async fn http_post(
    port: u16,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A TCP proxy in front of a server (e.g. PostgreSQL) that a test can cut and restore.
/// While cut, it resets every open connection and closes new ones at once.
pub struct CutProxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (flag, tasks) = (enabled.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            enabled,
            open,
        }
    }

    /// Cuts the database off: open connections are dropped, new ones refused.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

/// The socket address of the PostgreSQL server behind `postgres_admin_url()`.
pub fn postgres_socket_addr() -> SocketAddr {
    let url = postgres_admin_url();
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

/// Replaces the host and port of `url` with `addr`.
pub fn with_host(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{tail}")
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The pinned Whisper tiny.en model, fetched once into the shared test cache
/// (`TEST_WHISPER_MODEL_CACHE`, else `~/.cache/callengine/models`).
pub fn whisper_model_dir() -> std::path::PathBuf {
    use callengine::stt::whisper::fetch::{ensure_model, FetchSource};
    let cache = std::env::var_os("TEST_WHISPER_MODEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/callengine/models")
        });
    let pinned = FetchSource {
        hf_base: None,
        ..FetchSource::default()
    };
    ensure_model(&cache, &pinned, &mut |_, _| {}).expect("the pinned model downloads")
}
