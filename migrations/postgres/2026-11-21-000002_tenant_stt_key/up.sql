-- A tenant's own speech-to-text API key (Deepgram), used instead of stt.deepgram.api_key for that tenant's calls.
ALTER TABLE tenants ADD COLUMN stt_api_key TEXT;
