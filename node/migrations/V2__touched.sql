-- Which subjects each write changed, in commit order: what keeps every replica's read cache of
-- decision inputs exact (node/src/store/pg_store/fresh.rs). Before it reads its cache, a decision
-- reads the rows after the last one its replica has applied, in a statement sent after the
-- decision arrived, and drops those subjects from the cache: a write acknowledged by any replica
-- is never answered from a cached value it changed. `touch_seq` is numbered under the region
-- head's lock, so the rows become visible in sequence order. Old rows are pruned; a replica that
-- finds a gap after its last applied row empties its cache.
ALTER TABLE region_head ADD COLUMN touch_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE touched (
    seq     bigint PRIMARY KEY,
    subject bytea  NOT NULL
);
