-- callengine initial schema (SQLite). UUIDs, timestamps (RFC 3339, UTC, microseconds) and JSON are TEXT. Keep in step with migrations/sqlite and src/store/schema.rs.

CREATE TABLE tenants (
    id                       TEXT NOT NULL PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    webhook_url              TEXT,
    webhook_secret           TEXT,
    -- Cost per second of call time in micro-units of the billing currency (1000 = $0.001/s).
    cost_per_second_micros   BIGINT NOT NULL DEFAULT 1000 CHECK (cost_per_second_micros >= 0),
    stt_provider             TEXT,
    created_at               TEXT NOT NULL,
    updated_at               TEXT NOT NULL
);

-- Numbers a tenant owns, in E.164; the recording callback finds the tenant by the called number.
CREATE TABLE tenant_phone_numbers (
    e164        TEXT NOT NULL PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL
);
CREATE INDEX tenant_phone_numbers_tenant ON tenant_phone_numbers (tenant_id);

CREATE TABLE calls (
    id                      TEXT NOT NULL PRIMARY KEY,
    tenant_id               TEXT NOT NULL,
    campaign_id             TEXT,
    lead_id                 TEXT,
    phone_number            TEXT NOT NULL DEFAULT 'unknown',
    external_id             TEXT,
    protocol                TEXT NOT NULL,
    direction               TEXT NOT NULL DEFAULT 'inbound',
    status                  TEXT NOT NULL,
    started_at              TEXT NOT NULL,
    ended_at                TEXT,
    last_activity_at        TEXT NOT NULL,
    duration_seconds        BIGINT,
    -- Exact cost in micro-units of the billing currency; never a float.
    cost_micros             BIGINT,
    end_reason              TEXT,
    transcript_text         TEXT,
    transcript_json         TEXT,
    recording_id            TEXT,
    recording_url           TEXT,
    offline_transcript      TEXT,
    summary                 TEXT,
    -- {"city": {"value": "...", "confidence": 0.9}, ...}
    extracted_fields        TEXT,
    node_id                 TEXT NOT NULL,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);
-- At most one live call per (protocol, external id): create-or-link relies on it.
CREATE UNIQUE INDEX calls_live_external ON calls (protocol, external_id)
    WHERE status = 'active' AND external_id IS NOT NULL;
CREATE INDEX calls_external ON calls (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at);
CREATE INDEX calls_active_node ON calls (node_id, last_activity_at) WHERE status = 'active';
CREATE INDEX calls_recording ON calls (recording_id) WHERE recording_id IS NOT NULL;

CREATE TABLE call_turns (
    id              TEXT NOT NULL PRIMARY KEY,
    call_id         TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    speaker         TEXT NOT NULL,
    speaker_label   TEXT,
    text            TEXT NOT NULL,
    is_final        INTEGER NOT NULL,
    start_ms        BIGINT,
    end_ms          BIGINT,
    confidence      REAL,
    source          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    CONSTRAINT call_turns_call_seq UNIQUE (call_id, seq)
);

CREATE TABLE jobs (
    id              TEXT NOT NULL PRIMARY KEY,
    kind            TEXT NOT NULL,
    call_id         TEXT REFERENCES calls (id) ON DELETE CASCADE,
    -- Makes enqueueing idempotent: a retried completion cannot queue the same work twice.
    dedupe_key      TEXT UNIQUE,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    run_at          TEXT NOT NULL,
    locked_by       TEXT,
    locked_at       TEXT,
    lease_expires_at TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX jobs_due ON jobs (status, run_at);
CREATE INDEX jobs_call ON jobs (call_id);

CREATE TABLE webhook_deliveries (
    id                      TEXT NOT NULL PRIMARY KEY,
    -- Stable across retries: receivers deduplicate on it (Standard Webhooks `webhook-id`).
    event_id                TEXT NOT NULL UNIQUE,
    call_id                 TEXT REFERENCES calls (id) ON DELETE CASCADE,
    event_type              TEXT NOT NULL,
    payload                 TEXT NOT NULL,
    url                     TEXT NOT NULL,
    attempts                INTEGER NOT NULL DEFAULT 0,
    next_attempt_at         TEXT NOT NULL,
    status                  TEXT NOT NULL,
    last_response_status    INTEGER,
    last_response_body      TEXT,
    last_error              TEXT,
    delivered_at            TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_id);
