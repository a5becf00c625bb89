//! Row structs as diesel reads and writes them, and their conversion to the public model.

use diesel::prelude::*;

use super::model::{Call, Job, Turn};
use super::schema::{call_turns, calls, jobs};
use super::sql_types::{DbJson, DbTime, DbUuid};
use super::StoreError;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = calls)]
pub(super) struct CallRow {
    pub id: DbUuid,
    pub tenant_id: DbUuid,
    pub campaign_id: Option<DbUuid>,
    pub lead_id: Option<DbUuid>,
    pub phone_number: String,
    pub external_id: Option<String>,
    pub protocol: String,
    pub direction: String,
    pub status: String,
    pub started_at: DbTime,
    pub ended_at: Option<DbTime>,
    pub last_activity_at: DbTime,
    pub duration_seconds: Option<i64>,
    pub cost_micros: Option<i64>,
    pub end_reason: Option<String>,
    pub transcript_text: Option<String>,
    pub transcript_json: Option<DbJson>,
    pub recording_id: Option<String>,
    pub recording_url: Option<String>,
    pub offline_transcript: Option<String>,
    pub summary: Option<String>,
    pub extracted_fields: Option<DbJson>,
    pub node_id: String,
    pub created_at: DbTime,
    pub updated_at: DbTime,
    pub dtmf: Option<String>,
    pub media_metadata: Option<DbJson>,
    pub recording_status: Option<String>,
    pub postcall_error: Option<String>,
    pub postcall_status: Option<String>,
    pub processed_at: Option<DbTime>,
    pub recording_expected: bool,
}

impl TryFrom<CallRow> for Call {
    type Error = StoreError;

    fn try_from(row: CallRow) -> Result<Self, StoreError> {
        Ok(Call {
            id: row.id.0,
            tenant_id: row.tenant_id.0,
            campaign_id: row.campaign_id.map(|id| id.0),
            lead_id: row.lead_id.map(|id| id.0),
            phone_number: row.phone_number,
            external_id: row.external_id,
            protocol: row.protocol.parse()?,
            direction: row.direction.parse()?,
            status: row.status.parse()?,
            started_at: row.started_at.0,
            ended_at: row.ended_at.map(|t| t.0),
            last_activity_at: row.last_activity_at.0,
            duration_seconds: row.duration_seconds,
            cost_micros: row.cost_micros,
            end_reason: row.end_reason,
            transcript_text: row.transcript_text,
            transcript_json: row.transcript_json.map(|j| j.0),
            recording_id: row.recording_id,
            recording_url: row.recording_url,
            offline_transcript: row.offline_transcript,
            summary: row.summary,
            extracted_fields: row.extracted_fields.map(|j| j.0),
            node_id: row.node_id,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            dtmf: row.dtmf,
            media_metadata: row.media_metadata.map(|j| j.0),
            recording_status: row.recording_status,
            postcall_error: row.postcall_error,
            postcall_status: row.postcall_status,
            processed_at: row.processed_at.map(|t| t.0),
            recording_expected: row.recording_expected,
        })
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = call_turns)]
pub(super) struct TurnRow {
    pub id: DbUuid,
    pub call_id: DbUuid,
    pub seq: i32,
    pub speaker: String,
    pub speaker_label: Option<String>,
    pub text: String,
    pub is_final: bool,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub confidence: Option<f64>,
    pub source: String,
    pub created_at: DbTime,
    pub turn_key: Option<String>,
}

impl TryFrom<TurnRow> for Turn {
    type Error = StoreError;

    fn try_from(row: TurnRow) -> Result<Self, StoreError> {
        Ok(Turn {
            id: row.id.0,
            call_id: row.call_id.0,
            seq: row.seq,
            speaker: row.speaker,
            speaker_label: row.speaker_label,
            text: row.text,
            is_final: row.is_final,
            start_ms: row.start_ms,
            end_ms: row.end_ms,
            confidence: row.confidence,
            source: row.source.parse()?,
            created_at: row.created_at.0,
        })
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs)]
pub(super) struct JobRow {
    pub id: DbUuid,
    pub kind: String,
    pub call_id: Option<DbUuid>,
    pub dedupe_key: Option<String>,
    pub payload: DbJson,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DbTime,
    pub locked_by: Option<String>,
    pub locked_at: Option<DbTime>,
    pub lease_expires_at: Option<DbTime>,
    pub last_error: Option<String>,
    pub created_at: DbTime,
    pub updated_at: DbTime,
}

impl From<JobRow> for Job {
    fn from(row: JobRow) -> Self {
        Job {
            id: row.id.0,
            kind: row.kind,
            call_id: row.call_id.map(|id| id.0),
            dedupe_key: row.dedupe_key,
            payload: row.payload.0,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at.0,
            last_error: row.last_error,
        }
    }
}

/// Converts a list of rows, failing on the first corrupt one.
pub(super) fn convert_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::tenants)]
pub(super) struct TenantRow {
    pub id: DbUuid,
    pub name: String,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub cost_per_second_micros: i64,
    pub stt_provider: Option<String>,
    pub created_at: DbTime,
    pub updated_at: DbTime,
    pub stt_api_key: Option<String>,
    pub media_token: Option<String>,
    pub media_open: bool,
    pub twilio_auth_token: Option<String>,
    pub max_concurrent_calls: Option<i32>,
    pub inbound_token: Option<String>,
    pub elevenlabs_webhook_secret: Option<String>,
    pub postcall_config: Option<DbJson>,
    pub api_token_sha256: Option<String>,
    pub vonage_signature_secret: Option<String>,
    pub webhooks_unsigned: bool,
    pub recording_hosts: Option<String>,
}
