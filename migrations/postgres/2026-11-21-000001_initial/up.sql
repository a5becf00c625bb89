-- callengine initial schema (PostgreSQL). Keep in step with migrations/sqlite and src/store/schema.rs.

CREATE TABLE tenants (
    id                       UUID PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    webhook_url              TEXT,
    webhook_secret           TEXT,
    -- Cost per second of call time in micro-units of the billing currency (1000 = $0.001/s).
    cost_per_second_micros   BIGINT NOT NULL DEFAULT 1000 CHECK (cost_per_second_micros >= 0),
    stt_provider             TEXT,
    created_at               TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL
);

-- Numbers a tenant owns, in E.164; the recording callback finds the tenant by the called number.
CREATE TABLE tenant_phone_numbers (
    e164        TEXT PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX tenant_phone_numbers_tenant ON tenant_phone_numbers (tenant_id);

CREATE TABLE calls (
    id                      UUID PRIMARY KEY,
    tenant_id               UUID NOT NULL,
    campaign_id             UUID,
    lead_id                 UUID,
    phone_number            TEXT NOT NULL DEFAULT 'unknown',
    external_id             TEXT,
    protocol                TEXT NOT NULL,
    direction               TEXT NOT NULL DEFAULT 'inbound',
    status                  TEXT NOT NULL,
    started_at              TIMESTAMPTZ NOT NULL,
    ended_at                TIMESTAMPTZ,
    last_activity_at        TIMESTAMPTZ NOT NULL,
    duration_seconds        BIGINT,
    -- Exact cost in micro-units of the billing currency; never a float.
    cost_micros             BIGINT,
    end_reason              TEXT,
    transcript_text         TEXT,
    transcript_json         JSONB,
    recording_id            TEXT,
    recording_url           TEXT,
    offline_transcript      TEXT,
    summary                 TEXT,
    -- {"city": {"value": "...", "confidence": 0.9}, ...}
    extracted_fields        JSONB,
    node_id                 TEXT NOT NULL,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);
-- At most one live call per (protocol, external id): create-or-link relies on it.
CREATE UNIQUE INDEX calls_live_external ON calls (protocol, external_id)
    WHERE status = 'active' AND external_id IS NOT NULL;
CREATE INDEX calls_external ON calls (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at);
CREATE INDEX calls_active_node ON calls (node_id, last_activity_at) WHERE status = 'active';
CREATE INDEX calls_recording ON calls (recording_id) WHERE recording_id IS NOT NULL;

CREATE TABLE call_turns (
    id              UUID PRIMARY KEY,
    call_id         UUID NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    speaker         TEXT NOT NULL,
    speaker_label   TEXT,
    text            TEXT NOT NULL,
    is_final        BOOLEAN NOT NULL,
    start_ms        BIGINT,
    end_ms          BIGINT,
    confidence      DOUBLE PRECISION,
    source          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT call_turns_call_seq UNIQUE (call_id, seq)
);

CREATE TABLE jobs (
    id              UUID PRIMARY KEY,
    kind            TEXT NOT NULL,
    call_id         UUID REFERENCES calls (id) ON DELETE CASCADE,
    -- Makes enqueueing idempotent: a retried completion cannot queue the same work twice.
    dedupe_key      TEXT UNIQUE,
    payload         JSONB NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    run_at          TIMESTAMPTZ NOT NULL,
    locked_by       TEXT,
    locked_at       TIMESTAMPTZ,
    lease_expires_at TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_due ON jobs (status, run_at);
CREATE INDEX jobs_call ON jobs (call_id);

CREATE TABLE webhook_deliveries (
    id                      UUID PRIMARY KEY,
    -- Stable across retries: receivers deduplicate on it (Standard Webhooks `webhook-id`).
    event_id                TEXT NOT NULL UNIQUE,
    call_id                 UUID REFERENCES calls (id) ON DELETE CASCADE,
    event_type              TEXT NOT NULL,
    payload                 JSONB NOT NULL,
    url                     TEXT NOT NULL,
    attempts                INTEGER NOT NULL DEFAULT 0,
    next_attempt_at         TIMESTAMPTZ NOT NULL,
    status                  TEXT NOT NULL,
    last_response_status    INTEGER,
    last_response_body      TEXT,
    last_error              TEXT,
    delivered_at            TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_id);
