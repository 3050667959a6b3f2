-- A region's state on PostgreSQL (node/src/store/pg_store). Plain SQL, no extensions: every
-- statement here also runs on PostgreSQL-compatible distributed engines (ARCHITECTURE.md notes
-- what needs care there). Byte strings are `bytea`; times are unix seconds (`bigint`); sealed
-- values are AES-256-GCM under the subject's key, as in the embedded store.

-- One row: what serialises a region's writes across replicas. Every write transaction locks it
-- first (SELECT ... FOR UPDATE), so change-event sequences and the audit chain follow commit
-- order, and checks such as "no subject holds this link" hold until commit.
CREATE TABLE region_head (
    id              smallint PRIMARY KEY CHECK (id = 1),
    region          text     NOT NULL,
    last_event      bigint   NOT NULL DEFAULT 0,   -- last change-event sequence
    ledger_position bigint   NOT NULL DEFAULT 0,   -- last consent-ledger position
    log_position    bigint   NOT NULL DEFAULT 0,   -- last interaction / rights-request position
    audit_seq       bigint   NOT NULL DEFAULT 0,   -- last audit entry
    audit_hash      text     NOT NULL,             -- its hash (genesis: 64 zeros)
    generation      bigint   NOT NULL DEFAULT 0    -- last claim fencing generation
);

-- Per-subject data keys, wrapped (AES-256-GCM) under the region's key-encryption key `kek`
-- (a file beside the node, never in the database). Erasure deletes the row; copies of it left in
-- dead tuples, WAL, standbys and backups stay unreadable once the KEK they were wrapped with is
-- rotated away (deploy/README.md, "Erasure on PostgreSQL").
CREATE TABLE subject_keys (
    subject bytea   PRIMARY KEY,
    kek     integer NOT NULL,          -- which KEK version wraps it
    wrapped bytea   NOT NULL
);

CREATE TABLE subjects (
    id           bytea   PRIMARY KEY,
    jurisdiction text    NOT NULL,
    created_at   bigint  NOT NULL,
    restricted   boolean NOT NULL DEFAULT false,
    record       bytea                          -- sealed identifiers and profile
);

CREATE TABLE links (
    link    bytea PRIMARY KEY,
    subject bytea NOT NULL REFERENCES subjects (id) ON DELETE CASCADE
);
CREATE INDEX links_subject ON links (subject);

-- The consent ledger (append-only per subject) and the record in force per purpose x channel.
CREATE TABLE consent (
    subject  bytea  NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    position bigint NOT NULL,
    sealed   bytea  NOT NULL,
    PRIMARY KEY (subject, position)
);

CREATE TABLE current_consent (
    subject bytea NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    purpose text  NOT NULL,
    channel text  NOT NULL,
    sealed  bytea NOT NULL,
    PRIMARY KEY (subject, purpose, channel)
);

CREATE TABLE interactions (
    subject  bytea  NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    sequence bigint NOT NULL,
    sealed   bytea  NOT NULL,
    PRIMARY KEY (subject, sequence)
);

CREATE TABLE rights_requests (
    subject  bytea  NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    sequence bigint NOT NULL,
    sealed   bytea  NOT NULL,
    PRIMARY KEY (subject, sequence)
);

-- Change events (pseudonymous: links and vocabulary values), in commit order.
CREATE TABLE events (
    sequence bigint PRIMARY KEY,
    body     bytea  NOT NULL
);

-- Identifier ownership: claims this region arbitrates, its own held links' generations, and the
-- releases it still has to send.
CREATE TABLE claims (
    link       bytea  PRIMARY KEY,
    region     text   NOT NULL,
    generation bigint NOT NULL
);

CREATE TABLE held (
    link       bytea  PRIMARY KEY,
    generation bigint NOT NULL
);

CREATE TABLE releases (
    link       bytea  NOT NULL,
    generation bigint NOT NULL,
    PRIMARY KEY (link, generation)
);

-- A write's result under its idempotency key, sealed with its subject's key (none: an erasure's).
CREATE TABLE idempotency (
    key         bytea  PRIMARY KEY,
    fingerprint bytea  NOT NULL,
    at          bigint NOT NULL,
    subject     bytea,
    result      bytea
);
CREATE INDEX idempotency_at ON idempotency (at);

-- The region's audit log: the same canonical lines as `audit.log` (domicile-audit), one hash
-- chain, appended in the transaction of the change they record.
CREATE TABLE audit (
    seq  bigint PRIMARY KEY,
    line text   NOT NULL
);
