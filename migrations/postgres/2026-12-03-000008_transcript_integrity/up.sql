-- Issue 14: turn numbers allocated by the database with an idempotency key per turn, a
-- registered state for calls announced before their media, post-call progress on the call row,
-- and whether a carrier recording is still expected.
ALTER TABLE call_turns ADD COLUMN turn_key TEXT;
-- A writer's retry of a turn it already stored finds it by key; never compared by text.
CREATE UNIQUE INDEX call_turns_key ON call_turns (call_id, turn_key) WHERE turn_key IS NOT NULL;
-- pending | waiting_recording | processed | failed (NULL while the call is live).
ALTER TABLE calls ADD COLUMN postcall_status TEXT;
ALTER TABLE calls ADD COLUMN processed_at TIMESTAMPTZ;
-- A carrier recording is on its way: the post-call job waits for it (postcall.recording_wait_secs).
ALTER TABLE calls ADD COLUMN recording_expected BOOLEAN NOT NULL DEFAULT false;
-- A registered call holds its external id like a live one, so media and webhooks link to it.
DROP INDEX calls_live_external;
CREATE UNIQUE INDEX calls_live_external ON calls (tenant_id, protocol, external_id)
    WHERE status IN ('active', 'registered') AND external_id IS NOT NULL;
