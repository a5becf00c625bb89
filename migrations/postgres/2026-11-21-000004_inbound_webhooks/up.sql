-- Inbound webhooks: a per-tenant route token naming the tenant in webhook URLs, the ElevenLabs
-- signing secret, and the recording's status on the call.
ALTER TABLE tenants ADD COLUMN inbound_token TEXT;
ALTER TABLE tenants ADD COLUMN elevenlabs_webhook_secret TEXT;
CREATE UNIQUE INDEX tenants_inbound_token ON tenants (inbound_token) WHERE inbound_token IS NOT NULL;
ALTER TABLE calls ADD COLUMN recording_status TEXT;
