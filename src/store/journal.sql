-- The journal: every payment and every attempt, plus channel events. Shared by the journal
-- writer (src/store/journal.rs) and the daily report (src/report/). Card data never appears
-- beyond the first six and last four digits. Times are milliseconds since the Unix epoch (UTC).

-- One row per payment, at its latest state, and one per attempt: every field of a payment is
-- a column (no JSON copy of them), the rare nested parts (a 3-D Secure action, captures and
-- refunds) as JSON. Both tables are keyed by the payment's id (a ULID, so new rows go to the
-- end of the tree) without a separate rowid tree. Journals written before this form are
-- converted at start (`sqlite.rs`).
CREATE TABLE IF NOT EXISTS payments (
    id                TEXT PRIMARY KEY,
    merchant          TEXT NOT NULL,
    amount            INTEGER NOT NULL,          -- minor units
    currency          TEXT NOT NULL,
    method            TEXT NOT NULL,
    country           TEXT,
    reference         TEXT,                      -- the merchant's
    status            TEXT NOT NULL,             -- succeeded | declined | pending | failed
    channel           TEXT,                      -- the channel that answered last
    psp_reference     TEXT,
    decline_code      TEXT,
    card_bin          TEXT,
    card_last4        TEXT,
    next_action       TEXT,                      -- JSON: what the shopper must do, while pending
    captured_amount   INTEGER NOT NULL DEFAULT 0,
    refunded_amount   INTEGER NOT NULL DEFAULT 0,
    capture           INTEGER NOT NULL DEFAULT 0, -- 1: captured with the authorization
    reconciled        INTEGER NOT NULL DEFAULT 0, -- 1 once a pending payment got its final status
    in_doubt          INTEGER NOT NULL DEFAULT 0, -- 1 while it or a capture or refund of it is pending
    in_doubt_until_ms INTEGER,                   -- while its call may still be on its way
    operations        TEXT,                      -- JSON: its captures, refunds and cancels; NULL while none
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at_ms);
CREATE INDEX IF NOT EXISTS payments_in_doubt ON payments (in_doubt) WHERE in_doubt = 1;

CREATE TABLE IF NOT EXISTS attempts (
    payment_id    TEXT NOT NULL,
    number        INTEGER NOT NULL,             -- 1 for the first attempt of the payment
    merchant      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    outcome       TEXT NOT NULL,                -- succeeded | declined | pending | unavailable | error | timeout
    decline_code  TEXT,                         -- normalized
    psp_code      TEXT,                         -- the PSP's own, when it differs
    psp_reference TEXT,
    latency_ms    INTEGER NOT NULL,
    amount        INTEGER NOT NULL,
    currency      TEXT NOT NULL,
    method        TEXT NOT NULL,
    country       TEXT,
    failover      INTEGER NOT NULL,             -- 1 when an earlier attempt of the payment failed over to this one
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (payment_id, number)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    at_ms   INTEGER NOT NULL,
    kind    TEXT NOT NULL,                     -- ejection | drain | enable | reload
    channel TEXT,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);

-- Idempotency records (src/store/keys.rs): for each merchant's key, the payment it made
-- (written before the payment's first PSP call) or the first answer, replayed to a repeat
-- until it expires, across restarts.
CREATE TABLE IF NOT EXISTS idempotency (
    scope         TEXT PRIMARY KEY,            -- length of the merchant id, ':', merchant id, key
    request_hash  BLOB NOT NULL,               -- SHA-256 of method, path and body
    status        INTEGER NOT NULL,            -- HTTP status of the first answer; 0 with a target
    body          BLOB NOT NULL,               -- the first answer (masked card at most); empty with a target
    channel       TEXT,
    expires_at_ms INTEGER NOT NULL,
    target        TEXT                         -- what the key made: pay_... or pay_.../cap_... (answered as it stands)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at_ms);
