-- Post-call pipeline: a failure noted on the call, and per-tenant post-call settings
-- (extraction lists, agent name, recording credentials).
ALTER TABLE calls ADD COLUMN postcall_error TEXT;
ALTER TABLE tenants ADD COLUMN postcall_config JSONB;
