//! Faults around the call path: the database cut mid-call (through a TCP proxy the test
//! controls), the server killed with SIGKILL mid-call and restarted, SIGTERM draining live calls
//! of the real binary, and real speech (espeak-ng) segmented by the scripted provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callengine::store::CallStatus;
use common::voice::*;
use common::{closed_port, http_get, test_options, with_host, Backend, CutProxy, TestDb};
use uuid::Uuid;

#[actix_web::test]
async fn database_cut_mid_call_delays_turns_but_loses_none() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CutProxy::start(common::postgres_socket_addr()).await;
    let through_proxy = with_host(&db.url_string, proxy.addr);
    let app = TestApp::start_with_db(
        db,
        Some(through_proxy),
        &[("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000")],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(400, &tone()).await;
    client.wait_finals(2).await;

    proxy.cut();
    client.send_audio(1_000, &tone()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        client.log.lock().unwrap().finals.len(),
        2,
        "no turn is acknowledged while the database cannot commit it"
    );
    proxy.restore();
    client.wait_finals(7).await;
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 7, 1000);
    assert_eq!(assert_durable(app.store(), &log, expect).await, call_id);
    app.stop().await;
}

#[actix_web::test]
async fn real_speech_is_segmented_into_one_turn_per_utterance() {
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__MODE", "energy")],
    )
    .await;
    let mut audio = Vec::new();
    for sentence in [
        "hello, I need a plumber",
        "tomorrow morning, please",
        "thank you, goodbye",
    ] {
        audio.extend(speech_pcm(sentence));
        audio.extend(silence(1_000));
    }
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    client.wait_started().await;
    client.send_pcm(&audio).await;
    client.wait_finals(3).await;
    client.close(1000).await;
    let log = client.finished().await;
    let expect = Expect::completed("caller_hangup", 3, 1000);
    let call_id = assert_durable(app.store(), &log, expect).await;
    let turns = app.store().list_turns(call_id).await.unwrap();
    for pair in turns.windows(2) {
        assert!(
            pair[0].end_ms < pair[1].start_ms,
            "utterances do not overlap: {turns:?}"
        );
    }
    app.stop().await;
}

/// The real binary on a free port with scripted STT; logs go to `dir/server.log`.
fn spawn_server(dir: &Path, database_url: &str, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callengine"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CALLENGINE_") || name == "DATABASE_URL" {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("CALLENGINE_BIND", format!("127.0.0.1:{port}"))
        .env("CALLENGINE_NODE_ID", "kill-test-node")
        .env("CALLENGINE_HTTP_WORKERS", "2")
        .env("CALLENGINE_API__ADMIN_TOKEN", TOKEN)
        .env("CALLENGINE_STT__PROVIDER", "scripted")
        .env("CALLENGINE_STT__SCRIPTED__TURN_MS", TURN_MS.to_string())
        .env("CALLENGINE_STT__SCRIPTED__PARTIALS_PER_TURN", "1")
        .env("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000")
        .env("CALLENGINE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn wait_healthy(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && http_get(port, "/healthz").await.0 == 200
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "server exited during start-up"
        );
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kill_mid_call_then_restart(backend: Backend) {
    let db = TestDb::unmigrated(backend, test_options("observer")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let mut server = spawn_server(dir.path(), &db.url_string, port);
    wait_healthy(port, &mut server).await;

    let mut client = VoiceClient::connect(port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(1_000, &tone()).await;
    client.wait_finals(5).await;
    let acknowledged = client.log.lock().unwrap().finals.clone();
    signal(&server, "-KILL");
    wait_exit(&mut server).await;
    client.reset();

    let before = db.store.get_call(call_id).await.unwrap().unwrap();
    assert_eq!(
        before.status,
        CallStatus::Active,
        "nobody finished the call: the process died"
    );

    let mut restarted = spawn_server(dir.path(), &db.url_string, port);
    wait_healthy(port, &mut restarted).await;
    let call = db.store.get_call(call_id).await.unwrap().unwrap();
    assert_eq!(
        call.status,
        CallStatus::Interrupted,
        "the start-up sweep closed the orphan"
    );
    assert_eq!(call.end_reason.as_deref(), Some("node_restarted"));
    assert_eq!(
        call.ended_at,
        Some(before.last_activity_at),
        "ended at its last activity"
    );
    let stored: Vec<(i64, String)> = db
        .store
        .list_turns(call_id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (i64::from(t.seq), t.text))
        .collect();
    for turn in &acknowledged {
        assert!(
            stored.contains(turn),
            "acknowledged turn {turn:?} lost; stored {stored:?}"
        );
    }
    assert!(call
        .transcript_text
        .is_some_and(|t| t.lines().count() == stored.len()));
    signal(&restarted, "-TERM");
    assert!(wait_exit(&mut restarted).await.success());
    db.cleanup().await;
}

#[actix_web::test]
async fn sqlite_kill_9_mid_call_keeps_acknowledged_turns_and_sweeps_the_call() {
    kill_mid_call_then_restart(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_kill_9_mid_call_keeps_acknowledged_turns_and_sweeps_the_call() {
    kill_mid_call_then_restart(Backend::Postgres).await;
}

#[actix_web::test]
async fn sigterm_closes_live_calls_with_1001_flushes_them_and_exits_cleanly() {
    let db = TestDb::unmigrated(Backend::Sqlite, test_options("observer")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let mut server = spawn_server(dir.path(), &db.url_string, port);
    wait_healthy(port, &mut server).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = VoiceClient::connect(port, Uuid::new_v4(), &call_query()).await;
        client.wait_started().await;
        client.send_audio(700, &tone()).await;
        clients.push(client);
    }
    for client in &clients {
        client.wait_finals(3).await;
    }
    signal(&server, "-TERM");
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.finished().await);
    }
    assert!(
        wait_exit(&mut server).await.success(),
        "clean exit after the drain"
    );
    // JSON logs: each call's lines carry its span (call id, tenant, protocol).
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("server.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for log in &logs {
        let expect = Expect::completed("shutdown", 3, 1001);
        let call_id = assert_durable(&db.store, log, expect).await;
        let turns = db.store.list_turns(call_id).await.unwrap();
        assert_eq!(
            turns.len(),
            4,
            "700 ms = 3 turns and the pending partial of the 4th"
        );
        let finished = lines
            .iter()
            .find(|l| {
                l["message"] == "call finished" && l["span"]["call_id"] == call_id.to_string()
            })
            .unwrap_or_else(|| panic!("a JSON 'call finished' line in the call's span"));
        assert_eq!(finished["span"]["name"], "call");
        assert_eq!(finished["span"]["protocol"], "voice");
        assert!(finished["span"]["tenant_id"].is_string());
    }
    db.cleanup().await;
}
