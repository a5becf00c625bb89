DROP INDEX tenants_api_token;
ALTER TABLE tenants DROP COLUMN api_token_sha256;
