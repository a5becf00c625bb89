//! The store's public vocabulary: calls, turns and their states, independent of the backend.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::secret::Secret;

/// Declares a closed set of string-valued states stored as TEXT.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // JSON uses the stored text too, so the API, webhooks, metrics labels and the
        // database all name a value the same way.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant),+ }

        impl $name {
            /// The value as stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    other => Err(UnknownValue { kind: stringify!($name), value: other.to_string() }),
                }
            }
        }
    };
}

/// A stored string that is not one of its type's known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    /// The type that was being read.
    pub kind: &'static str,
    /// The value found.
    pub value: String,
}

text_enum! {
    /// Where a call is in its life.
    CallStatus {
        /// Registered through the API; no media or turn yet. Never swept as interrupted;
        /// expires after `calls.registered_expiry_secs`.
        Registered => "registered",
        /// Media is flowing (or turns are being posted).
        Active => "active",
        /// Ended normally; transcript materialised.
        Completed => "completed",
        /// Ended by a fault (STT past its restart budget, internal error).
        Failed => "failed",
        /// Left `active` by a node that died; closed by the start-up sweep.
        Interrupted => "interrupted",
        /// Registered but never started within `calls.registered_expiry_secs`; no webhook.
        Expired => "expired",
    }
}

impl CallStatus {
    /// True once the call can no longer change state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Active | Self::Registered)
    }
}

text_enum! {
    /// The transport a call arrived on.
    Protocol {
        /// The generic PCM WebSocket `/ws/voice/{external_uuid}`.
        Voice => "voice",
        /// Vonage Voice API WebSocket.
        Vonage => "vonage",
        /// Twilio Media Streams.
        Twilio => "twilio",
        /// FreeSWITCH mod_audio_fork / jambonz listen.
        AudioFork => "audiofork",
        /// Asterisk AudioSocket over TCP.
        AudioSocket => "audiosocket",
        /// ElevenLabs transcription webhooks (no audio).
        ElevenLabs => "elevenlabs",
        /// Registered through the API before any media arrived.
        Api => "api",
    }
}

text_enum! {
    /// Call direction from the engine's point of view.
    Direction {
        /// The contact called in.
        Inbound => "inbound",
        /// The platform dialled the contact.
        Outbound => "outbound",
    }
}

text_enum! {
    /// Which path produced a turn.
    TurnSource {
        /// Streaming STT during the call.
        Realtime => "realtime",
        /// Post-call re-transcription of the recording.
        Offline => "offline",
        /// Posted by a voice platform's webhook.
        Webhook => "webhook",
    }
}

/// What the media session knows when a call starts.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// Link to (or create with) this id; `None` creates a call with a fresh id.
    pub id: Option<Uuid>,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Campaign, when known.
    pub campaign_id: Option<Uuid>,
    /// The contact (lead, driver, customer), when known.
    pub lead_id: Option<Uuid>,
    /// Phone number as given by the transport; "unknown" when absent.
    pub phone_number: Option<String>,
    /// The transport's id for the call (Vonage UUID, Twilio CallSid, AudioSocket UUID…).
    pub external_id: Option<String>,
    /// The transport.
    pub protocol: Protocol,
    /// Direction of the call.
    pub direction: Direction,
    /// When media started.
    pub started_at: DateTime<Utc>,
    /// What the transport said about the call (Vonage headers, Twilio custom parameters,
    /// audio_fork metadata), stored as given.
    pub media_metadata: Option<serde_json::Value>,
}

/// A call row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    pub phone_number: String,
    pub external_id: Option<String>,
    pub protocol: Protocol,
    pub direction: Direction,
    pub status: CallStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub last_activity_at: DateTime<Utc>,
    pub duration_seconds: Option<i64>,
    /// Exact cost in micro-units of the billing currency.
    pub cost_micros: Option<i64>,
    pub end_reason: Option<String>,
    pub transcript_text: Option<String>,
    pub transcript_json: Option<serde_json::Value>,
    pub recording_id: Option<String>,
    pub recording_url: Option<String>,
    pub offline_transcript: Option<String>,
    pub summary: Option<String>,
    pub extracted_fields: Option<serde_json::Value>,
    pub node_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// DTMF digits pressed during the call, in order.
    pub dtmf: Option<String>,
    pub media_metadata: Option<serde_json::Value>,
    /// The carrier's recording status (`completed`, `absent`, `failed`…).
    pub recording_status: Option<String>,
    /// Why a post-call step gave up (the webhook still goes out, with this noted).
    pub postcall_error: Option<String>,
    /// Post-call progress: `pending`, `waiting_recording`, `processed` or `failed` (`None` while
    /// the call is live).
    pub postcall_status: Option<String>,
    /// When the post-call pipeline last finished for this call.
    pub processed_at: Option<DateTime<Utc>>,
    /// A carrier recording is on its way; the post-call job waits for it.
    pub recording_expected: bool,
}

/// Whether `create_or_link_call` made a new row or found the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// A new call row was inserted.
    Created,
    /// An existing call was linked (same id, or same live external id and protocol).
    Linked,
}

/// One turn to append. Its number (`seq`) is allocated by the database when it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTurn {
    /// Idempotency key, unique within the call: a retried write with the same key finds the
    /// stored turn instead of adding a second one. `None`: every append inserts.
    pub key: Option<String>,
    /// Role: `agent`, `contact`, `caller`, `callee`…
    pub speaker: String,
    /// The label the source used, when it differs from the role.
    pub speaker_label: Option<String>,
    pub text: String,
    /// False for a partial stored by the final flush.
    pub is_final: bool,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub confidence: Option<f64>,
    pub source: TurnSource,
}

#[cfg(test)]
impl NewTurn {
    /// A final live turn of the caller (`contact`), for unit tests.
    pub fn sample(text: &str) -> Self {
        Self {
            key: None,
            speaker: "contact".into(),
            speaker_label: None,
            text: text.into(),
            is_final: true,
            start_ms: Some(0),
            end_ms: Some(500),
            confidence: None,
            source: TurnSource::Realtime,
        }
    }
}

/// A stored turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    pub id: Uuid,
    pub call_id: Uuid,
    pub seq: i32,
    pub speaker: String,
    pub speaker_label: Option<String>,
    pub text: String,
    pub is_final: bool,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub confidence: Option<f64>,
    pub source: TurnSource,
    pub created_at: DateTime<Utc>,
}

/// Whether an append wrote a row or found a turn with the same key already stored, and the
/// turn's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The turn was written with this number.
    Inserted { seq: i32 },
    /// A turn with this key was already stored (a retry) under this number; nothing changed.
    AlreadyPresent { seq: i32 },
}

impl AppendOutcome {
    /// The stored turn's number.
    pub fn seq(self) -> i32 {
        match self {
            Self::Inserted { seq } | Self::AlreadyPresent { seq } => seq,
        }
    }
}

/// How a call ended, for `complete_call`.
#[derive(Debug, Clone)]
pub struct CallCompletion {
    /// `Completed` or `Failed` (use the sweep for `Interrupted`).
    pub status: CallStatus,
    /// When the call ended.
    pub ended_at: DateTime<Utc>,
    /// Why: `caller_hangup`, `stt_failed`, `shutdown`, `operator_hangup`…
    pub end_reason: String,
    /// The partial in flight at hang-up, stored with `is_final = false`.
    pub pending_partial: Option<NewTurn>,
    /// DTMF digits pressed during the call, in order.
    pub dtmf: Option<String>,
    /// The engine's own recording (`file://…`), saved with the completion so the post-call job
    /// finds it.
    pub recording_url: Option<String>,
}

/// The result of `complete_call`.
#[derive(Debug, Clone, PartialEq)]
pub enum CompletionOutcome {
    /// This call closed the call row (and queued its post-call job).
    Completed(Call),
    /// The call had already ended; nothing changed (an idempotent retry).
    AlreadyEnded(Call),
}

impl CompletionOutcome {
    /// The call row after completion, either way.
    pub fn call(&self) -> &Call {
        match self {
            Self::Completed(call) | Self::AlreadyEnded(call) => call,
        }
    }
}

/// A call with its turns in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallWithTurns {
    pub call: Call,
    pub turns: Vec<Turn>,
}

/// A queued unit of background work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub call_id: Option<Uuid>,
    pub dedupe_key: Option<String>,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Job kind queued by every call completion.
pub const JOB_KIND_POSTCALL: &str = "postcall";
/// Status of a job waiting to run.
pub const JOB_STATUS_QUEUED: &str = "queued";
/// Status of a job that finished.
pub const JOB_STATUS_DONE: &str = "done";
/// Status of a job that failed its last attempt.
pub const JOB_STATUS_DEAD: &str = "dead";

/// A tenant to create.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    /// Tenant id; `None` generates one.
    pub id: Option<Uuid>,
    /// Unique display name.
    pub name: String,
    /// Where `call.completed` webhooks go.
    pub webhook_url: Option<String>,
    /// Signing secret for outbound webhooks.
    pub webhook_secret: Option<Secret>,
    /// Rate in micro-units per second of call time.
    pub cost_per_second_micros: i64,
    /// STT provider override.
    pub stt_provider: Option<String>,
    /// The tenant's own STT API key (Deepgram); `None` uses the node's key.
    pub stt_api_key: Option<Secret>,
    /// Secret the media endpoints require from this tenant's calls (stored as its SHA-256;
    /// at least [`crate::crypto::MIN_TOKEN_LEN`] characters).
    pub media_token: Option<Secret>,
    /// Carrier media for this tenant needs no secret.
    pub media_open: bool,
    /// Twilio auth token: when set, `X-Twilio-Signature` on the stream's upgrade is verified.
    pub twilio_auth_token: Option<Secret>,
    /// Live calls this tenant may have at once (`None`: the node's limit).
    pub max_concurrent_calls: Option<i32>,
    /// Token naming this tenant in inbound webhook URLs (`/webhooks/{token}/…`; stored as its
    /// SHA-256).
    pub inbound_token: Option<Secret>,
    /// Secret ElevenLabs signs this tenant's webhooks with.
    pub elevenlabs_webhook_secret: Option<Secret>,
    /// Vonage signature secret: signed callbacks carry a JWT (HS256) made with it.
    pub vonage_signature_secret: Option<Secret>,
    /// Accept this tenant's webhooks without a signature. Unsafe: anyone who knows the route
    /// can post for the tenant. Off by default.
    pub webhooks_unsigned: bool,
    /// Hosts (exact names) this tenant's recordings may also be fetched from, besides the
    /// carriers' own.
    pub recording_hosts: Vec<String>,
    /// Post-call settings (extraction lists, agent name, recording credentials).
    pub postcall_config: Option<serde_json::Value>,
    /// Bearer token for this tenant's view of the API (stored as its SHA-256).
    pub api_token: Option<Secret>,
}

/// A tenant row. Secrets are never serialised nor printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub webhook_url: Option<String>,
    #[serde(skip)]
    pub webhook_secret: Option<Secret>,
    pub cost_per_second_micros: i64,
    pub stt_provider: Option<String>,
    #[serde(skip)]
    pub stt_api_key: Option<Secret>,
    /// SHA-256 (`sha256:<hex>`) of the media token; the token itself is not kept.
    #[serde(skip)]
    pub media_token_sha256: Option<String>,
    pub media_open: bool,
    #[serde(skip)]
    pub twilio_auth_token: Option<Secret>,
    pub max_concurrent_calls: Option<i32>,
    /// The tenant has an inbound webhook route token.
    pub has_inbound_token: bool,
    #[serde(skip)]
    pub elevenlabs_webhook_secret: Option<Secret>,
    #[serde(skip)]
    pub vonage_signature_secret: Option<Secret>,
    pub webhooks_unsigned: bool,
    pub recording_hosts: Vec<String>,
    /// May hold credentials: never serialised.
    #[serde(skip)]
    pub postcall_config: Option<serde_json::Value>,
    /// The tenant has an API token.
    pub has_api_token: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
