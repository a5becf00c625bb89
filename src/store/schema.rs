// @generated shape: matches `diesel print-schema` against migrations/postgres (see diesel.toml).

diesel::table! {
    use crate::store::sql_types::*;

    call_turns (id) {
        id -> Uuid,
        call_id -> Uuid,
        seq -> Int4,
        speaker -> Text,
        speaker_label -> Nullable<Text>,
        text -> Text,
        is_final -> Bool,
        start_ms -> Nullable<Int8>,
        end_ms -> Nullable<Int8>,
        confidence -> Nullable<Float8>,
        source -> Text,
        created_at -> Timestamptz,
        turn_key -> Nullable<Text>,
    }
}

diesel::table! {
    use crate::store::sql_types::*;

    calls (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        campaign_id -> Nullable<Uuid>,
        lead_id -> Nullable<Uuid>,
        phone_number -> Text,
        external_id -> Nullable<Text>,
        protocol -> Text,
        direction -> Text,
        status -> Text,
        started_at -> Timestamptz,
        ended_at -> Nullable<Timestamptz>,
        last_activity_at -> Timestamptz,
        duration_seconds -> Nullable<Int8>,
        cost_micros -> Nullable<Int8>,
        end_reason -> Nullable<Text>,
        transcript_text -> Nullable<Text>,
        transcript_json -> Nullable<Jsonb>,
        recording_id -> Nullable<Text>,
        recording_url -> Nullable<Text>,
        offline_transcript -> Nullable<Text>,
        summary -> Nullable<Text>,
        extracted_fields -> Nullable<Jsonb>,
        node_id -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        dtmf -> Nullable<Text>,
        media_metadata -> Nullable<Jsonb>,
        recording_status -> Nullable<Text>,
        postcall_error -> Nullable<Text>,
        postcall_status -> Nullable<Text>,
        processed_at -> Nullable<Timestamptz>,
        recording_expected -> Bool,
    }
}

diesel::table! {
    use crate::store::sql_types::*;

    jobs (id) {
        id -> Uuid,
        kind -> Text,
        call_id -> Nullable<Uuid>,
        dedupe_key -> Nullable<Text>,
        payload -> Jsonb,
        status -> Text,
        attempts -> Int4,
        max_attempts -> Int4,
        run_at -> Timestamptz,
        locked_by -> Nullable<Text>,
        locked_at -> Nullable<Timestamptz>,
        lease_expires_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    use crate::store::sql_types::*;

    tenant_phone_numbers (e164) {
        e164 -> Text,
        tenant_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use crate::store::sql_types::*;

    tenants (id) {
        id -> Uuid,
        name -> Text,
        webhook_url -> Nullable<Text>,
        webhook_secret -> Nullable<Text>,
        cost_per_second_micros -> Int8,
        stt_provider -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        stt_api_key -> Nullable<Text>,
        media_token -> Nullable<Text>,
        media_open -> Bool,
        twilio_auth_token -> Nullable<Text>,
        max_concurrent_calls -> Nullable<Int4>,
        inbound_token -> Nullable<Text>,
        elevenlabs_webhook_secret -> Nullable<Text>,
        postcall_config -> Nullable<Jsonb>,
        api_token_sha256 -> Nullable<Text>,
        vonage_signature_secret -> Nullable<Text>,
        webhooks_unsigned -> Bool,
        recording_hosts -> Nullable<Text>,
    }
}

diesel::table! {
    use crate::store::sql_types::*;

    webhook_deliveries (id) {
        id -> Uuid,
        event_id -> Text,
        call_id -> Nullable<Uuid>,
        event_type -> Text,
        payload -> Jsonb,
        url -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        status -> Text,
        last_response_status -> Nullable<Int4>,
        last_response_body -> Nullable<Text>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(call_turns -> calls (call_id));
diesel::joinable!(jobs -> calls (call_id));
diesel::joinable!(tenant_phone_numbers -> tenants (tenant_id));
diesel::joinable!(webhook_deliveries -> calls (call_id));

diesel::allow_tables_to_appear_in_same_query!(
    call_turns,
    calls,
    jobs,
    tenant_phone_numbers,
    tenants,
    webhook_deliveries,
);
