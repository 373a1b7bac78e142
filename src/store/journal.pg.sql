-- The journal in PostgreSQL (`[journal] url`): the tables of journal.sql with PostgreSQL's
-- types, shared by every replica, plus the reconciliation leases. Written by
-- src/store/journal/postgres.rs, read by the daily report (src/report/postgres.rs). Card data
-- never appears beyond the first six and last four digits. Times are milliseconds since the
-- Unix epoch (UTC); amounts are minor units.

CREATE TABLE IF NOT EXISTS payments (
    id              TEXT PRIMARY KEY,
    merchant        TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    method          TEXT NOT NULL,
    country         TEXT,
    status          TEXT NOT NULL,             -- succeeded | declined | pending | failed
    channel         TEXT,                      -- the channel that answered last
    psp_reference   TEXT,
    decline_code    TEXT,
    card_bin        TEXT,
    card_last4      TEXT,
    captured_amount BIGINT NOT NULL DEFAULT 0,
    refunded_amount BIGINT NOT NULL DEFAULT 0,
    reconciled      BOOLEAN NOT NULL DEFAULT FALSE,
    in_doubt        BOOLEAN NOT NULL DEFAULT FALSE, -- it or a capture or refund of it is pending
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    record          TEXT NOT NULL              -- the whole stored payment as JSON (masked card)
);
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at_ms);
-- Read in order with a plain index scan, which marks the entries of payments no longer in
-- doubt as dead so that later scans skip them, and inserts reclaim them, even before a
-- VACUUM. (A first version indexed the flag alone, read with a bitmap scan that revisits every
-- payment that was ever in doubt until a VACUUM.)
DROP INDEX IF EXISTS payments_in_doubt;
CREATE INDEX IF NOT EXISTS payments_in_doubt_since ON payments (created_at_ms) WHERE in_doubt;

CREATE TABLE IF NOT EXISTS attempts (
    payment_id   TEXT NOT NULL,
    number       BIGINT NOT NULL,              -- 1 for the first attempt of the payment
    merchant     TEXT NOT NULL,
    channel      TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    decline_code TEXT,
    latency_ms   BIGINT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    method       TEXT NOT NULL,
    country      TEXT,
    failover     BOOLEAN NOT NULL,
    at_ms        BIGINT NOT NULL,
    PRIMARY KEY (payment_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at_ms);

CREATE TABLE IF NOT EXISTS events (
    at_ms   BIGINT NOT NULL,
    kind    TEXT NOT NULL,                     -- ejection | drain | enable | reload
    channel TEXT,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);
-- Unique per event, so that a batch written again after a lost commit answer adds no event
-- twice (NULL in events written before the column existed).
ALTER TABLE events ADD COLUMN IF NOT EXISTS id TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (id);

CREATE TABLE IF NOT EXISTS idempotency (
    scope         TEXT PRIMARY KEY,
    request_hash  BYTEA NOT NULL,
    status        INTEGER NOT NULL,
    body          BYTEA NOT NULL,
    channel       TEXT,
    expires_at_ms BIGINT NOT NULL,
    target        TEXT
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at_ms);

-- Which replica may change a payment (a capture, refund or cancel, a webhook's settlement)
-- or ask a PSP about it while it is in doubt, until when (the database's clock).
CREATE TABLE IF NOT EXISTS leases (
    payment_id TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    until_ms   BIGINT NOT NULL
);
