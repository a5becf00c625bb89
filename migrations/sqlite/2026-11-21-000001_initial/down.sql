DROP TABLE webhook_deliveries;
DROP TABLE jobs;
DROP TABLE call_turns;
DROP TABLE calls;
DROP TABLE tenant_phone_numbers;
DROP TABLE tenants;
