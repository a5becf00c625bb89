//! A hostile recording or transcript that makes a post-call job panic takes down only that
//! job's attempts (issue 13): the attempt runs as a task of its own, so the panic is a failed
//! attempt — counted, retried on the usual schedule, then `dead` — and the worker goes on to the
//! next job. A job whose last attempt's lease lapses (its worker died mid-attempt) is `dead`
//! rather than claimed again past its attempt cap.

use std::time::Duration;

use callengine::postcall::{Pipeline, PostcallSettings};
use callengine::store::{
    CallCompletion, CallStatus, Direction, Job, JobResult, NewCall, NewTenant, Protocol, Store,
    StoreOptions, JOB_KIND_POSTCALL,
};
use uuid::Uuid;

use crate::common::{test_options, Backend, TestDb};

on_both_backends!(
    a_panicking_job_fails_only_its_own_attempts,
    a_lapsed_lease_on_the_last_attempt_makes_the_job_dead,
);

fn options(max_attempts: i32) -> StoreOptions {
    StoreOptions {
        postcall_max_attempts: max_attempts,
        ..test_options("isolation-node")
    }
}

async fn tenant(store: &Store) -> Uuid {
    store
        .insert_tenant(&NewTenant {
            name: format!("isolation-{}", Uuid::new_v4()),
            ..NewTenant::default()
        })
        .await
        .unwrap()
        .id
}

/// An ended call (no recording, no webhook): its post-call job is queued.
async fn ended_call(store: &Store, tenant_id: Uuid) -> Uuid {
    let (call, _) = store
        .create_or_link_call(&NewCall {
            id: None,
            tenant_id,
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: Some(format!("CA{}", Uuid::new_v4().simple())),
            protocol: Protocol::Twilio,
            direction: Direction::Inbound,
            started_at: chrono::Utc::now() - chrono::Duration::seconds(5),
            media_metadata: None,
        })
        .await
        .unwrap();
    store
        .complete_call(
            call.id,
            &CallCompletion {
                status: CallStatus::Completed,
                ended_at: chrono::Utc::now(),
                end_reason: "caller_hangup".into(),
                pending_partial: None,
                dtmf: None,
                recording_url: None,
            },
        )
        .await
        .unwrap();
    call.id
}

async fn job(store: &Store, call_id: Uuid) -> Job {
    store
        .list_jobs_for_call(call_id)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.kind == JOB_KIND_POSTCALL)
        .unwrap()
}

async fn wait_for_status(store: &Store, call_id: Uuid, status: &str) -> Job {
    for _ in 0..600 {
        let job = job(store, call_id).await;
        if job.status == status {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = job(store, call_id).await;
    panic!("the job of call {call_id} never became {status}: {job:?}");
}

async fn a_panicking_job_fails_only_its_own_attempts(backend: Backend) {
    let db = TestDb::with_options(backend, options(3)).await;
    let store = db.store.clone();
    let tenant_id = tenant(&store).await;
    let hostile = ended_call(&store, tenant_id).await;
    let handle = Pipeline::start(
        store.clone(),
        PostcallSettings {
            workers: 1,
            webhook_workers: 0,
            poll_ms: 20,
            lease_secs: 1,
            retry_base_ms: 10,
            retry_max_ms: 20,
            test_panic_call: Some(hostile),
            ..PostcallSettings::default()
        },
        callengine::postcall::Workplace {
            node: "isolation-node".into(),
            data_dir: tempfile::tempdir().unwrap().keep(),
            model_dir: None,
        },
        Default::default(),
        callengine::egress::EgressPolicy::from_settings(&Default::default()),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    // Every attempt panics: each is counted and retried, and after the third it is dead, with
    // the panic as its error (it would stay `running` forever, renewed by a heartbeat, if the
    // panic had killed the worker).
    let dead = wait_for_status(&store, hostile, "dead").await;
    assert_eq!(dead.attempts, 3, "{dead:?}");
    let error = dead.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("the attempt panicked") && error.contains("test fault"),
        "{error}"
    );
    // The same worker is alive and takes the next job.
    let next = ended_call(&store, tenant_id).await;
    let done = wait_for_status(&store, next, "done").await;
    assert_eq!(done.attempts, 1);
    let call = store.get_call(next).await.unwrap().unwrap();
    assert!(call.summary.is_some(), "the next job ran to the end");
    // No lease left behind: nobody holds the dead job, and it is not claimed again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(job(&store, hostile).await.status, "dead");
    handle.stop();
    db.cleanup().await;
}

async fn a_lapsed_lease_on_the_last_attempt_makes_the_job_dead(backend: Backend) {
    let db = TestDb::with_options(backend, options(2)).await;
    let store = db.store.clone();
    let tenant_id = tenant(&store).await;
    let call_id = ended_call(&store, tenant_id).await;
    let lease = Duration::from_millis(150);
    // Attempt 1: the worker dies mid-attempt (its lease lapses).
    let first = store
        .claim_job(JOB_KIND_POSTCALL, "dies-first", lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.call_id, first.attempts), (Some(call_id), 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Under the cap, a lapsed lease is rescued: attempt 2, the last.
    let second = store
        .claim_job(JOB_KIND_POSTCALL, "dies-second", lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.id, second.attempts), (first.id, 2));
    assert!(
        store
            .claim_job(JOB_KIND_POSTCALL, "other", lease)
            .await
            .unwrap()
            .is_none(),
        "leased: nobody else takes it"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Its worker died too: the job is not run a third time, it is dead.
    assert!(store
        .claim_job(JOB_KIND_POSTCALL, "third", Duration::from_secs(60))
        .await
        .unwrap()
        .is_none());
    let dead = job(&store, call_id).await;
    assert_eq!(
        (dead.status.as_str(), dead.attempts),
        ("dead", 2),
        "{dead:?}"
    );
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("lease"),
        "{dead:?}"
    );
    // A late report from the worker that died changes nothing.
    let late = store
        .finish_job(second.id, "dies-second", &JobResult::Done)
        .await
        .unwrap();
    assert_eq!(late, "not_owned");
    assert_eq!(job(&store, call_id).await.status, "dead");
    db.cleanup().await;
}
