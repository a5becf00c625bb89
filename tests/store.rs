//! The store suite: every test runs on SQLite (a file in a temp dir) and on PostgreSQL (a fresh
//! schema on the server at TEST_DATABASE_URL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use callengine::store::*;
use chrono::{Duration, Utc};
use common::{test_options, Backend, TestDb};
use uuid::Uuid;

/// Generates `sqlite::NAME` and `postgres::NAME` tests that run `NAME(backend)`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )+
        }
    };
}

on_both_backends!(
    migrations_are_idempotent,
    nodes_starting_together_migrate_once,
    create_then_link_by_id,
    live_external_id_links_instead_of_twinning,
    concurrent_sessions_for_one_external_id_share_one_call,
    linking_to_an_ended_call_is_refused,
    appends_are_idempotent_and_read_back_in_order,
    concurrent_appends_from_many_tasks_lose_and_duplicate_nothing,
    completion_writes_everything_in_one_go_and_only_once,
    completion_uses_default_rate_for_unknown_tenant,
    failed_completion_rolls_back_entirely,
    sweep_interrupts_own_and_stale_calls_only,
    bad_input_is_refused_with_clear_errors,
);

fn new_call(tenant: Uuid) -> NewCall {
    NewCall {
        id: None,
        tenant_id: tenant,
        campaign_id: Some(Uuid::new_v4()),
        lead_id: Some(Uuid::new_v4()),
        phone_number: None,
        external_id: None,
        protocol: Protocol::Voice,
        direction: Direction::Inbound,
        started_at: Utc::now(),
        media_metadata: Some(serde_json::json!({"stream_sid": "MZ1", "n": 2})),
    }
}

/// The `n`th turn of a writer: keyed `k{n}`, so a retry of it is recognised.
fn turn(seq: i32, text: &str) -> NewTurn {
    NewTurn {
        key: Some(format!("k{seq}")),
        speaker: "contact".into(),
        speaker_label: None,
        text: text.into(),
        is_final: true,
        start_ms: Some(i64::from(seq) * 1000),
        end_ms: Some(i64::from(seq) * 1000 + 800),
        confidence: Some(0.9),
        source: TurnSource::Realtime,
    }
}

async fn tenant_with_rate(store: &Store, cost_per_second_micros: i64) -> Tenant {
    let new = NewTenant {
        id: None,
        name: format!("tenant-{}", Uuid::new_v4()),
        webhook_url: Some("http://127.0.0.1:9/hook".into()),
        webhook_secret: Some(Secret::new("whsec")),
        cost_per_second_micros,
        stt_provider: None,
        stt_api_key: Some(Secret::new("dg-tenant-key")),
        media_token: Some(Secret::new("media-tenant-token")),
        ..NewTenant::default()
    };
    let tenant = store.insert_tenant(&new).await.unwrap();
    assert_eq!(
        store.get_tenant(tenant.id).await.unwrap().as_ref(),
        Some(&tenant)
    );
    assert_eq!(
        tenant.stt_api_key.as_ref().map(Secret::expose),
        Some("dg-tenant-key")
    );
    let shown = format!("{tenant:?} {}", serde_json::to_string(&tenant).unwrap());
    assert!(
        !shown.contains("dg-tenant-key")
            && !shown.contains("whsec")
            && !shown.contains("media-tenant-token"),
        "secrets never printed: {shown}"
    );
    tenant
}

fn completion(ended_at: chrono::DateTime<Utc>) -> CallCompletion {
    CallCompletion {
        status: CallStatus::Completed,
        ended_at,
        end_reason: "caller_hangup".into(),
        pending_partial: None,
        dtmf: None,
        recording_url: None,
    }
}

async fn migrations_are_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    assert_eq!(db.store.migrate().await.unwrap(), Vec::<String>::new());
    db.store.ping().await.unwrap();
    db.cleanup().await;
}

async fn nodes_starting_together_migrate_once(backend: Backend) {
    let db = TestDb::unmigrated(backend, test_options("n0")).await;
    let mut tasks = Vec::new();
    for node in 0..4 {
        let store = db.second_store(test_options(&format!("n{node}")));
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        applied.push(
            task.await
                .unwrap()
                .expect("every node's migration run succeeds")
                .len(),
        );
    }
    applied.sort();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(
        applied,
        vec![0, 0, 0, migrations],
        "exactly one node applied the migrations"
    );
    db.store.ping().await.unwrap();
    assert_eq!(db.store.migrate().await.unwrap().len(), 0);
    db.cleanup().await;
}

async fn create_then_link_by_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let id = Uuid::new_v4();
    let request = NewCall {
        id: Some(id),
        ..new_call(Uuid::new_v4())
    };
    let (call, outcome) = db.store.create_or_link_call(&request).await.unwrap();
    assert_eq!(outcome, LinkOutcome::Created);
    assert_eq!(
        (call.id, call.status, call.phone_number.as_str()),
        (id, CallStatus::Active, "unknown")
    );
    assert_eq!(call.node_id, "test-node");

    let (again, outcome) = db.store.create_or_link_call(&request).await.unwrap();
    assert_eq!(outcome, LinkOutcome::Linked);
    assert_eq!(again, call, "linking returns the stored row unchanged");
    assert_eq!(db.store.get_call(id).await.unwrap(), Some(call));
    db.cleanup().await;
}

async fn live_external_id_links_instead_of_twinning(backend: Backend) {
    let db = TestDb::new(backend).await;
    let tenant = Uuid::new_v4();
    let request = NewCall {
        external_id: Some("CA123".into()),
        protocol: Protocol::Twilio,
        phone_number: Some("+14155550100".into()),
        ..new_call(tenant)
    };
    let (first, created) = db.store.create_or_link_call(&request).await.unwrap();
    let (second, linked) = db.store.create_or_link_call(&request).await.unwrap();
    assert_eq!(
        (created, linked),
        (LinkOutcome::Created, LinkOutcome::Linked)
    );
    assert_eq!(first.id, second.id);
    assert_eq!(first.phone_number, "+14155550100");

    let other_protocol = NewCall {
        protocol: Protocol::Vonage,
        ..request.clone()
    };
    let (third, outcome) = db.store.create_or_link_call(&other_protocol).await.unwrap();
    assert_eq!(outcome, LinkOutcome::Created);
    assert_ne!(
        third.id, first.id,
        "the same id on another transport is another call"
    );

    // Once ended, the external id is free for a new call (a carrier may reuse it on redial).
    db.store
        .complete_call(first.id, &completion(Utc::now()))
        .await
        .unwrap();
    let (fourth, outcome) = db.store.create_or_link_call(&request).await.unwrap();
    assert_eq!(outcome, LinkOutcome::Created);
    assert_ne!(fourth.id, first.id);

    // Naming a new id for an external id that is live on another call is a conflict.
    let clash = NewCall {
        id: Some(Uuid::new_v4()),
        ..request.clone()
    };
    match db.store.create_or_link_call(&clash).await {
        Err(StoreError::ExternalIdInUse { existing, .. }) => assert_eq!(existing, fourth.id),
        other => panic!("expected ExternalIdInUse, got {other:?}"),
    }
    db.cleanup().await;
}

async fn concurrent_sessions_for_one_external_id_share_one_call(backend: Backend) {
    let db = TestDb::new(backend).await;
    let request = NewCall {
        external_id: Some(format!("vonage-{}", Uuid::new_v4())),
        protocol: Protocol::Vonage,
        ..new_call(Uuid::new_v4())
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, request) = (db.store.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            store.create_or_link_call(&request).await.unwrap()
        }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let (call, outcome) = task.await.unwrap();
        ids.insert(call.id);
        created += usize::from(outcome == LinkOutcome::Created);
    }
    assert_eq!(ids.len(), 1, "all sessions got the same call");
    assert_eq!(created, 1, "exactly one session created it");
    db.cleanup().await;
}

async fn linking_to_an_ended_call_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let request = NewCall {
        id: Some(Uuid::new_v4()),
        ..new_call(Uuid::new_v4())
    };
    let (call, _) = db.store.create_or_link_call(&request).await.unwrap();
    db.store
        .complete_call(call.id, &completion(Utc::now()))
        .await
        .unwrap();
    match db.store.create_or_link_call(&request).await {
        Err(StoreError::CallNotActive { call_id, status }) => {
            assert_eq!((call_id, status), (call.id, CallStatus::Completed))
        }
        other => panic!("expected CallNotActive, got {other:?}"),
    }
    db.cleanup().await;
}

async fn appends_are_idempotent_and_read_back_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (call, _) = db
        .store
        .create_or_link_call(&new_call(Uuid::new_v4()))
        .await
        .unwrap();
    for seq in [1, 2, 3] {
        let outcome = db
            .store
            .append_turn(call.id, &turn(seq, &format!("turn {seq}")))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            AppendOutcome::Inserted { seq },
            "numbered by the database"
        );
    }
    // A retry (same key, even one carrying different text) never duplicates or rewrites a
    // stored turn, and learns the number it got.
    let retry = db
        .store
        .append_turn(call.id, &turn(2, "something else"))
        .await
        .unwrap();
    assert_eq!(retry, AppendOutcome::AlreadyPresent { seq: 2 });
    let batch = db
        .store
        .append_turns(call.id, &[turn(3, "turn 3"), turn(4, "turn 4")])
        .await
        .unwrap();
    assert_eq!(
        batch,
        vec![
            AppendOutcome::AlreadyPresent { seq: 3 },
            AppendOutcome::Inserted { seq: 4 }
        ]
    );
    // The call row's transcript is current after every committed turn, not only at the end.
    let live = db.store.get_call(call.id).await.unwrap().unwrap();
    assert_eq!(
        live.transcript_text.as_deref(),
        Some("contact: turn 1\ncontact: turn 2\ncontact: turn 3\ncontact: turn 4")
    );
    assert_eq!(
        live.transcript_json
            .as_ref()
            .and_then(|j| j.as_array().map(Vec::len)),
        Some(4)
    );

    let stored = db
        .store
        .get_call_with_turns(call.id)
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<i32> = stored.turns.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(stored.turns[1].text, "turn 2");
    assert_eq!(stored.turns[0].confidence, Some(0.9));
    assert_eq!(
        (stored.turns[0].start_ms, stored.turns[0].end_ms),
        (Some(1000), Some(1800))
    );
    assert!(stored.call.last_activity_at >= call.last_activity_at);
    db.cleanup().await;
}

async fn concurrent_appends_from_many_tasks_lose_and_duplicate_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    const TASKS: i32 = 8;
    const PER_TASK: i32 = 25;
    let mut calls = Vec::new();
    for _ in 0..2 {
        calls.push(
            db.store
                .create_or_link_call(&new_call(Uuid::new_v4()))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (store, calls) = (db.store.clone(), calls.clone());
        handles.push(tokio::spawn(async move {
            let mut inserted = 0;
            for i in 0..PER_TASK {
                // Interleaved sequence numbers across tasks; every task also re-sends a turn
                // another task owns, as a retrying persister would.
                let seq = i * TASKS + task + 1;
                let dup = i * TASKS + (task + 1) % TASKS + 1;
                for call in &calls {
                    if matches!(
                        store
                            .append_turn(*call, &turn(seq, &format!("t{seq}")))
                            .await
                            .unwrap(),
                        AppendOutcome::Inserted { .. }
                    ) {
                        inserted += 1;
                    }
                    store
                        .append_turn(*call, &turn(dup, &format!("t{dup}")))
                        .await
                        .unwrap();
                }
            }
            inserted
        }));
    }
    let mut inserted_by_owner = 0;
    for handle in handles {
        inserted_by_owner += handle.await.unwrap();
    }
    let total = (TASKS * PER_TASK) as usize;
    for call in &calls {
        let turns = db.store.list_turns(*call).await.unwrap();
        let seqs: Vec<i32> = turns.iter().map(|t| t.seq).collect();
        assert_eq!(
            seqs,
            (1..=total as i32).collect::<Vec<_>>(),
            "every turn once, in order"
        );
        let mut texts: Vec<String> = turns.iter().map(|t| t.text.clone()).collect();
        texts.sort();
        let mut expected: Vec<String> = (1..=total).map(|n| format!("t{n}")).collect();
        expected.sort();
        assert_eq!(texts, expected, "every keyed turn stored once");
    }
    // Each turn is inserted once: either by its owner or by the task re-sending it first.
    assert!(inserted_by_owner <= total * calls.len());
    db.cleanup().await;
}

async fn completion_writes_everything_in_one_go_and_only_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let tenant = tenant_with_rate(&db.store, 2_500).await;
    let started = Utc::now() - Duration::milliseconds(61_200);
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            started_at: started,
            ..new_call(tenant.id)
        })
        .await
        .unwrap();
    db.store
        .append_turns(call.id, &[turn(1, "hello"), turn(2, "i need a plumber")])
        .await
        .unwrap();
    let ended = started + Duration::milliseconds(61_200);
    let done = CallCompletion {
        pending_partial: Some(NewTurn {
            is_final: false,
            ..turn(3, "in boston tomor")
        }),
        dtmf: Some("12#".into()),
        ..completion(ended)
    };

    let outcome = db.store.complete_call(call.id, &done).await.unwrap();
    let CompletionOutcome::Completed(row) = outcome else {
        panic!("first completion completes")
    };
    assert_eq!(row.status, CallStatus::Completed);
    assert_eq!(
        row.ended_at.map(|t| t.timestamp_micros()),
        Some(ended.timestamp_micros())
    );
    assert_eq!(
        row.duration_seconds,
        Some(62),
        "61.2 s bills 62 started seconds"
    );
    assert_eq!(
        row.cost_micros,
        Some(62 * 2_500),
        "cost is exact integer micro-units"
    );
    assert_eq!(row.end_reason.as_deref(), Some("caller_hangup"));
    assert_eq!(row.dtmf.as_deref(), Some("12#"));
    assert_eq!(
        row.media_metadata,
        Some(serde_json::json!({"stream_sid": "MZ1", "n": 2}))
    );
    assert_eq!(
        row.transcript_text.as_deref(),
        Some("contact: hello\ncontact: i need a plumber\ncontact: in boston tomor")
    );
    let json = row.transcript_json.clone().unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3));
    assert_eq!(
        (json[2]["seq"].as_i64(), json[2]["is_final"].as_bool()),
        (Some(3), Some(false))
    );
    let jobs = db.store.list_jobs_for_call(call.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].kind.as_str(), jobs[0].status.as_str()),
        (JOB_KIND_POSTCALL, JOB_STATUS_QUEUED)
    );
    assert_eq!(jobs[0].payload["call_id"], call.id.to_string());

    // Completing again (a retried finish, a second termination path) changes nothing.
    let later = CallCompletion {
        end_reason: "shutdown".into(),
        ..completion(ended + Duration::seconds(30))
    };
    match db.store.complete_call(call.id, &later).await.unwrap() {
        CompletionOutcome::AlreadyEnded(again) => assert_eq!(again, row),
        other => panic!("expected AlreadyEnded, got {other:?}"),
    }
    assert_eq!(db.store.list_jobs_for_call(call.id).await.unwrap().len(), 1);

    // After the end: retries of stored turns are acknowledged, new turns are refused.
    assert_eq!(
        db.store.append_turn(call.id, &turn(2, "x")).await.unwrap(),
        AppendOutcome::AlreadyPresent { seq: 2 }
    );
    assert!(matches!(
        db.store.append_turn(call.id, &turn(4, "late")).await,
        Err(StoreError::CallNotActive {
            status: CallStatus::Completed,
            ..
        })
    ));
    assert_eq!(db.store.list_turns(call.id).await.unwrap().len(), 3);
    db.cleanup().await;
}

async fn completion_uses_default_rate_for_unknown_tenant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let started = Utc::now() - Duration::seconds(10);
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            started_at: started,
            ..new_call(Uuid::new_v4())
        })
        .await
        .unwrap();
    let failed = CallCompletion {
        status: CallStatus::Failed,
        end_reason: "stt_failed".into(),
        ..completion(started + Duration::seconds(10))
    };
    let row = db
        .store
        .complete_call(call.id, &failed)
        .await
        .unwrap()
        .call()
        .clone();
    assert_eq!(row.status, CallStatus::Failed);
    assert_eq!(row.duration_seconds, Some(10));
    assert_eq!(
        row.cost_micros,
        Some(10 * 1_000),
        "default rate is $0.001/s"
    );
    assert_eq!(row.transcript_text.as_deref(), Some(""));
    db.cleanup().await;
}

async fn failed_completion_rolls_back_entirely(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A rate so large that the cost overflows: the error happens after the pending partial was
    // written and the call row touched, inside the transaction.
    let tenant = tenant_with_rate(&db.store, i64::MAX / 2).await;
    let started = Utc::now() - Duration::seconds(30);
    let (call, _) = db
        .store
        .create_or_link_call(&NewCall {
            started_at: started,
            ..new_call(tenant.id)
        })
        .await
        .unwrap();
    db.store
        .append_turn(call.id, &turn(1, "hello"))
        .await
        .unwrap();
    let done = CallCompletion {
        pending_partial: Some(turn(2, "partial")),
        ..completion(Utc::now())
    };
    let err = db.store.complete_call(call.id, &done).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");

    let after = db
        .store
        .get_call_with_turns(call.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.call.status, CallStatus::Active, "status unchanged");
    assert_eq!(after.call.ended_at, None);
    assert_eq!(after.turns.len(), 1, "the pending partial was rolled back");
    assert!(
        db.store
            .list_jobs_for_call(call.id)
            .await
            .unwrap()
            .is_empty(),
        "no job queued"
    );
    db.cleanup().await;
}

async fn sweep_interrupts_own_and_stale_calls_only(backend: Backend) {
    let db = TestDb::with_options(backend, test_options("node-a")).await;
    let node_b = db.second_store(test_options("node-b"));

    // node-a died mid-call: its call has two turns, the last written at `last_activity_at`.
    let (orphan, _) = db
        .store
        .create_or_link_call(&NewCall {
            started_at: Utc::now() - Duration::seconds(20),
            ..new_call(Uuid::new_v4())
        })
        .await
        .unwrap();
    db.store
        .append_turns(orphan.id, &[turn(1, "one"), turn(2, "two")])
        .await
        .unwrap();
    let last_activity = db
        .store
        .get_call(orphan.id)
        .await
        .unwrap()
        .unwrap()
        .last_activity_at;
    // node-b is alive with a fresh call, and has one silent for ten hours.
    let (fresh, _) = node_b
        .create_or_link_call(&new_call(Uuid::new_v4()))
        .await
        .unwrap();
    let (stale, _) = node_b
        .create_or_link_call(&NewCall {
            started_at: Utc::now() - Duration::hours(10),
            ..new_call(Uuid::new_v4())
        })
        .await
        .unwrap();
    let finished = db
        .store
        .create_or_link_call(&new_call(Uuid::new_v4()))
        .await
        .unwrap()
        .0;
    db.store
        .complete_call(finished.id, &completion(Utc::now()))
        .await
        .unwrap();

    let swept: BTreeSet<Uuid> = db
        .store
        .sweep_orphaned_calls(Some(Utc::now() - Duration::hours(1)))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(swept, BTreeSet::from([orphan.id, stale.id]));

    let row = db.store.get_call(orphan.id).await.unwrap().unwrap();
    assert_eq!(row.status, CallStatus::Interrupted);
    assert_eq!(row.ended_at, Some(last_activity), "ended at last activity");
    assert_eq!(row.end_reason.as_deref(), Some("node_restarted"));
    assert_eq!(
        row.transcript_text.as_deref(),
        Some("contact: one\ncontact: two")
    );
    assert_eq!(
        db.store.list_jobs_for_call(orphan.id).await.unwrap().len(),
        1
    );
    let stale_row = db.store.get_call(stale.id).await.unwrap().unwrap();
    assert_eq!(
        (stale_row.status, stale_row.end_reason.as_deref()),
        (CallStatus::Interrupted, Some("stale_call"))
    );
    assert_eq!(
        db.store.get_call(fresh.id).await.unwrap().unwrap().status,
        CallStatus::Active
    );
    assert_eq!(
        db.store
            .get_call(finished.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        CallStatus::Completed
    );

    // A second sweep finds nothing more to do.
    assert!(db
        .store
        .sweep_orphaned_calls(None)
        .await
        .unwrap()
        .is_empty());
    db.cleanup().await;
}

async fn bad_input_is_refused_with_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let missing = Uuid::new_v4();
    assert!(matches!(
        db.store.append_turn(missing, &turn(1, "x")).await,
        Err(StoreError::CallNotFound(id)) if id == missing
    ));
    assert!(matches!(
        db.store
            .complete_call(missing, &completion(Utc::now()))
            .await,
        Err(StoreError::CallNotFound(_))
    ));
    assert_eq!(db.store.get_call_with_turns(missing).await.unwrap(), None);

    let (call, _) = db
        .store
        .create_or_link_call(&new_call(Uuid::new_v4()))
        .await
        .unwrap();
    let err = db
        .store
        .append_turn(
            call.id,
            &NewTurn {
                key: Some(String::new()),
                ..turn(1, "x")
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("turn key must be"), "{err}");
    let err = db
        .store
        .append_turn(
            call.id,
            &NewTurn {
                confidence: Some(f64::NAN),
                ..turn(1, "x")
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("confidence"), "{err}");
    let interrupted = CallCompletion {
        status: CallStatus::Interrupted,
        ..completion(Utc::now())
    };
    assert!(matches!(
        db.store.complete_call(call.id, &interrupted).await,
        Err(StoreError::InvalidInput(_))
    ));
    let long = NewCall {
        external_id: Some("x".repeat(300)),
        ..new_call(Uuid::new_v4())
    };
    assert!(matches!(
        db.store.create_or_link_call(&long).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(
        db.store.list_turns(call.id).await.unwrap().is_empty(),
        "nothing was written"
    );
    db.cleanup().await;
}

#[test]
fn unknown_scheme_is_an_error_and_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("calls.db");
    for url in [
        format!("mysql://{}", target.display()),
        target.display().to_string(),
    ] {
        assert!(DatabaseUrl::parse(&url).is_err(), "{url} must be refused");
    }
    let missing_dir = dir.path().join("no/such/dir/calls.db");
    let url = DatabaseUrl::parse(&format!("sqlite://{}", missing_dir.display())).unwrap();
    let err = Store::connect(&url, test_options("x"))
        .err()
        .expect("missing directory is refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_is_a_clear_transient_error() {
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/nowhere",
        common::closed_port()
    );
    let store = Store::connect(&DatabaseUrl::parse(&url).unwrap(), test_options("x")).unwrap();
    let ping = store.ping().await.unwrap_err();
    assert!(
        matches!(
            ping,
            StoreError::Unavailable {
                backend: "postgres",
                ..
            }
        ),
        "{ping}"
    );
    assert!(ping.is_transient());
    let migrate = store.migrate().await.unwrap_err();
    assert!(
        matches!(migrate, StoreError::Unavailable { .. }),
        "{migrate}"
    );
    for err in [ping.to_string(), migrate.to_string()] {
        assert!(!err.contains("hunter2"), "password leaked: {err}");
    }
    assert!(store.redacted_url().contains("postgres:***@"));
}
