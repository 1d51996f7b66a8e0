-- Gateway core: merchants, API keys, invoices, addresses, payments, outbox, idempotency.
-- Rows per invoice creation are kept few on purpose: each row costs the single writer time.
-- Crypto amounts are TEXT holding a decimal integer (wei exceeds 64 bits); tenge is INTEGER tiyn.
-- Times are RFC 3339 UTC text with milliseconds ("2026-11-23T12:00:00.000Z"), which sorts correctly.

CREATE TABLE merchants (
    id                      TEXT PRIMARY KEY,
    name                    TEXT NOT NULL,
    btc_account_key         TEXT,
    eth_account_key         TEXT,
    accepted_assets         TEXT NOT NULL,          -- JSON array of asset codes
    default_expiry_seconds  INTEGER,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants(id),
    lookup       TEXT NOT NULL UNIQUE,               -- the public part of the key, used to find the row
    secret_hash  TEXT NOT NULL,                      -- hex SHA-256 of the whole key
    label        TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX api_keys_merchant ON api_keys(merchant_id);

-- One derivation counter per extended public key, so two merchants registering the same key still
-- never get the same address.
CREATE TABLE address_counters (
    chain        TEXT NOT NULL,
    account_key  TEXT NOT NULL,
    next_index   INTEGER NOT NULL CHECK (next_index >= 0),
    PRIMARY KEY (chain, account_key)
);

CREATE TABLE invoices (
    id              TEXT PRIMARY KEY,
    merchant_id     TEXT NOT NULL REFERENCES merchants(id),
    status          TEXT NOT NULL CHECK (status IN ('new', 'processing', 'settled', 'expired', 'cancelled', 'reversed')),
    flags           TEXT NOT NULL DEFAULT '[]',     -- JSON array, sorted
    price_tiyn      INTEGER NOT NULL CHECK (price_tiyn > 0),
    currency        TEXT NOT NULL CHECK (currency = 'KZT'),
    tolerance       TEXT NOT NULL,
    order_id        TEXT,
    description     TEXT,
    metadata        TEXT,                           -- JSON object
    redirect_url    TEXT,
    quote           TEXT NOT NULL,                  -- JSON: the locked quote, never changed
    payment_methods TEXT NOT NULL,                  -- JSON: per asset address, index, amount due, URI
    state           TEXT NOT NULL,                  -- JSON: the lifecycle state (payments, terms, version)
    version         INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL
);
CREATE INDEX invoices_merchant_created ON invoices(merchant_id, created_at DESC, id DESC);
CREATE INDEX invoices_merchant_order ON invoices(merchant_id, order_id);
CREATE INDEX invoices_open_expiry ON invoices(expires_at) WHERE status = 'new';

-- One address per invoice per chain (ETH and the token share it); watchers find invoices by address.
CREATE TABLE invoice_addresses (
    chain             TEXT NOT NULL,
    address           TEXT NOT NULL,
    invoice_id        TEXT NOT NULL REFERENCES invoices(id),
    account_key       TEXT NOT NULL,
    derivation_index  INTEGER NOT NULL,
    PRIMARY KEY (chain, address),
    UNIQUE (chain, account_key, derivation_index)
);
CREATE INDEX invoice_addresses_invoice ON invoice_addresses(invoice_id);

CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices(id),
    chain           TEXT NOT NULL,
    payment_key     TEXT NOT NULL,                  -- the chain's natural key: txid:vout or tx_hash[:log_index]
    asset           TEXT NOT NULL,
    address         TEXT NOT NULL,
    amount_minor    TEXT NOT NULL,
    confirmations   INTEGER NOT NULL CHECK (confirmations >= 0),
    status          TEXT NOT NULL,
    rbf_signalling  INTEGER NOT NULL DEFAULT 0,
    late            INTEGER NOT NULL DEFAULT 0,
    hold_reason     TEXT,
    payer           TEXT,
    block_hash      TEXT,
    block_height    INTEGER,
    detected_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (chain, payment_key)
);
CREATE INDEX payments_invoice ON payments(invoice_id);

-- The transactional outbox: every state change writes its event here in the same transaction.
-- seq orders events; consumers (webhooks, ledger, audit, metrics, SSE) keep their own cursor.
CREATE TABLE outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    type             TEXT NOT NULL,
    merchant_id      TEXT,
    invoice_id       TEXT,
    invoice_version  INTEGER,
    created_at       TEXT NOT NULL,
    payload          TEXT NOT NULL                  -- JSON: the whole event as consumers receive it
);
CREATE INDEX outbox_invoice ON outbox(invoice_id, seq);
CREATE INDEX outbox_merchant ON outbox(merchant_id, seq);

CREATE TABLE consumer_cursors (
    consumer    TEXT PRIMARY KEY,
    position    INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE idempotency_keys (
    merchant_id    TEXT NOT NULL REFERENCES merchants(id),
    key            TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    status_code    INTEGER NOT NULL,
    response_event TEXT NOT NULL,                   -- the outbox event whose data.invoice is the answer
    created_at     TEXT NOT NULL,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
