-- Telephony media: DTMF digits and the transport's metadata on the call; media authentication
-- and a concurrency cap per tenant.
ALTER TABLE calls ADD COLUMN dtmf TEXT;
ALTER TABLE calls ADD COLUMN media_metadata TEXT;
ALTER TABLE tenants ADD COLUMN media_token TEXT;
ALTER TABLE tenants ADD COLUMN media_open BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tenants ADD COLUMN twilio_auth_token TEXT;
ALTER TABLE tenants ADD COLUMN max_concurrent_calls INTEGER;
