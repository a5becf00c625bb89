//! Every way a call can end, on the pure session with a fake clock: no actor, no socket, no
//! database. Each path must give exactly one Close and leave the session done.

use super::*;
use crate::store::{NewTurn, Protocol};

const IDLE: Duration = Duration::from_secs(30);

fn params() -> CallParams {
    CallParams {
        call_id: None,
        tenant_id: Uuid::nil(),
        campaign_id: None,
        lead_id: None,
        phone_number: None,
        external_id: Some("CA1".into()),
        protocol: Protocol::Twilio,
        speakers: vec!["contact".into()],
        metadata: None,
    }
}

/// A session and the fake clock it runs on.
struct Fixture {
    session: CallSession,
    t0: Instant,
    call_id: Uuid,
}

impl Fixture {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            session: CallSession::new(params(), IDLE, t0),
            t0,
            call_id: Uuid::new_v4(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn input(&mut self, input: Input, ms: u64) -> Vec<Effect> {
        let now = self.at(ms);
        self.session.handle_input(input, now);
        std::iter::from_fn(|| self.session.poll_output()).collect()
    }

    /// Claimed and started: the call is live at `t0`.
    fn live(mut self) -> Self {
        let claimed = self.input(Input::Claimed(true), 0);
        assert!(matches!(claimed.as_slice(), [Effect::StartCall]));
        let started = self.input(
            Input::Started(Ok(Started {
                call_id: self.call_id,
                linked: false,
                stt: Ok(()),
            })),
            0,
        );
        assert!(matches!(
            started.as_slice(),
            [
                Effect::Register(_),
                Effect::Send(ClientEvent::Call { .. }),
                Effect::StartChannels(_),
                Effect::Publish(LiveEvent::CallStarted { .. }),
            ]
        ));
        assert_eq!(self.session.phase(), Phase::Live);
        self
    }

    /// 20 ms of audio on channel 0.
    fn audio(&mut self, ms: u64) -> Vec<Effect> {
        self.input(
            Input::Media(MediaEvent::Audio {
                channel: 0,
                pcm: Bytes::from(vec![0u8; 640]),
                source: None,
            }),
            ms,
        )
    }

    /// The finish sequence comes back at `ms` with `result`.
    fn finished(&mut self, result: Box<Result<CompletionOutcome, String>>, ms: u64) -> Vec<Effect> {
        self.input(Input::Finished(result), ms)
    }
}

fn closes(effects: &[Effect]) -> Vec<u16> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Close { code, .. } | Effect::CloseNow { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn run_finish(effects: &[Effect]) -> Option<&EndReason> {
    effects.iter().find_map(|e| match e {
        Effect::RunFinish { reason, .. } => Some(reason),
        _ => None,
    })
}

/// The finish sequence's answer. The session hands it to the shell untouched (the shell logs
/// and counts it), so the tests use the error form, which needs no call row.
fn flushed() -> Box<Result<CompletionOutcome, String>> {
    Box::new(Err("flushed (test)".into()))
}

/// Runs `input` on a live call, then the finish sequence; checks the end and the one Close.
fn ends_with(input: Input, reason: EndReason, code: u16) {
    let mut f = Fixture::new().live();
    f.audio(20);
    let effects = f.input(input, 40);
    assert_eq!(run_finish(&effects), Some(&reason), "{effects:?}");
    assert_eq!(f.session.phase(), Phase::Finishing);
    // Nothing more is forwarded while the streams finalize, and a second end is ignored.
    assert!(f.audio(60).is_empty());
    assert!(f.input(Input::Finish(EndReason::Shutdown), 60).is_empty());
    assert!(f.input(Input::Tick, 60_000).is_empty());
    let done = f.finished(flushed(), 80);
    assert_eq!(closes(&done), vec![code], "{done:?}");
    assert!(matches!(
        done.as_slice(),
        [
            Effect::Publish(LiveEvent::CallEnded { .. }),
            Effect::Completed { .. },
            Effect::Close { .. },
            Effect::Unregister(_),
            Effect::Stop,
        ]
    ));
    match &done[0] {
        Effect::Publish(LiveEvent::CallEnded { reason: r, .. }) => {
            assert_eq!(r, reason.code_name())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.session.phase(), Phase::Done);
    // After the end: no second close, no backstop, nothing forwarded.
    assert!(f
        .input(Input::Stopped("call_actor_stopped"), 100)
        .is_empty());
    assert!(f.finished(Box::new(Err("again".into())), 100).is_empty());
    assert!(f.audio(120).is_empty());
}

#[test]
fn the_caller_hanging_up_ends_the_call_once() {
    ends_with(
        Input::Media(MediaEvent::Closed),
        EndReason::ClientClosed,
        1000,
    );
}

#[test]
fn a_stop_message_ends_the_call() {
    ends_with(Input::Media(MediaEvent::Stop), EndReason::ClientStop, 1000);
}

#[test]
fn a_lost_connection_ends_the_call() {
    ends_with(Input::TransportEnded, EndReason::ConnectionLost, 1000);
    ends_with(
        Input::Media(MediaEvent::Lost("reset".into())),
        EndReason::ConnectionLost,
        1000,
    );
}

#[test]
fn a_protocol_error_ends_the_call_with_its_close_code() {
    ends_with(
        Input::Media(MediaEvent::ProtocolError {
            too_big: true,
            detail: "64 KiB".into(),
        }),
        EndReason::ProtocolError {
            message_too_big: true,
            detail: "64 KiB".into(),
        },
        1009,
    );
    ends_with(
        Input::Media(MediaEvent::ProtocolError {
            too_big: false,
            detail: "bad".into(),
        }),
        EndReason::ProtocolError {
            message_too_big: false,
            detail: "bad".into(),
        },
        1002,
    );
}

#[test]
fn operator_hangup_shutdown_and_stt_failure_end_the_call() {
    ends_with(
        Input::Finish(EndReason::OperatorHangup),
        EndReason::OperatorHangup,
        1000,
    );
    ends_with(
        Input::Finish(EndReason::Shutdown),
        EndReason::Shutdown,
        1001,
    );
    ends_with(
        Input::Finish(EndReason::SttFailed("gave up".into())),
        EndReason::SttFailed("gave up".into()),
        1011,
    );
}

#[test]
fn silence_for_the_idle_time_ends_the_call_and_audio_resets_the_watch() {
    let mut f = Fixture::new().live();
    assert!(f.input(Input::Tick, 29_999).is_empty());
    // Audio at 29.999 s: the deadline moves to 59.999 s.
    assert_eq!(f.audio(29_999).len(), 1);
    assert!(f.input(Input::Tick, 59_998).is_empty());
    let effects = f.input(Input::Tick, 59_999);
    assert_eq!(run_finish(&effects), Some(&EndReason::IdleTimeout));
    let done = f.finished(Box::new(Err("database gone".into())), 60_500);
    assert_eq!(closes(&done), vec![1000]);
    assert!(done
        .iter()
        .any(|e| matches!(e, Effect::Completed { result, .. } if result.is_err())));
}

#[test]
fn the_idle_watch_does_not_run_before_the_call_is_live() {
    let mut f = Fixture::new();
    assert!(f.input(Input::Tick, 120_000).is_empty());
    assert_eq!(f.session.phase(), Phase::Starting);
}

#[test]
fn a_twin_stream_is_refused_without_touching_the_row() {
    let mut f = Fixture::new();
    let effects = f.input(Input::Claimed(false), 0);
    assert!(matches!(
        effects.as_slice(),
        [
            Effect::Send(ClientEvent::Error { .. }),
            Effect::Close { code: 1008, .. },
            Effect::Stop
        ]
    ));
    assert_eq!(f.session.phase(), Phase::Done);
    assert!(f.input(Input::Stopped("call_actor_stopped"), 1).is_empty());
}

#[test]
fn a_call_that_cannot_start_gives_back_its_claim_and_closes_with_the_reason() {
    let cases = [
        (StoreError::CallUnavailable, 1008),
        (StoreError::InvalidInput("bad id".into()), 4000),
        (
            StoreError::Unavailable {
                backend: "sqlite",
                message: "locked".into(),
            },
            1011,
        ),
    ];
    for (err, code) in cases {
        let mut f = Fixture::new();
        f.input(Input::Claimed(true), 0);
        let effects = f.input(Input::Started(Err(err)), 5);
        assert!(matches!(effects.first(), Some(Effect::ReleaseClaim)));
        assert_eq!(closes(&effects), vec![code]);
        assert!(matches!(effects.last(), Some(Effect::Stop)));
        // Nothing was registered, so there is nothing to finish or back-stop.
        assert!(f.input(Input::Stopped("call_actor_lost"), 6).is_empty());
    }
}

#[test]
fn a_call_without_an_stt_provider_starts_and_ends_failed_through_the_finish() {
    let mut f = Fixture::new();
    f.input(Input::Claimed(true), 0);
    let effects = f.input(
        Input::Started(Ok(Started {
            call_id: f.call_id,
            linked: true,
            stt: Err("no provider \"x\"".into()),
        })),
        1,
    );
    assert!(matches!(effects[0], Effect::Register(_)));
    assert!(matches!(
        effects[1],
        Effect::Send(ClientEvent::Call { linked: true, .. })
    ));
    assert!(matches!(
        effects[2],
        Effect::Send(ClientEvent::Error { .. })
    ));
    assert!(matches!(
        run_finish(&effects),
        Some(EndReason::SttFailed(_))
    ));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::StartChannels(_))));
    assert_eq!(
        closes(&f.finished(Box::new(Err("x".into())), 2)),
        vec![1011]
    );
}

#[test]
fn a_stopped_actor_is_backstopped_once_while_live_or_finishing() {
    // Live: the persister completes the row, the client gets 1011 now, the registry forgets.
    let mut f = Fixture::new().live();
    f.input(Input::Media(MediaEvent::Dtmf("5".into())), 10);
    let effects = f.input(Input::Stopped("call_actor_stopped"), 20);
    assert!(matches!(
        effects.as_slice(),
        [
            Effect::Abandon { end_reason: "call_actor_stopped", dtmf: Some(d) },
            Effect::CloseNow { code: 1011, .. },
            Effect::Unregister(_),
        ] if d == "5"
    ));
    assert!(f.input(Input::Stopped("call_actor_lost"), 21).is_empty());

    // Finishing: the backstop still closes once, and the late finish result changes nothing.
    let mut f = Fixture::new().live();
    f.input(Input::Media(MediaEvent::Closed), 10);
    let effects = f.input(Input::Stopped("call_actor_lost"), 20);
    assert_eq!(closes(&effects), vec![1011]);
    assert!(f.finished(flushed(), 30).is_empty());
}

#[test]
fn audio_is_counted_and_forwarded_only_while_live() {
    let mut f = Fixture::new();
    assert!(f.audio(0).is_empty(), "no audio before the row exists");
    let mut f = f.live();
    let effects = f.audio(20);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Forward {
            channel: 0,
            millis: 20,
            ..
        }]
    ));
    f.input(Input::Dropped, 20);
    f.input(Input::Media(MediaEvent::Invalid("odd".into())), 40);
    f.input(Input::Media(MediaEvent::Gap(3)), 40);
    let c = f.session.counters();
    assert_eq!(
        (
            c.frames_in,
            c.frames_invalid,
            c.frames_dropped,
            c.frames_missing
        ),
        (2, 1, 1, 3)
    );
    assert_eq!(c.audio_ms, 20);
}

#[test]
fn audio_far_ahead_of_the_clock_is_flagged() {
    let mut f = Fixture::new().live();
    // 300 frames (6 s of audio) in the first 100 ms of wall time.
    for i in 0..300 {
        f.audio(i / 3);
    }
    assert!(f.session.counters().audio_too_fast);
    let mut g = Fixture::new().live();
    for i in 0..300 {
        g.audio(i * 20);
    }
    assert!(!g.session.counters().audio_too_fast);
}

#[test]
fn dtmf_is_kept_to_its_bound_and_pings_are_answered() {
    let mut f = Fixture::new().live();
    for _ in 0..300 {
        f.input(Input::Media(MediaEvent::Dtmf("1".into())), 5);
    }
    assert_eq!(f.session.dtmf().len(), DTMF_MAX);
    let effects = f.input(Input::Media(MediaEvent::Ping(Bytes::from_static(b"p"))), 6);
    assert!(matches!(effects.as_slice(), [Effect::Pong(_)]));
}

fn turn(text: &str) -> NewTurn {
    NewTurn::sample(text)
}

#[test]
fn committed_turns_become_finals_in_order_and_partials_carry_the_next_number() {
    let mut f = Fixture::new().live();
    let partial = |f: &mut Fixture, finals| {
        let effects = f.input(
            Input::Partial {
                speaker: "contact".into(),
                text: "hel".into(),
                finals,
            },
            10,
        );
        match effects.as_slice() {
            [Effect::Send(ClientEvent::Partial { seq, .. })] => *seq,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(partial(&mut f, 0), 1);
    // One final assembled, not yet acknowledged: the next partial is turn 2.
    assert_eq!(partial(&mut f, 1), 2);
    let effects = f.input(
        Input::Committed {
            turns: vec![
                CommittedTurn {
                    seq: 1,
                    turn: turn("hello"),
                },
                CommittedTurn {
                    seq: 2,
                    turn: turn("there"),
                },
            ],
            unsent: 0,
            lag: Duration::from_millis(3),
            at: Utc::now(),
        },
        20,
    );
    let finals: Vec<(i32, &str)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(ClientEvent::Final { seq, text, .. }) => Some((*seq, text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(finals, vec![(1, "hello"), (2, "there")]);
    assert_eq!(
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Publish(LiveEvent::TurnFinal { .. })))
            .count(),
        2
    );
    assert_eq!(f.session.counters().last_seq, 2);
    assert_eq!(partial(&mut f, 2), 3);
}

#[test]
fn a_backlog_is_counted_and_cleared_by_the_end() {
    let mut f = Fixture::new().live();
    f.input(Input::Backlog { unsent: 7 }, 10);
    assert_eq!(f.session.counters().unsent_turns, 7);
    f.input(Input::Finish(EndReason::OperatorHangup), 20);
    f.finished(Box::new(Err("database down".into())), 30);
    assert_eq!(f.session.counters().unsent_turns, 0);
    // A backstopped call lets go of its backlog too (the persister keeps writing it).
    let mut f = Fixture::new().live();
    f.input(Input::Backlog { unsent: 4 }, 10);
    f.input(Input::Stopped("call_actor_stopped"), 20);
    assert_eq!(f.session.counters().unsent_turns, 0);
}
