-- Tracked rights requests (node/src/store/pg_store/tracked.rs, ARCHITECTURE.md "Rights
-- requests"): the region-wide, PII-free index of requests and where each stands (pseudonymous
-- subject id, kind, status, deadlines, the challenge's keyed digest; never the code). Kept after
-- the subject's erasure, so the erasure request itself can still be looked up: no cascade.
CREATE TABLE rights_tracked (
    request_id text   PRIMARY KEY,
    subject    bytea  NOT NULL,
    body       bytea  NOT NULL    -- the tracked request (JSON)
);
CREATE INDEX rights_tracked_subject ON rights_tracked (subject);

-- Challenges waiting for the region's delivery system. The delivery (identifier and code) is
-- personal data, sealed under the subject's key; an erasure removes the rows with the subject.
CREATE TABLE rights_outbox (
    request_id text   PRIMARY KEY,
    subject    bytea  NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    sealed     bytea  NOT NULL
);
-- Erasing, merging or unmerging a subject deletes its row, which cascades here: indexed so the
-- cascade does not scan the outbox.
CREATE INDEX rights_outbox_subject ON rights_outbox (subject);
