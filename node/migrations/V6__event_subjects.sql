-- A gone subject's change events go with it (invariant 6; node/src/store/change.rs,
-- `Recorded::retires`): a write that retires a subject (an erasure, the merged-away half of a
-- merge, the merged subject of an unmerge) deletes the subject's earlier events in its own
-- transaction; only its `ERASED` event stays, which followers need to drop its links.
--   events.subject   the subject the event names; NULL for an event written before this
--                    migration (or by a binary without it), filled in by a pass each node starts
--                    (node/src/store/pg_store/retire.rs), which also applies the rule to them.
--   retired_subjects each subject retired, and the sequence of the event that retired it: what
--                    that pass deletes for events it fills in after the subject was retired.
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE events ADD COLUMN subject bytea;

CREATE INDEX events_subject ON events (subject, sequence) WHERE subject IS NOT NULL;
CREATE INDEX events_unindexed ON events (sequence) WHERE subject IS NULL;

CREATE TABLE retired_subjects (
    subject  bytea  PRIMARY KEY,
    sequence bigint NOT NULL
);
