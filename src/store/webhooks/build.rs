//! The rows a webhook writes, built without the database: a conversation's call, a posted
//! turn, a recording's post-call job.

use super::*;

/// The call a platform's conversation becomes on its first turn.
pub(super) fn conversation_call(turn: &WebhookTurn) -> NewCall {
    NewCall {
        id: None,
        tenant_id: turn.tenant_id,
        campaign_id: None,
        lead_id: None,
        phone_number: None,
        external_id: Some(turn.conversation_id.clone()),
        protocol: turn.protocol,
        direction: Direction::Inbound,
        started_at: turn.at,
        media_metadata: None,
    }
}

/// A posted turn as its row (numbered by the insert, keyed for exactly-once).
pub(super) fn webhook_turn_row(
    turn: &WebhookTurn,
    call: &CallRow,
    key: &str,
    now: DbTime,
) -> TurnRow {
    TurnRow {
        id: DbUuid(Uuid::new_v4()),
        call_id: call.id,
        seq: 0,
        speaker: turn.speaker.clone(),
        speaker_label: Some(turn.speaker_label.clone()),
        text: turn.text.clone(),
        is_final: true,
        start_ms: Some((turn.at - call.started_at.0).num_milliseconds().max(0)),
        end_ms: None,
        confidence: None,
        source: TurnSource::Webhook.as_str().into(),
        created_at: now,
        turn_key: Some(key.to_string()),
    }
}

/// A carrier status that means a recording is still being made: the post-call job waits for it.
pub(super) fn announces_recording(status: &str) -> bool {
    matches!(
        status,
        "in-progress" | "in_progress" | "processing" | "started" | "recording"
    )
}

/// The post-call job a completed recording queues (one per call: `dedupe_key`).
pub(super) fn recording_job(
    call_id: Uuid,
    recording_id: &str,
    key: &str,
    max_attempts: i32,
    stamp: DbTime,
) -> JobRow {
    JobRow {
        id: DbUuid(Uuid::new_v4()),
        kind: JOB_KIND_POSTCALL.into(),
        call_id: Some(DbUuid(call_id)),
        dedupe_key: Some(key.into()),
        payload: DbJson(json!({ "call_id": call_id, "recording_id": recording_id })),
        status: JOB_STATUS_QUEUED.into(),
        attempts: 0,
        max_attempts,
        run_at: stamp,
        locked_by: None,
        locked_at: None,
        lease_expires_at: None,
        last_error: None,
        created_at: stamp,
        updated_at: stamp,
    }
}
