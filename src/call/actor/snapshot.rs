//! What `GET /api/v1/calls` shows of a live call: its snapshot.

use chrono::{DateTime, Utc};

use super::*;
use crate::stt::actor::SttState;

/// The call's live figures.
#[derive(Message)]
#[rtype(result = "CallSnapshot")]
pub struct Snapshot;

/// Live figures of one call actor, for the operator surface.
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    pub call_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub protocol: Protocol,
    pub external_id: Option<String>,
    pub state: &'static str,
    pub uptime_ms: u64,
    pub frames_in: u64,
    pub frames_invalid: u64,
    pub frames_dropped: u64,
    pub text_ignored: u64,
    pub client_events_dropped: u64,
    pub stt_provider: &'static str,
    pub stt_state: &'static str,
    pub stt_restarts: u32,
    pub turns: u64,
    pub last_persist_at: Option<DateTime<Utc>>,
    pub persist_lag_ms: u64,
    pub unsent_turns: usize,
    pub frames_missing: u64,
    pub dtmf: String,
    /// True once audio ran far ahead of real time.
    pub audio_too_fast: bool,
    /// Messages waiting in the call's mailboxes.
    pub mailbox: MailboxDepths,
    /// Audio its STT actors hold to replay after a reconnect, bytes (16 kHz PCM: 32 KB/s).
    pub replay_bytes: i64,
}

/// Messages waiting in a call's mailboxes (actix does not expose mailbox lengths: the call
/// counts what it queues and its actors what they take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MailboxDepths {
    /// Audio frames queued for the STT actors, now and at most so far.
    pub stt_audio: i64,
    pub stt_audio_peak: i64,
    /// Events and the close queued for the client's socket writer.
    pub outbound: i64,
    /// Turns waiting for the database.
    pub persister: i64,
}

impl CallActor {
    pub(super) fn snapshot(&self) -> CallSnapshot {
        let (c, params) = (self.session.counters(), self.session.params());
        CallSnapshot {
            call_id: self.session.call_id(),
            tenant_id: params.tenant_id,
            protocol: params.protocol,
            external_id: params.external_id.clone(),
            state: self.session.phase().as_str(),
            uptime_ms: self.session.uptime(crate::clock::now()).as_millis() as u64,
            frames_in: c.frames_in,
            frames_invalid: c.frames_invalid,
            frames_dropped: c.frames_dropped + c.stt_dropped,
            text_ignored: c.text_ignored,
            client_events_dropped: self.client_events_dropped,
            stt_provider: self.provider.as_ref().map_or("none", |p| p.name()),
            stt_state: c.stt_state.unwrap_or(SttState::Connecting).as_str(),
            stt_restarts: c.stt_restarts,
            turns: c.turns,
            last_persist_at: c.last_persist_at,
            persist_lag_ms: c.persist_lag.as_millis() as u64,
            unsent_turns: c.unsent_turns,
            frames_missing: c.frames_missing,
            dtmf: self.session.dtmf().to_string(),
            audio_too_fast: c.audio_too_fast,
            mailbox: MailboxDepths {
                stt_audio: self.stt_mailbox.get(),
                stt_audio_peak: self.stt_mailbox.peak(),
                outbound: (self.out.max_capacity() - self.out.capacity()) as i64,
                persister: c.unsent_turns as i64,
            },
            replay_bytes: self.replay_bytes.get(),
        }
    }
}

impl Handler<Snapshot> for CallActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}
