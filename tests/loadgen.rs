//! `callengine loadgen` against a real engine: concurrent calls over real WebSockets streaming
//! espeak-ng speech paced in real time; the report is checked against the database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use callengine::store::CallStatus;
use common::voice::{silence, speech_pcm, TestApp};
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
