//! Turn numbering and exactly-once storage across writers, repeated answers, STT replays.

use std::time::Duration;

use callengine::store::*;
use chrono::Utc;
use uuid::Uuid;

use crate::assert_told_turns_stored_once;
use crate::common::fake_deepgram::{FakeDeepgram, Fault, KEY};
use crate::common::voice::*;
use crate::common::{test_options, Backend, TestDb};

on_both_backends!(
    streams_on_two_nodes_share_one_sequence,
    the_same_answer_twice_is_two_turns,
    a_webhook_turn_racing_media_writers_joins_one_sequence,
    a_replayed_batch_is_found_by_its_key,
    the_call_row_transcript_is_current_after_every_turn,
    an_stt_reconnect_with_replay_and_repeated_words_loses_and_repeats_nothing,
    two_channels_talking_at_once_share_one_sequence,
);

/// A `/ws/voice` query that links to `call_id`.
fn link_query(call_id: Uuid) -> String {
    format!("{}&call_id={call_id}", call_query())
}

fn told(log: &ClientLog) -> Vec<(i64, String)> {
    log.finals.clone()
}

/// Finding 1: a carrier reconnect lands on another node while the first stream is still up.
/// Both nodes' streams write the same call; every turn either client was told about is stored,
/// once, under the number it was told.
async fn streams_on_two_nodes_share_one_sequence(backend: Backend) {
    let node_a = TestApp::start(backend, &[]).await;
    let db_b = node_a.db.shared(test_options("node-b"));
    let node_b = TestApp::start_with_db(db_b, None, &[("CALLENGINE_NODE_ID", "node-b")]).await;
    let mut first = VoiceClient::connect(node_a.port, Uuid::new_v4(), &call_query()).await;
    let call_id = first.wait_started().await;
    let mut second = VoiceClient::connect(node_b.port, Uuid::new_v4(), &link_query(call_id)).await;
    assert_eq!(
        second.wait_started().await,
        call_id,
        "linked to the same call"
    );
    // Interleaved audio: turns of both streams reach the database in mixed order.
    for _ in 0..3 {
        first.send_audio(2 * TURN_MS, &tone()).await;
        second.send_audio(2 * TURN_MS, &tone()).await;
    }
    first.wait_finals(6).await;
    second.wait_finals(6).await;
    second.close(1000).await;
    let second = second.finished().await;
    first.close(1000).await;
    let first = first.finished().await;
    let mut all = told(&first);
    all.extend(told(&second));
    assert!(
        all.len() >= 12,
        "both streams were told their turns: {all:?}"
    );
    let turns = assert_told_turns_stored_once(node_a.store(), call_id, &all).await;
    assert!(turns.len() >= all.len());
    node_b.stop().await;
    node_a.stop().await;
}

/// Finding 2: a caller who answers "Yes." twice has two turns.
async fn the_same_answer_twice_is_two_turns(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("yes.txt");
    std::fs::write(&script, "Yes.\n").unwrap();
    let script = script.display().to_string();
    let app = TestApp::start(
        backend,
        &[("CALLENGINE_STT__SCRIPTED__SCRIPT_FILE", script.as_str())],
    )
    .await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(5 * TURN_MS, &tone()).await;
    client.wait_finals(5).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_eq!(log.finals.len(), 5, "{:?}", log.finals);
    assert!(log.finals.iter().all(|(_, text)| text == "Yes."));
    let turns = assert_told_turns_stored_once(app.store(), call_id, &told(&log)).await;
    assert_eq!(turns.iter().filter(|t| t.text == "Yes.").count(), 5);
    app.stop().await;
}

/// Media writers (two streams' persisters, each retrying its batches) and webhook turns race
/// on one call: one gap-free sequence, every turn once.
async fn a_webhook_turn_racing_media_writers_joins_one_sequence(backend: Backend) {
    const PER_WRITER: usize = 20;
    let db = TestDb::new(backend).await;
    let tenant = db
        .store
        .insert_tenant(&NewTenant {
            name: format!("race-{}", Uuid::new_v4()),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id;
    let conversation = format!("conv_{}", Uuid::new_v4().simple());
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            id: None,
            tenant_id: tenant,
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: Some(conversation.clone()),
            protocol: Protocol::ElevenLabs,
            direction: Direction::Inbound,
            started_at: Utc::now(),
            media_metadata: None,
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..2 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let turn = NewTurn {
                    key: Some(format!("stream{writer}:{n}")),
                    speaker: "contact".into(),
                    speaker_label: None,
                    text: "Yes.".into(),
                    is_final: true,
                    start_ms: Some(n as i64 * 1000),
                    end_ms: Some(n as i64 * 1000 + 500),
                    confidence: None,
                    source: TurnSource::Realtime,
                };
                let first = store.append_turn(call.id, &turn).await.unwrap();
                // The acknowledgement was "lost": the writer retries the same turn.
                let again = store.append_turn(call.id, &turn).await.unwrap();
                assert!(matches!(first, AppendOutcome::Inserted { .. }));
                assert_eq!(again, AppendOutcome::AlreadyPresent { seq: first.seq() });
            }
        }));
    }
    let store = db.store.clone();
    let conversation_for_posts = conversation.clone();
    tasks.push(tokio::spawn(async move {
        let start = Utc::now();
        for n in 0..PER_WRITER {
            let posted = WebhookTurn {
                tenant_id: tenant,
                conversation_id: conversation_for_posts.clone(),
                protocol: Protocol::ElevenLabs,
                speaker: "agent".into(),
                speaker_label: "agent".into(),
                text: format!("question {n}"),
                at: start + chrono::Duration::milliseconds(n as i64 * 10),
            };
            let stored = store.append_webhook_turn(&posted).await.unwrap();
            assert!(stored.created);
            // The platform retries the same post: answered with the same turn.
            let retried = store.append_webhook_turn(&posted).await.unwrap();
            assert_eq!((retried.created, retried.seq), (false, stored.seq));
        }
    }));
    for task in tasks {
        task.await.unwrap();
    }
    let turns = assert_told_turns_stored_once(&db.store, call.id, &[]).await;
    assert_eq!(turns.len(), 3 * PER_WRITER, "every turn once");
    assert_eq!(
        turns.iter().filter(|t| t.text == "Yes.").count(),
        2 * PER_WRITER
    );
    db.cleanup().await;
}

/// A batch whose commit acknowledgement was lost is written again: the keys find the stored
/// turns, nothing is stored twice, and the numbers given the first time are returned.
async fn a_replayed_batch_is_found_by_its_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            id: None,
            tenant_id: Uuid::new_v4(),
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: None,
            protocol: Protocol::Voice,
            direction: Direction::Inbound,
            started_at: Utc::now(),
            media_metadata: None,
        })
        .await
        .unwrap();
    let batch: Vec<NewTurn> = (0..4)
        .map(|n| NewTurn {
            key: Some(format!("w:{n}")),
            speaker: "contact".into(),
            speaker_label: None,
            text: "same words".into(),
            is_final: true,
            start_ms: None,
            end_ms: None,
            confidence: None,
            source: TurnSource::Realtime,
        })
        .collect();
    let first = db.store.append_turns(call.id, &batch[..3]).await.unwrap();
    let replay = db.store.append_turns(call.id, &batch).await.unwrap();
    let seqs = |outcomes: &[AppendOutcome]| outcomes.iter().map(|o| o.seq()).collect::<Vec<_>>();
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    assert_eq!(seqs(&replay), vec![1, 2, 3, 4]);
    assert!(matches!(replay[3], AppendOutcome::Inserted { .. }));
    assert_eq!(db.store.list_turns(call.id).await.unwrap().len(), 4);
    db.cleanup().await;
}

/// Readers of the call row see every committed turn while the call is live.
async fn the_call_row_transcript_is_current_after_every_turn(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(2 * TURN_MS, &tone()).await;
    client.wait_finals(2).await;
    let call = app.store().get_call(call_id).await.unwrap().unwrap();
    assert_eq!(call.status, CallStatus::Active);
    let finals = client.log.lock().unwrap().finals.clone();
    let text = call.transcript_text.unwrap_or_default();
    for (_, final_text) in &finals {
        assert!(
            text.contains(final_text.as_str()),
            "{final_text:?} in {text:?}"
        );
    }
    let json = call.transcript_json.unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(finals.len()));
    client.close(1000).await;
    client.finished().await;
    app.stop().await;
}

/// An STT socket drop mid-call, every turn saying the same words: after the reconnect the
/// replayed audio is recognised by time; nothing is lost, nothing repeated.
async fn an_stt_reconnect_with_replay_and_repeated_words_loses_and_repeats_nothing(
    backend: Backend,
) {
    let fake = FakeDeepgram::start().await;
    fake.faults(&[Fault::DropAfterMs(1_900)]);
    let base = fake.base_url();
    let app = TestApp::start(
        backend,
        &[
            ("CALLENGINE_STT__PROVIDER", "deepgram"),
            ("CALLENGINE_STT__DEEPGRAM__BASE_URL", &base),
            ("CALLENGINE_STT__DEEPGRAM__API_KEY", KEY),
            ("CALLENGINE_CALLS__PARTIAL_PROMOTE_MS", "120000"),
        ],
    )
    .await;
    // Four utterances with the same "words" (the fake names a turn after its sample value).
    let mut pcm = Vec::new();
    for _ in 0..4 {
        for _ in 0..16_000 {
            pcm.extend_from_slice(&100i16.to_le_bytes());
        }
        pcm.extend(std::iter::repeat_n(0u8, 300 * 32));
    }
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_pcm(&pcm).await;
    client.wait_finals(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.close(1000).await;
    let log = client.finished().await;
    assert_eq!(fake.state.lock().unwrap().connections, 2, "one reconnect");
    assert_eq!(log.finals.len(), 4, "{:?}", log.finals);
    assert!(log.finals.iter().all(|(_, t)| t == "turn 1 words"));
    let turns = assert_told_turns_stored_once(app.store(), call_id, &told(&log)).await;
    assert_eq!(turns.iter().filter(|t| t.is_final).count(), 4);
    app.stop().await;
}

/// A stereo audio_fork call where both sides talk at once: two STT streams, two assemblers,
/// their turns interleaved in one gap-free sequence, every turn of each side stored once.
async fn two_channels_talking_at_once_share_one_sequence(backend: Backend) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::start(backend, &[]).await;
    let mut request = format!("ws://127.0.0.1:{}/ws/audiofork", app.port)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "audio.drachtio.org".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let external = format!("fs-{}", Uuid::new_v4());
    let metadata = serde_json::json!({
        "callSid": external, "sampleRate": 16000, "mixType": "stereo",
        "metadata": { "tenant_id": OPEN_TENANT.to_string() }
    });
    ws.send(Message::Text(metadata.to_string().into()))
        .await
        .unwrap();
    // 2 s of stereo audio, both channels busy: 10 scripted turns per side.
    let frame: Vec<u8> = std::iter::repeat_n([0x10u8, 0x27, 0x10, 0x27], 320)
        .flatten()
        .collect();
    for _ in 0..100 {
        ws.send(Message::Binary(frame.clone().into()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);
    let store = app.store();
    let mut call = None;
    for _ in 0..200 {
        call = store
            .calls_by_external_id(&external)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.status.is_terminal());
        if call.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = call.expect("the call ended");
    let turns = assert_told_turns_stored_once(store, call.id, &[]).await;
    for side in ["caller", "callee"] {
        let finals = turns
            .iter()
            .filter(|t| t.speaker == side && t.is_final)
            .count();
        assert_eq!(finals, 10, "{side}: {turns:?}");
    }
    app.stop().await;
}
