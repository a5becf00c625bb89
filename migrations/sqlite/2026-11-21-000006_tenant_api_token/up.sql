-- Per-tenant API tokens, stored as SHA-256 hex (the token itself is never stored).
ALTER TABLE tenants ADD COLUMN api_token_sha256 TEXT;
CREATE UNIQUE INDEX tenants_api_token ON tenants (api_token_sha256) WHERE api_token_sha256 IS NOT NULL;
