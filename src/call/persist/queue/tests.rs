//! The persister's retry and drain rules on a fake clock and made-up store answers.

use super::*;
use chrono::Utc;

fn turn(text: &str) -> NewTurn {
    NewTurn::sample(text)
}

fn completion(reason: &str) -> CallCompletion {
    CallCompletion {
        status: CallStatus::Completed,
        ended_at: Utc::now(),
        end_reason: reason.into(),
        pending_partial: Some(NewTurn {
            is_final: false,
            ..turn("and th")
        }),
        dtmf: None,
        recording_url: None,
    }
}

fn inserted(from: i32, count: usize) -> Vec<AppendOutcome> {
    (0..count as i32)
        .map(|i| AppendOutcome::Inserted { seq: from + i })
        .collect()
}

fn texts(write: &Step) -> Vec<String> {
    match write {
        Step::Write(Write::Turns(turns)) => turns.iter().map(|t| t.text.clone()).collect(),
        other => panic!("expected turns, got {other:?}"),
    }
}

#[test]
fn turns_are_written_in_order_one_batch_at_a_time() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(1000, Uuid::nil());
    for i in 0..70 {
        q.push(turn(&format!("t{i}")), t0).unwrap();
    }
    let first = q.next(t0);
    assert_eq!(texts(&first).len(), BATCH);
    assert_eq!(texts(&first)[0], "t0");
    // One write at a time: nothing more while the batch is in flight.
    assert!(matches!(q.next(t0), Step::Idle));
    let committed = q.written(&inserted(1, BATCH), t0 + Duration::from_millis(40));
    assert_eq!(committed.turns.len(), BATCH);
    assert_eq!(committed.turns[0].0, 1);
    assert_eq!(committed.lag, Duration::from_millis(40));
    assert_eq!(committed.unsent, 6);
    assert_eq!(
        texts(&q.next(t0)),
        vec!["t64", "t65", "t66", "t67", "t68", "t69"]
    );
}

#[test]
fn every_turn_gets_its_own_idempotency_key_and_a_retry_resends_the_same_keys() {
    let t0 = Instant::now();
    let stream = Uuid::new_v4();
    let mut q = WriteQueue::new(10, stream);
    q.push(turn("a"), t0).unwrap();
    q.push(turn("b"), t0).unwrap();
    let keys = |step: &Step| match step {
        Step::Write(Write::Turns(turns)) => turns
            .iter()
            .map(|t| t.key.clone().unwrap())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let first = keys(&q.next(t0));
    assert_eq!(
        first,
        vec![
            format!("{}:1", stream.simple()),
            format!("{}:2", stream.simple())
        ]
    );
    let Failure::Retry { delay, .. } = q.failed(false, 0.5, t0) else {
        panic!("a transient error is retried")
    };
    assert_eq!(keys(&q.next(t0 + delay)), first);
}

#[test]
fn a_transient_failure_waits_with_growing_capped_backoff_and_keeps_the_turns() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(10, Uuid::nil());
    q.push(turn("a"), t0).unwrap();
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..9 {
        assert!(matches!(q.next(now), Step::Write(_)));
        let Failure::Retry { delay, unsent } = q.failed(false, 0.5, now) else {
            panic!("retried")
        };
        assert_eq!(unsent, 1);
        // Not before the delay: the persister is told how long to wait.
        match q.next(now + delay / 2) {
            Step::Wait(left) => assert_eq!(left, delay - delay / 2),
            other => panic!("{other:?}"),
        }
        delays.push(delay);
        now += delay;
    }
    // 100 ms doubling, capped at 5 s (jitter unit 0.5 means no jitter).
    assert_eq!(delays[0], Duration::from_millis(100));
    assert_eq!(delays[1], Duration::from_millis(200));
    assert_eq!(*delays.last().unwrap(), Duration::from_secs(5));
    assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    // A success resets the backoff.
    assert!(matches!(q.next(now), Step::Write(_)));
    q.written(&inserted(1, 1), now);
    q.push(turn("b"), now).unwrap();
    q.next(now);
    assert_eq!(
        q.failed(false, 0.5, now),
        Failure::Retry {
            delay: Duration::from_millis(100),
            unsent: 1
        }
    );
}

#[test]
fn jitter_stays_within_its_band() {
    let t0 = Instant::now();
    for unit in [0.0, 0.999] {
        let mut q = WriteQueue::new(10, Uuid::nil());
        q.push(turn("a"), t0).unwrap();
        q.next(t0);
        let Failure::Retry { delay, .. } = q.failed(false, unit, t0) else {
            panic!()
        };
        assert!(delay >= Duration::from_millis(80) && delay <= Duration::from_millis(120));
    }
}

#[test]
fn a_permanent_failure_drops_only_the_batch_in_flight() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(1000, Uuid::nil());
    for i in 0..BATCH + 2 {
        q.push(turn(&format!("t{i}")), t0).unwrap();
    }
    q.next(t0);
    assert_eq!(q.failed(true, 0.5, t0), Failure::Dropped(BATCH));
    assert_eq!(q.dropped(), BATCH as u64);
    assert_eq!(
        texts(&q.next(t0)),
        vec![format!("t{BATCH}"), format!("t{}", BATCH + 1)]
    );
}

#[test]
fn the_unsent_limit_drops_the_excess_and_counts_it() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(2, Uuid::nil());
    q.push(turn("a"), t0).unwrap();
    q.push(turn("b"), t0).unwrap();
    assert_eq!(q.push(turn("c"), t0), Err(Refused::Full));
    assert_eq!((q.unsent(), q.dropped()), (2, 1));
}

#[test]
fn the_completion_waits_for_the_queue_to_drain_and_is_written_once() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(10, Uuid::nil());
    q.push(turn("a"), t0).unwrap();
    assert!(q.finish(completion("caller_hangup")));
    assert!(!q.finish(completion("shutdown")), "the first request wins");
    // A turn arriving after the request still goes before the completion.
    q.push(turn("b"), t0).unwrap();
    assert_eq!(texts(&q.next(t0)), vec!["a", "b"]);
    q.written(&inserted(1, 2), t0);
    match q.next(t0) {
        Step::Write(Write::Complete(c)) => {
            assert_eq!(c.end_reason, "caller_hangup");
            // The pending partial is keyed by this writer when the request arrives (after
            // "a", before "b"): unique, so a retried completion cannot store it twice.
            assert_eq!(
                c.pending_partial.unwrap().key.unwrap(),
                format!("{}:2", Uuid::nil().simple())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(q.next(t0), Step::Idle));
    // A turn arriving while the completion is being written would land after the end: it is
    // refused and counted, not queued and forgotten.
    assert_eq!(q.push(turn("too late"), t0), Err(Refused::Completed));
    assert_eq!(q.dropped(), 1);
    q.completed();
    assert!(matches!(q.next(t0), Step::Idle));
    assert_eq!(q.push(turn("late"), t0), Err(Refused::Completed));
    assert!(!q.abandon(Utc::now()));
}

#[test]
fn a_completion_that_fails_transiently_is_retried_and_one_that_cannot_succeed_ends_the_queue() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(10, Uuid::nil());
    q.finish(completion("idle_timeout"));
    assert!(matches!(q.next(t0), Step::Write(Write::Complete(_))));
    let Failure::Retry { delay, .. } = q.failed(false, 0.5, t0) else {
        panic!()
    };
    assert!(matches!(
        q.next(t0 + delay),
        Step::Write(Write::Complete(_))
    ));
    assert_eq!(q.failed(true, 0.5, t0 + delay), Failure::CompletionFailed);
    assert!(q.is_completed());
    assert!(matches!(q.next(t0 + delay * 4), Step::Idle));
}

#[test]
fn an_abandoned_queue_writes_its_turns_then_completes_as_lost() {
    let t0 = Instant::now();
    let mut q = WriteQueue::new(10, Uuid::nil());
    q.push(turn("a"), t0).unwrap();
    assert!(q.abandon(Utc::now()));
    assert_eq!(texts(&q.next(t0)), vec!["a"]);
    q.written(&inserted(1, 1), t0);
    match q.next(t0) {
        Step::Write(Write::Complete(c)) => assert_eq!(c.end_reason, "call_actor_lost"),
        other => panic!("{other:?}"),
    }
    // The call's own request, already made, is kept over the backstop's.
    let mut q = WriteQueue::new(10, Uuid::nil());
    q.finish(completion("operator_hangup"));
    assert!(q.abandon(Utc::now()));
    match q.next(t0) {
        Step::Write(Write::Complete(c)) => assert_eq!(c.end_reason, "operator_hangup"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_errors_split_into_permanent_and_retryable() {
    assert!(is_permanent(&StoreError::CallNotFound(Uuid::nil())));
    assert!(is_permanent(&StoreError::InvalidInput("x".into())));
    assert!(!is_permanent(&StoreError::Unavailable {
        backend: "postgres",
        message: "connection refused".into()
    }));
}
