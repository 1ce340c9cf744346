-- Schema version 1: the shared queue (petrel.queue.pg).
-- Plain PostgreSQL types and statements that CockroachDB and YugabyteDB accept too.

CREATE TABLE petrel_message (
    queue_id     TEXT PRIMARY KEY,
    envelope     TEXT NOT NULL,             -- the Envelope JSON as committed
    received_at  DOUBLE PRECISION NOT NULL,
    body_size    BIGINT NOT NULL,
    body_crc     BIGINT NOT NULL,           -- CRC-32 of the message bytes
    hold         BOOLEAN NOT NULL DEFAULT FALSE,
    forced       BOOLEAN NOT NULL DEFAULT FALSE,  -- flush/ETRN: try every open recipient
    doomed       BOOLEAN NOT NULL DEFAULT FALSE,  -- deleted during an attempt
    next_attempt DOUBLE PRECISION,          -- earliest open recipient (epoch); NULL: none
    lease_node   TEXT,                      -- the node whose attempt owns the message
    lease_until  TIMESTAMPTZ,               -- ... until then (database clock)
    fence        BIGINT NOT NULL DEFAULT 0  -- +1 per lease: a stale outcome is refused
);

CREATE INDEX petrel_message_due ON petrel_message (next_attempt);

CREATE TABLE petrel_recipient (
    queue_id     TEXT NOT NULL REFERENCES petrel_message (queue_id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL,
    next_attempt DOUBLE PRECISION NOT NULL,
    detail       TEXT NOT NULL,             -- the Recipient as JSON (its DSN fields)
    PRIMARY KEY (queue_id, idx)
);

CREATE TABLE petrel_chunk (
    queue_id TEXT NOT NULL REFERENCES petrel_message (queue_id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    data     BYTEA NOT NULL,
    PRIMARY KEY (queue_id, seq)
);
