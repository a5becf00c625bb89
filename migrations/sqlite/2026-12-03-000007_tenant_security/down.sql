DROP INDEX calls_live_external;
CREATE UNIQUE INDEX calls_live_external ON calls (protocol, external_id)
    WHERE status = 'active' AND external_id IS NOT NULL;
ALTER TABLE tenants DROP COLUMN recording_hosts;
ALTER TABLE tenants DROP COLUMN webhooks_unsigned;
ALTER TABLE tenants DROP COLUMN vonage_signature_secret;
