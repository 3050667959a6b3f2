-- The import index on PostgreSQL (node/src/store/pg_store/imports.rs): each ledger entry keeps the
-- digest of its source event under the subject's key (node/src/store/import_source.rs), so an
-- import checks an entry with an index lookup, not by opening the subject's whole ledger.
--   NULL       an entry written before this migration (or by a binary without it): not yet
--              classified; lookups open (and classify) these entries, and a node classifies
--              them in the background after it starts.
--   '' (empty) not imported.
--   16 bytes   the digest of the imported entry's source event.
-- Adding a nullable column without a default rewrites nothing; the background pass gives every
-- older row a new version (each of its updates touches an indexed column).
ALTER TABLE consent ADD COLUMN import_source bytea;

CREATE INDEX consent_import_source ON consent (subject, import_source) WHERE octet_length(import_source) > 0;
-- In (subject, position) order: the background pass pages through it by key.
CREATE INDEX consent_unclassified ON consent (subject, position) WHERE import_source IS NULL;
