DROP INDEX calls_live_external;
CREATE UNIQUE INDEX calls_live_external ON calls (tenant_id, protocol, external_id)
    WHERE status = 'active' AND external_id IS NOT NULL;
ALTER TABLE calls DROP COLUMN recording_expected;
ALTER TABLE calls DROP COLUMN processed_at;
ALTER TABLE calls DROP COLUMN postcall_status;
DROP INDEX call_turns_key;
ALTER TABLE call_turns DROP COLUMN turn_key;
