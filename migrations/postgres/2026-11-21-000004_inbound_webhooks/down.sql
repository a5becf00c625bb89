ALTER TABLE calls DROP COLUMN recording_status;
DROP INDEX tenants_inbound_token;
ALTER TABLE tenants DROP COLUMN elevenlabs_webhook_secret;
ALTER TABLE tenants DROP COLUMN inbound_token;
