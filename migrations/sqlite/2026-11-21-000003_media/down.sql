ALTER TABLE tenants DROP COLUMN max_concurrent_calls;
ALTER TABLE tenants DROP COLUMN twilio_auth_token;
ALTER TABLE tenants DROP COLUMN media_open;
ALTER TABLE tenants DROP COLUMN media_token;
ALTER TABLE calls DROP COLUMN media_metadata;
ALTER TABLE calls DROP COLUMN dtmf;
