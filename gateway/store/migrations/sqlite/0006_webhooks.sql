-- Merchants' webhook endpoints. The secret signs every delivery (HMAC-SHA256) and so must be readable by
-- the dispatcher; it is never logged and shown to the merchant only when created or rotated. During a
-- rotation the previous secret keeps signing (a second v1 value) until previous_secret_expires_at.
CREATE TABLE webhook_endpoints (
    id                          TEXT PRIMARY KEY,
    merchant_id                 TEXT NOT NULL REFERENCES merchants(id),
    url                         TEXT NOT NULL,
    event_types                 TEXT NOT NULL,      -- JSON array; ["*"] = every event
    description                 TEXT,
    status                      TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  TEXT,
    disabled_reason             TEXT,
    disabled_at                 TEXT,
    failing_since               TEXT,               -- first failure since the last success
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL,
    deleted_at                  TEXT
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints(merchant_id, created_at);

-- One delivery = one event to one endpoint, retried until it succeeds or the schedule is used up. Written by
-- the fan-out consumer in the same transaction as its outbox cursor, so an event never loses a delivery.
-- A claim sets lease_until; a process that dies mid-attempt leaves the lease to run out, and the delivery
-- is attempted again (at least once, never lost).
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id),
    merchant_id      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    lease_until      TEXT,
    reason           TEXT NOT NULL CHECK (reason IN ('event', 'redeliver')),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);

-- Every attempt, with what the receiver answered (or why nothing was sent), for GET .../deliveries.
CREATE TABLE webhook_attempts (
    id               TEXT PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries(id),
    event_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    attempted_at     TEXT NOT NULL,
    succeeded        INTEGER NOT NULL,
    response_status  INTEGER,
    latency_ms       INTEGER,
    error            TEXT
);
CREATE INDEX webhook_attempts_event ON webhook_attempts(event_id, attempted_at);
