//! The HTTP surface of a real application on port 0: health, readiness, and readiness following
//! the database when a TCP proxy cuts it off and restores it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use callengine::{Application, Settings};
use common::{http_get, with_host, Backend, CutProxy, TestDb};

/// Settings for an app on a free loopback port with the given database.
fn settings(database_url: &str, data_dir: &std::path::Path) -> Settings {
    let env = [
        ("CALLENGINE_BIND", "127.0.0.1:0".to_string()),
        ("CALLENGINE_DATA_DIR", data_dir.display().to_string()),
        ("CALLENGINE_HTTP_WORKERS", "1".to_string()),
        ("CALLENGINE_STT__PROVIDER", "scripted".to_string()),
        ("CALLENGINE_NODE_ID", "http-test".to_string()),
        ("CALLENGINE_DATABASE__URL", database_url.to_string()),
        (
            "CALLENGINE_DATABASE__READINESS_TIMEOUT_MS",
            "1000".to_string(),
        ),
        (
            "CALLENGINE_DATABASE__CONNECT_TIMEOUT_MS",
            "1000".to_string(),
        ),
        (
            "CALLENGINE_DATABASE__ACQUIRE_TIMEOUT_MS",
            "1000".to_string(),
        ),
    ];
    Settings::load_from(None, env.map(|(k, v)| (k.to_string(), v))).unwrap()
}

async fn wait_for_status(port: u16, path: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(port, path).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {status} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn health_and_readiness_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let app = Application::build(settings(&url, dir.path()))
        .await
        .unwrap();
    let (port, shutdown) = (app.port(), app.shutdown_handle());
    let server = actix_web::rt::spawn(app.run_until_stopped());

    let (status, body) = http_get(port, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"status\":\"ok\"") && body.contains("http-test"),
        "{body}"
    );
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"sqlite\""), "{body}");
    let (status, _) = http_get(port, "/no-such-page").await;
    assert_eq!(status, 404);

    // Draining: not ready any more, still alive, until the server stops.
    shutdown.begin_drain();
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    shutdown.shutdown().await;
    server.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "port released"
    );
}

#[actix_web::test]
async fn readiness_follows_postgres_through_a_cut_and_back() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CutProxy::start(common::postgres_socket_addr()).await;
    let through_proxy = with_host(&db.url_string, proxy.addr);
    assert!(
        through_proxy.contains("search_path"),
        "the test's own schema is kept"
    );
    let dir = tempfile::tempdir().unwrap();
    let app = Application::build(settings(&through_proxy, dir.path()))
        .await
        .unwrap();
    let (port, shutdown) = (app.port(), app.shutdown_handle());
    let server = actix_web::rt::spawn(app.run_until_stopped());

    let body = wait_for_status(port, "/readyz", 200).await;
    assert!(body.contains("\"database\":\"postgres\""), "{body}");

    proxy.cut();
    let body = wait_for_status(port, "/readyz", 503).await;
    assert!(body.contains("database_unavailable"), "{body}");
    assert_eq!(
        http_get(port, "/healthz").await.0,
        200,
        "alive while the database is down"
    );

    proxy.restore();
    wait_for_status(port, "/readyz", 200).await;

    shutdown.shutdown().await;
    server.await.unwrap().unwrap();
    db.cleanup().await;
}
