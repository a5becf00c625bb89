ALTER TABLE tenants DROP COLUMN postcall_config;
ALTER TABLE calls DROP COLUMN postcall_error;
