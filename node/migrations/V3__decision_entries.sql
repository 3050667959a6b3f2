-- Decisions' audit entries waiting to be chained (node/src/store/pg_store/decisions.rs): stored
-- before a decision is answered, moved into `audit` by the next write (under the region head's
-- lock, before the write's own entries) or by a replica's chainer within about 20 ms.
CREATE TABLE decision_entries (
    id   bigserial PRIMARY KEY,
    at   bigint    NOT NULL,   -- when the decisions were made (unix seconds)
    body bytea     NOT NULL    -- the decisions (JSON)
);
