//! The real `callengine` binary: version, the zero-configuration default, migrations, and clear
//! start-up errors for bad configuration or an unreachable database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{closed_port, http_get, test_options, Backend, TestDb};

/// The binary with a clean environment: no inherited callengine settings.
fn callengine(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callengine"));
    cmd.current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info");
    for (name, _) in std::env::vars() {
        if name.starts_with("CALLENGINE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Waits for a process to exit, killing it (and failing) after `limit`.
fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "process did not exit in time; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_limit(child, Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn prints_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(callengine(dir.path()).arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("callengine {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_configuration_runs_sqlite_and_local_whisper_on_8080() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:8080").is_err(),
        "port 8080 is taken; this test checks the documented default address"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = callengine(dir.path())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first start downloads Whisper tiny.en into ./data/models and loads it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect("127.0.0.1:8080").is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("serve exited with {status}: {}", text(&out.stderr));
        }
        assert!(
            Instant::now() < deadline,
            "serve did not listen on 127.0.0.1:8080"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = http_get(8080, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(8080, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sqlite"), "{body}");
    assert!(
        dir.path().join("data/callengine.db").is_file(),
        "database created in ./data"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = wait_with_limit(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "SIGTERM is a clean exit: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("shutdown requested"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_database_scheme_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(callengine(dir.path())
        .arg("serve")
        .env("DATABASE_URL", "mysql://root:hunter2@db/calls"));
    assert_eq!(out.status.code(), Some(2), "configuration errors exit 2");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("database.url") && stderr.contains("mysql"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file or directory created"
    );
}

#[test]
fn bad_config_file_value_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callengine.toml");
    std::fs::write(&file, "[database]\npool_size = \"lots\"\n").unwrap();
    let out = run(callengine(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("migrate"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("database.pool_size"), "{stderr}");
}

#[test]
fn config_file_chooses_the_data_directory_for_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callengine.toml");
    std::fs::write(
        &file,
        format!("data_dir = \"{}\"\n", dir.path().join("state").display()),
    )
    .unwrap();
    let out = run(callengine(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("migrate"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("{} migration(s) applied", migrations())),
        "{}",
        text(&out.stdout)
    );
    assert!(dir.path().join("state/callengine.db").is_file());
    let again = run(callengine(dir.path())
        .env("CALLENGINE_CONFIG", &file)
        .arg("migrate"));
    assert!(
        text(&again.stdout).contains("0 migration(s) applied"),
        "{}",
        text(&again.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_postgres_migrations_once() {
    let db = TestDb::unmigrated(Backend::Postgres, test_options("cli")).await;
    let dir = tempfile::tempdir().unwrap();
    let first = run(callengine(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", &db.url_string));
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains(&format!("{} migration(s) applied", migrations())),
        "{}",
        text(&first.stdout)
    );
    let second = run(callengine(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", &db.url_string));
    assert!(
        text(&second.stdout).contains("0 migration(s) applied"),
        "{}",
        text(&second.stdout)
    );
    db.store.ping().await.unwrap();
    db.cleanup().await;
}

#[test]
fn unreachable_database_at_start_is_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/calls",
        closed_port()
    );
    let out = run(callengine(dir.path())
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("CALLENGINE_BIND", "127.0.0.1:0")
        .env("CALLENGINE_DATABASE__STARTUP_TIMEOUT_MS", "600"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("database unavailable (postgres)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not reachable yet"),
        "start-up retried first: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Migrations shipped (the same number for both backends).
fn migrations() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_create_migrates_stores_the_tenant_and_prints_its_id() {
    let db = TestDb::unmigrated(Backend::Postgres, test_options("cli")).await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(callengine(dir.path())
        .args(["tenant", "create", "--name", "acme", "--media-open"])
        .args([
            "--max-concurrent-calls",
            "3000",
            "--api-token",
            "acme-api-0123456789",
        ])
        .env("DATABASE_URL", &db.url_string));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id: uuid::Uuid = text(&out.stdout).trim().parse().unwrap();
    let tenant = db.store.get_tenant(id).await.unwrap().unwrap();
    assert_eq!(tenant.name, "acme");
    assert!(tenant.media_open);
    assert!(tenant.media_token_sha256.is_none());
    assert_eq!(tenant.max_concurrent_calls, Some(3000));
    let by_token = db
        .store
        .tenant_by_api_token("acme-api-0123456789")
        .await
        .unwrap();
    assert_eq!(by_token.map(|t| t.id), Some(id));
    // The token never shows in what the command prints.
    assert!(!text(&out.stdout).contains("acme-api") && !text(&out.stderr).contains("acme-api"));
    // A second tenant with the same name is refused with the reason.
    let again = run(callengine(dir.path())
        .args(["tenant", "create", "--name", "acme"])
        .env("DATABASE_URL", &db.url_string));
    assert!(!again.status.success());
    assert!(!text(&again.stderr).is_empty());
    db.cleanup().await;
}
