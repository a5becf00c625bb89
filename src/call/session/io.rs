//! What goes into a call's session and what comes out: its inputs, its effects, its phase and
//! its counters.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::call::client::ClientEvent;
use crate::call::end::EndReason;
use crate::call::events::LiveEvent;
use crate::call::persist::CommittedTurn;
use crate::media::{MediaEvent, SourceAudio};
use crate::store::{CompletionOutcome, StoreError};
use crate::stt::actor::SttState;

/// Where the call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the registry's claim and the call row.
    Starting,
    /// The row exists; audio flows to STT.
    Live,
    /// The finish sequence runs.
    Finishing,
    /// Closed (or refused): nothing more happens.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Live => "live",
            Self::Finishing => "finishing",
            Self::Done => "done",
        }
    }
}

/// The call's live figures (for its snapshot).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub frames_in: u64,
    pub frames_invalid: u64,
    pub frames_dropped: u64,
    pub text_ignored: u64,
    pub turns: u64,
    /// Highest turn number acknowledged to this call (numbers come from the database).
    pub last_seq: i32,
    pub last_persist_at: Option<DateTime<Utc>>,
    pub persist_lag: Duration,
    pub unsent_turns: usize,
    pub stt_state: Option<SttState>,
    pub stt_restarts: u32,
    pub stt_dropped: u64,
    pub frames_missing: u64,
    pub audio_ms: u64,
    pub audio_too_fast: bool,
}

/// The call row exists: its id, whether the stream joined an existing call, and whether an
/// STT provider could be had for it (`Err`: why not).
#[derive(Debug, Clone)]
pub struct Started {
    pub call_id: Uuid,
    pub linked: bool,
    pub stt: Result<(), String>,
}

/// What happened to the call.
#[derive(Debug)]
pub enum Input {
    /// The registry's answer to this call's claim (`true`: no other actor carries it).
    Claimed(bool),
    /// The persister created or linked the row, or could not.
    Started(Result<Started, StoreError>),
    /// An event of the transport.
    Media(MediaEvent),
    /// The transport's stream ended without saying why (TCP reset, network loss).
    TransportEnded,
    /// The last forwarded frame found its STT actor's mailbox full.
    Dropped,
    /// End the call (operator hang-up, shutdown, STT gave up…).
    Finish(EndReason),
    /// A timer tick: time to check the idle rule.
    Tick,
    /// A channel's transcript buffer has new partial text (`finals`: finals it assembled).
    Partial {
        speaker: String,
        text: String,
        finals: u32,
    },
    /// Turns are committed, in order.
    Committed {
        turns: Vec<CommittedTurn>,
        unsent: usize,
        lag: Duration,
        at: DateTime<Utc>,
    },
    /// Writes are failing; this many turns wait.
    Backlog { unsent: usize },
    /// A channel's STT stream reported its state.
    Stt {
        state: SttState,
        restarts: u32,
        dropped: u64,
    },
    /// The finish sequence came back.
    Finished(Box<Result<CompletionOutcome, String>>),
    /// The actor is stopping (or being dropped) without having finished: `end_reason` says how.
    Stopped(&'static str),
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Start the persister and create or link the call row.
    StartCall,
    /// Tell the registry the call is live under this id.
    Register(Uuid),
    /// Start each channel's STT stream and transcript buffer, the metrics and the idle timer.
    StartChannels(Uuid),
    /// An event for the call's client.
    Send(ClientEvent),
    /// An event for the live feed (`/api/v1/events`).
    Publish(LiveEvent),
    /// Audio for a channel's STT stream (and the recording, on channel 0).
    Forward {
        channel: usize,
        pcm: Bytes,
        millis: u32,
        source: Option<SourceAudio>,
    },
    /// Answer a WebSocket ping.
    Pong(Bytes),
    /// Run the finish sequence: STT finalize, transcript flush, the persister's completion.
    RunFinish {
        reason: EndReason,
        dtmf: Option<String>,
    },
    /// The finish sequence ended (count it, log it).
    Completed {
        reason: EndReason,
        result: Box<Result<CompletionOutcome, String>>,
    },
    /// The call's one Close frame, after everything queued before it.
    Close { code: u16, description: String },
    /// The one Close, from a backstop that cannot wait (it may run while the actor is dropped).
    CloseNow { code: u16, description: String },
    /// Give back the registry's reservation of a call that did not start.
    ReleaseClaim,
    /// The backstop: the persister completes the row on its own (committed turns stay).
    Abandon {
        end_reason: &'static str,
        dtmf: Option<String>,
    },
    /// The registry forgets the call.
    Unregister(Uuid),
    /// Stop the actor.
    Stop,
}
