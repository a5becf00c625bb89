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
    // The reference transcript of the clip `run_loadgen` writes (`call.wav`).
    let refs = tempfile::tempdir().unwrap();
    let tsv = refs.path().join("refs.tsv");
    std::fs::write(
        &tsv,
        "other.wav\tnot this one\ncall.wav\tHello there. See you soon!\n",
    )
    .unwrap();
    let (out, report) = run_loadgen(
        app.port,
        &[
            "--calls",
            "6",
            "--ramp-per-sec",
            "30",
            "--expect-turns",
            "2",
            "--reference",
            tsv.to_str().unwrap(),
        ],
    )
    .await;
    let stdout = succeeded(&out, "");
    assert!(stdout.contains("final latency"), "{stdout}");
    assert!(
        stdout.contains("time to final") && stdout.contains("word errors"),
        "{stdout}"
    );
    // Each final is timed from the end of the speech stretch it heard in the WAV (two
    // stretches, two finals per call).
    assert_eq!(report["time_to_final_ms"]["count"], 12, "{stdout}");
    // Each call's finals are compared with the 5 reference words (the scripted provider says
    // its own lines, so the errors are whatever they are; the count of words is exact).
    assert_eq!(report["word_errors"][1], 30, "{stdout}");
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["word_errors"][1], 5);
    }
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

/// The issue's small load: 50 Vonage calls of 5 s each against the app on port 0, verified
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

/// The built-in mock Deepgram over a real socket: the documented v1 live exchange, the same
/// words for every utterance with times from the stream's start, a refused key, and a cut.
#[tokio::test]
async fn the_mock_deepgram_speaks_the_v1_live_protocol() {
    use callengine::loadgen::mock_deepgram::{MockArgs, MockDeepgram};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let args = MockArgs {
        mock_deepgram: Some("127.0.0.1:0".into()),
        mock_deepgram_key: Some("k1".into()),
        ..MockArgs::default()
    };
    let mock = MockDeepgram::start(args.config(1).unwrap().unwrap()).unwrap();
    let url = format!(
        "ws://{}/v1/listen?encoding=linear16&sample_rate=16000&channels=1&interim_results=true&endpointing=300",
        mock.addr()
    );
    let open = |key: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Token {key}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    assert!(open("wrong").await.is_err(), "a wrong key is refused");
    let (mut ws, _) = open("k1").await.unwrap();
    // Two answers: 200 ms of silence, speech, silence, speech, then Finalize mid-speech.
    let mut audio = silence(200);
    audio.extend(common::voice::tone().repeat(5));
    audio.extend(silence(500));
    audio.extend(common::voice::tone().repeat(4));
    for frame in audio.chunks(640) {
        ws.send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
    }
    ws.send(Message::Text(r#"{"type":"KeepAlive"}"#.into()))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"type":"Finalize"}"#.into()))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"type":"CloseStream"}"#.into()))
        .await
        .unwrap();
    let mut finals = Vec::new();
    let mut interims = 0;
    let mut metadata = false;
    let mut close = None;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                match (v["type"].as_str().unwrap(), v["is_final"].as_bool()) {
                    ("Results", Some(true)) => finals.push((
                        v["channel"]["alternatives"][0]["transcript"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        (v["start"].as_f64().unwrap() * 1000.0).round() as i64,
                        v["speech_final"].as_bool().unwrap(),
                    )),
                    ("Results", _) => interims += 1,
                    ("Metadata", _) => metadata = true,
                    _ => {}
                }
            }
            Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    }
    assert_eq!(
        finals,
        vec![
            ("Yes.".to_string(), 200, true),
            ("Yes.".to_string(), 1200, false)
        ]
    );
    assert!(interims >= 2, "{interims}");
    assert!(metadata);
    assert_eq!(close, Some(1000));
    let summary = mock.summary();
    assert_eq!(
        (summary.streams, summary.rejected, summary.finals_sent),
        (1, 1, 2)
    );
    assert_eq!(
        (summary.keepalives, summary.finalizes, summary.close_streams),
        (1, 1, 1)
    );

    // Every stream cut at 100 ms of audio: the connection just goes, no close frame.
    let cutting = MockArgs {
        mock_deepgram: Some("127.0.0.1:0".into()),
        mock_drop_rate: 1.0,
        mock_drop_max_ms: 100,
        ..MockArgs::default()
    };
    let mock = MockDeepgram::start(cutting.config(1).unwrap().unwrap()).unwrap();
    let url = format!("ws://{}/v1/listen", mock.addr());
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", "Token any".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for frame in silence(400).chunks(640) {
        if ws
            .send(Message::Binary(frame.to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut closed_cleanly = false;
    while let Some(Ok(message)) = ws.next().await {
        closed_cleanly |= matches!(message, Message::Close(_));
    }
    assert!(!closed_cleanly, "a cut sends no close frame");
    assert_eq!(mock.summary().streams_dropped, 1);
    // Bad options are refused with a clear reason.
    let bad = MockArgs {
        mock_deepgram: Some("nowhere".into()),
        ..MockArgs::default()
    };
    assert!(bad
        .config(1)
        .is_err_and(|e| e.to_string().contains("--mock-deepgram")));
}

/// The issue-14 soak in small: calls ending every way (normal, API hang-up, TCP drop, early
/// close) against the engine's real Deepgram client talking to the load generator's mock,
/// which cuts half of its streams so the STT actor reconnects and replays. Every turn a client
/// was told about must be in the database exactly once — per the generator's own check and
/// per the store read directly.
#[actix_web::test]
async fn a_chaos_run_with_stt_drops_stores_every_told_turn_exactly_once() {
    let mock_port = common::closed_port();
    let mock_url = format!("ws://127.0.0.1:{mock_port}");
    let app = TestApp::start(
        Backend::Postgres,
        &[
            ("CALLENGINE_STT__PROVIDER", "deepgram"),
            ("CALLENGINE_STT__DEEPGRAM__BASE_URL", mock_url.as_str()),
            ("CALLENGINE_STT__DEEPGRAM__API_KEY", "chaos-key"),
            ("CALLENGINE_STT__RESTART_MAX", "10"),
        ],
    )
    .await;
    let mock_addr = format!("127.0.0.1:{mock_port}");
    let (out, report) = run_loadgen(
        app.port,
        &[
            "--calls",
            "12",
            "--ramp-per-sec",
            "30",
            "--tail-silence-ms",
            "800",
            "--quiet-ms",
            "1000",
            "--chaos",
            "--seed",
            "14",
            "--mock-deepgram",
            &mock_addr,
            "--mock-deepgram-key",
            "chaos-key",
            "--mock-drop-rate",
            "0.5",
            "--mock-drop-max-ms",
            "800",
            "--api-token",
            TOKEN,
        ],
    )
    .await;
    let stdout = succeeded(&out, "chaos");
    eprintln!("{stdout}");
    assert!(stdout.contains("exactly once: 12 calls"), "{stdout}");
    let integrity = &report["integrity"];
    assert_eq!(integrity["calls_checked"], 12, "{stdout}");
    assert!(integrity["told_turns"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(integrity["missing"], 0, "{stdout}");
    assert_eq!(integrity["duplicated"], 0, "{stdout}");
    assert_eq!(integrity["calls_with_gaps"], 0, "{stdout}");
    assert_eq!(report["verified_ok"], 12, "{stdout}");
    assert_eq!(report["seed"], 14);
    let paths = report["end_paths"].as_object().unwrap();
    assert!(paths.len() >= 3, "{paths:?}");
    let mock = &report["mock_deepgram"];
    assert!(mock["streams_dropped"].as_u64().unwrap() > 0, "{mock}");
    assert!(
        mock["streams"].as_u64().unwrap() > 12,
        "the engine reconnected: {mock}"
    );

    // The store itself: each told (seq, text) once among the call's realtime rows.
    for result in report["results"].as_array().unwrap() {
        let external = result["external_id"].as_str().unwrap();
        let calls = app.store().calls_by_external_id(external).await.unwrap();
        let told: Vec<(i64, &str)> = result["final_seqs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(result["finals"].as_array().unwrap())
            .map(|(s, t)| (s.as_i64().unwrap(), t.as_str().unwrap()))
            .collect();
        if told.is_empty() {
            continue;
        }
        assert_eq!(calls.len(), 1, "{external}");
        let turns = app.store().list_turns(calls[0].id).await.unwrap();
        for (seq, text) in told {
            let rows = turns
                .iter()
                .filter(|t| i64::from(t.seq) == seq && t.text == text)
                .count();
            assert_eq!(rows, 1, "{external} turn {seq} {text:?}");
        }
    }
    app.stop().await;
}

/// The forwarding section of a run with the mock: every call matched to its stream, frames
/// timed, values that are real lags (finite, not negative), and all the audio delivered (no
/// cuts on this run). No timing thresholds: those are benchmarks, not tests.
fn assert_forwarding_measured(report: &serde_json::Value, stdout: &str, calls: u64) {
    let f = &report["forwarding"];
    assert!(f.is_object(), "no forwarding section: {stdout}");
    assert_eq!(f["calls_matched"], calls, "{f}");
    assert_eq!(f["calls_unmatched"], 0, "{f}");
    assert_eq!(f["calls_without_stream"], 0, "{f}");
    let frames = f["frames"].as_u64().unwrap();
    assert!(frames > 0, "{f}");
    assert!(frames <= report["frames_sent"].as_u64().unwrap(), "{f}");
    assert_eq!(f["lag_ms"]["count"], frames, "{f}");
    assert_eq!(
        f["frames_before_send"], 0,
        "the bytes line up with the frames: {f}"
    );
    for section in ["lag_ms", "per_call_p99_ms", "jitter_ms"] {
        for key in ["p50", "p90", "p99", "max"] {
            let value = f[section][key].as_f64().unwrap();
            assert!(value.is_finite() && value >= 0.0, "{section}.{key}: {f}");
        }
    }
    assert_eq!(f["per_call_p99_ms"]["count"], calls, "{f}");
    assert!(f["completeness"].as_f64().unwrap() >= 0.99, "{f}");
    assert!(f["completeness_worst"].as_f64().unwrap() >= 0.99, "{f}");
    assert!(f["audio_secs_sent"].as_f64().unwrap() > 0.0, "{f}");
    for result in report["results"].as_array().unwrap() {
        assert!(
            result["forwarding"]["frames"].as_u64().unwrap() > 0,
            "{result}"
        );
    }
    assert!(stdout.contains("forwarding lag p50"), "{stdout}");
    assert!(stdout.contains("audio delivered"), "{stdout}");
}

/// Issue 15: the load generator times every frame from its send to its arrival at the mock
/// Deepgram, which the engine's real Deepgram client streams to, tagged with the call id —
/// generic-socket calls (call id from the `call` event) and Twilio calls (call id from the
/// event feed's `call.started`, μ-law 8 kHz resampled to 16 kHz by the engine).
#[actix_web::test]
async fn forwarding_lag_is_measured_frame_by_frame_at_the_mock_deepgram() {
    let mock_port = common::closed_port();
    let mock_url = format!("ws://127.0.0.1:{mock_port}");
    let app = TestApp::start(
        Backend::Sqlite,
        &[
            ("CALLENGINE_STT__PROVIDER", "deepgram"),
            ("CALLENGINE_STT__DEEPGRAM__BASE_URL", mock_url.as_str()),
            ("CALLENGINE_STT__DEEPGRAM__API_KEY", "lag-key"),
        ],
    )
    .await;
    let tenant_id = uuid::Uuid::new_v4();
    let id = tenant_id.to_string();
    open_tenant(&app, tenant_id).await;
    let mock_addr = format!("127.0.0.1:{mock_port}");
    let common_args = [
        "--calls",
        "5",
        "--ramp-per-sec",
        "20",
        "--tail-silence-ms",
        "800",
        "--quiet-ms",
        "1000",
        "--mock-deepgram",
        &mock_addr,
        "--api-token",
        TOKEN,
    ];
    for protocol in ["voice", "twilio"] {
        let mut args = common_args.to_vec();
        args.extend(["--protocol", protocol, "--tenant-id", &id]);
        let (out, report) = run_loadgen(app.port, &args).await;
        let stdout = succeeded(&out, protocol);
        eprintln!("{protocol}: {stdout}");
        assert_eq!(report["failed_calls"], 0, "{protocol}: {stdout}");
        assert_eq!(report["mock_deepgram"]["streams_dropped"], 0);
        assert_forwarding_measured(&report, &stdout, 5);
    }
    app.stop().await;
}
