ALTER TABLE tenants DROP COLUMN stt_api_key;
