//! `callengine loadgen` against a real engine: concurrent calls over real WebSockets (and
//! AudioSocket over TCP) streaming espeak-ng speech paced in real time, in every protocol; the
//! report is checked against the database, and the generator's own verification through the
//! API must agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use callengine::store::{CallStatus, NewTenant};
use common::voice::{silence, speech_pcm, TestApp, TOKEN};
use common::Backend;

fn write_wav(path: &std::path::Path, pcm: &[u8]) {
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    out.extend_from_slice(pcm);
    std::fs::write(path, out).unwrap();
}

/// Stdout of a run that must have succeeded (its output in the failure message).
fn succeeded(out: &std::process::Output, label: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{label}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn run_loadgen(port: u16, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let (wav, report) = (dir.path().join("call.wav"), dir.path().join("report.json"));
    let mut audio = silence(200);
    audio.extend(speech_pcm("hello there"));
    audio.extend(silence(900));
    audio.extend(speech_pcm("see you soon"));
    write_wav(&wav, &audio);
    let mut command = Command::new(env!("CARGO_BIN_EXE_callengine"));
    command
        .env_remove("DATABASE_URL")
        .arg("loadgen")
        .arg("--url")
        .arg(format!("ws://127.0.0.1:{port}"))
        .arg("--wav")
        .arg(&wav)
        .arg("--report")
        .arg(&report)
        .arg("--pid")
        .arg(std::process::id().to_string())
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let json = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (out, json)
}

#[actix_web::test]
async fn concurrent_calls_are_measured_and_match_the_database() {
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__MODE", "energy")],
    )
    .await;
    let (out, report) = run_loadgen(
        app.port,
        &[
            "--calls",
            "6",
            "--ramp-per-sec",
            "30",
            "--expect-turns",
            "2",
        ],
    )
    .await;
    let stdout = succeeded(&out, "");
    assert!(stdout.contains("final latency"), "{stdout}");
    assert_eq!(report["calls"], 6);
    assert_eq!(report["failed_calls"], 0);
    assert_eq!(report["finals"], 12);
    assert_eq!(
        report["final_latency_ms"]["count"], 12,
        "every final has its end time"
    );
    assert_eq!(
        report["send_lag_ms"]["count"], report["frames_sent"],
        "every frame's lag is measured"
    );
    assert!(report["engine"]["rss_mb_max"].as_f64().unwrap() > 1.0);

    // What the generator counted is what the engine stored.
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for result in results {
        let call_id = result["call_id"].as_str().unwrap().parse().unwrap();
        let call = app.store().get_call(call_id).await.unwrap().unwrap();
        assert_eq!(call.status, CallStatus::Completed);
        let turns = app.store().list_turns(call_id).await.unwrap();
        let stored: Vec<&str> = turns.iter().map(|t| t.text.as_str()).collect();
        let acked: Vec<&str> = result["finals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(stored, acked);
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_missing_turn_fails_the_run() {
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__MODE", "energy")],
    )
    .await;
    let (out, report) = run_loadgen(
        app.port,
        &[
            "--calls",
            "2",
            "--expect-turns",
            "3",
            "--final-wait-secs",
            "2",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(report["failed_calls"], 2);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("expected 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    app.stop().await;
}

/// A tenant whose carrier media needs no token.
async fn open_tenant(app: &TestApp, tenant_id: uuid::Uuid) {
    app.store()
        .insert_tenant(&NewTenant {
            id: Some(tenant_id),
            name: format!("load-{tenant_id}"),
            media_open: true,
            ..NewTenant::default()
        })
        .await
        .unwrap();
}

/// Vonage, Twilio, audio_fork and AudioSocket calls from the generator: each protocol's
/// handshake and framing, finals from the event feed with their latency, and every call read
/// back through the API (completed, exactly two turns, in order, the texts the feed showed).
async fn carriers_are_driven_and_verified(backend: Backend) {
    let tenant_id = uuid::Uuid::new_v4();
    let id = tenant_id.to_string();
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_STT__SCRIPTED__MODE", "energy"),
            ("CALLENGINE_MEDIA__AUDIOSOCKET_BIND", "127.0.0.1:0"),
            ("CALLENGINE_MEDIA__AUDIOSOCKET_TENANT_ID", id.as_str()),
        ],
    )
    .await;
    open_tenant(&app, tenant_id).await;
    let audiosocket = format!("127.0.0.1:{}", app.audiosocket_port.unwrap());
    for protocol in ["vonage", "twilio", "audiofork", "audiosocket"] {
        let (out, report) = run_loadgen(
            app.port,
            &[
                "--protocol",
                protocol,
                "--audiosocket-addr",
                &audiosocket,
                "--tenant-id",
                &id,
                "--api-token",
                TOKEN,
                "--calls",
                "2",
                "--ramp-per-sec",
                "20",
                "--expect-turns",
                "2",
            ],
        )
        .await;
        let stdout = succeeded(&out, protocol);
        assert_eq!(report["protocol"], protocol);
        assert_eq!(report["failed_calls"], 0, "{protocol}: {stdout}");
        assert_eq!(report["finals"], 4, "{protocol}: {stdout}");
        assert_eq!(report["final_latency_ms"]["count"], 4, "{protocol}");
        assert_eq!(report["verified_calls"], 2, "{protocol}");
        assert_eq!(report["verified_ok"], 2, "{protocol}");
        assert_eq!(report["feed_lagged"], 0);
        assert!(stdout.contains("verified through the API: 2/2"), "{stdout}");
        for result in report["results"].as_array().unwrap() {
            let external = result["external_id"].as_str().unwrap();
            let calls = app.store().calls_by_external_id(external).await.unwrap();
            assert_eq!(calls.len(), 1, "{protocol} {external}");
            assert_eq!(calls[0].protocol.to_string(), protocol);
            assert_eq!(calls[0].status, CallStatus::Completed);
            assert_eq!(calls[0].tenant_id, tenant_id);
            let turns = app.store().list_turns(calls[0].id).await.unwrap();
            assert_eq!(turns.len(), 2, "{protocol}");
        }
    }
    app.stop().await;
}

#[actix_web::test]
async fn carrier_protocols_are_driven_and_verified_on_sqlite() {
    carriers_are_driven_and_verified(Backend::Sqlite).await;
}

#[actix_web::test]
async fn carrier_protocols_are_driven_and_verified_on_postgres() {
    carriers_are_driven_and_verified(Backend::Postgres).await;
}

#[actix_web::test]
async fn a_soak_keeps_slots_busy_and_reports_rss_over_time() {
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__MODE", "energy")],
    )
    .await;
    // Two slots, six calls one after another in each slot's turn; engine figures from
    // /metrics (no --pid).
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("call.wav");
    let mut audio = silence(100);
    audio.extend(speech_pcm("hello"));
    write_wav(&wav, &audio);
    let report = dir.path().join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_callengine"));
    command
        .env_remove("DATABASE_URL")
        .args(["loadgen", "--url"])
        .arg(format!("ws://127.0.0.1:{}", app.port))
        .arg("--wav")
        .arg(&wav)
        .arg("--report")
        .arg(&report)
        .args(["--calls", "2", "--soak-calls", "6", "--expect-turns", "1"])
        .args(["--tail-silence-ms", "800", "--api-token", TOKEN]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = succeeded(&out, "");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["calls"], 6);
    assert_eq!(report["concurrency"], 2);
    assert_eq!(report["verified_ok"], 6);
    assert_eq!(report["soak"]["calls_started"], 6);
    assert!(
        report["soak"]["rss_mb_baseline"].as_f64().unwrap() > 1.0,
        "{report}"
    );
    assert!(report["engine"]["samples"].as_array().unwrap().len() >= 2);
    assert!(stdout.contains("soak: 6 calls"), "{stdout}");
    app.stop().await;
}

/// The small load: 50 Vonage calls of 5 s each against the app on port 0, verified
/// through the API, with a complete report.
#[actix_web::test]
async fn fifty_vonage_calls_of_five_seconds_pass_verification_with_a_complete_report() {
    let tenant_id = uuid::Uuid::new_v4();
    let id = tenant_id.to_string();
    // One turn per second of audio (the scripted provider's fixed mode).
    let app = TestApp::start(
        Backend::Sqlite,
        &[("CALLENGINE_STT__SCRIPTED__TURN_MS", "1000")],
    )
    .await;
    open_tenant(&app, tenant_id).await;
    let (out, report) = run_loadgen(
        app.port,
        &[
            "--protocol",
            "vonage",
            "--tenant-id",
            &id,
            "--api-token",
            TOKEN,
            "--calls",
            "50",
            "--ramp-per-sec",
            "100",
            "--call-secs",
            "5",
            "--tail-silence-ms",
            "0",
            "--expect-turns",
            "5",
            "--threads",
            "2",
        ],
    )
    .await;
    succeeded(&out, "");
    assert_eq!(report["calls"], 50);
    assert_eq!(report["failed_calls"], 0);
    assert_eq!(report["verified_calls"], 50);
    assert_eq!(report["verified_ok"], 50);
    assert_eq!(report["finals"], 250);
    assert_eq!(report["final_latency_ms"]["count"], 250);
    assert_eq!(report["frames_sent"], 50 * 250);
    assert_eq!(report["send_lag_ms"]["count"], 50 * 250);
    assert_eq!(report["connect_ms"]["count"], 50);
    assert_eq!(report["started_ms"]["count"], 50, "every call.started seen");
    assert_eq!(report["close_codes"]["1000"], 50);
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["final_latency_ms"][key].as_f64().is_some(), "{key}");
    }
    assert!(report["engine"]["samples"].as_array().unwrap().len() >= 5);
    app.stop().await;
}
