-- Issue 13: Vonage signed callbacks, an explicit (unsafe) opt-out of webhook signatures, and
-- recording hosts a tenant adds to the egress allow-list. Secrets are sealed and tokens hashed
-- by the engine at start-up (see src/crypto.rs), not here: SQLite has no SHA-256 in SQL.
ALTER TABLE tenants ADD COLUMN vonage_signature_secret TEXT;
ALTER TABLE tenants ADD COLUMN webhooks_unsigned BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN recording_hosts TEXT;
-- A transport id is unique among a tenant's live calls, not across tenants: one tenant can
-- neither block nor find another's calls by naming their ids.
DROP INDEX calls_live_external;
CREATE UNIQUE INDEX calls_live_external ON calls (tenant_id, protocol, external_id)
    WHERE status = 'active' AND external_id IS NOT NULL;
