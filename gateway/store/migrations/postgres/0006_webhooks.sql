-- Merchants' webhook endpoints, deliveries and attempts. PostgreSQL form of sqlite/0006_webhooks.sql.

-- The secret signs every delivery (HMAC-SHA256) and so must be readable by the dispatcher; it is never
-- logged and shown to the merchant only when created or rotated. During a rotation the previous secret
-- keeps signing (a second v1 value) until previous_secret_expires_at.
CREATE TABLE webhook_endpoints (
    id                          TEXT COLLATE "C" PRIMARY KEY,
    merchant_id                 TEXT COLLATE "C" NOT NULL REFERENCES merchants(id),
    url                         TEXT COLLATE "C" NOT NULL,
    event_types                 TEXT COLLATE "C" NOT NULL,      -- JSON array; ["*"] = every event
    description                 TEXT COLLATE "C",
    status                      TEXT COLLATE "C" NOT NULL CHECK (status IN ('enabled', 'disabled')),
    secret                      TEXT COLLATE "C" NOT NULL,
    previous_secret             TEXT COLLATE "C",
    previous_secret_expires_at  TEXT COLLATE "C",
    disabled_reason             TEXT COLLATE "C",
    disabled_at                 TEXT COLLATE "C",
    failing_since               TEXT COLLATE "C",               -- first failure since the last success
    created_at                  TEXT COLLATE "C" NOT NULL,
    updated_at                  TEXT COLLATE "C" NOT NULL,
    deleted_at                  TEXT COLLATE "C"
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints(merchant_id, created_at);

-- One delivery = one event to one endpoint, retried until it succeeds or the schedule is used up. Written by
-- the fan-out consumer in the same transaction as its outbox cursor, so an event never loses a delivery.
-- A claim sets lease_until; a process that dies mid-attempt leaves the lease to run out, and the delivery
-- is attempted again (at least once, never lost).
CREATE TABLE webhook_deliveries (
    id               TEXT COLLATE "C" PRIMARY KEY,
    event_id         TEXT COLLATE "C" NOT NULL,
    endpoint_id      TEXT COLLATE "C" NOT NULL REFERENCES webhook_endpoints(id),
    merchant_id      TEXT COLLATE "C" NOT NULL,
    status           TEXT COLLATE "C" NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  TEXT COLLATE "C",
    lease_until      TEXT COLLATE "C",
    reason           TEXT COLLATE "C" NOT NULL CHECK (reason IN ('event', 'redeliver')),
    created_at       TEXT COLLATE "C" NOT NULL,
    updated_at       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);

-- Every attempt, with what the receiver answered (or why nothing was sent), for GET .../deliveries.
CREATE TABLE webhook_attempts (
    id               TEXT COLLATE "C" PRIMARY KEY,
    delivery_id      TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries(id),
    event_id         TEXT COLLATE "C" NOT NULL,
    endpoint_id      TEXT COLLATE "C" NOT NULL,
    attempt          BIGINT NOT NULL,
    attempted_at     TEXT COLLATE "C" NOT NULL,
    succeeded        BIGINT NOT NULL,
    response_status  BIGINT,
    latency_ms       BIGINT,
    error            TEXT COLLATE "C"
);
CREATE INDEX webhook_attempts_event ON webhook_attempts(event_id, attempted_at);
