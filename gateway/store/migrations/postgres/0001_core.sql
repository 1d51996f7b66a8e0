-- Gateway core, PostgreSQL form of sqlite/0001_core.sql: the same tables, columns, keys and indexes.
-- Types are chosen so that rows come back as the same Python values as on SQLite: INTEGER is BIGINT (the
-- 64 bits SQLite integers have), text is TEXT. Crypto amounts stay TEXT holding a decimal integer (wei
-- exceeds 64 bits); tenge is BIGINT tiyn. Times stay RFC 3339 UTC text with milliseconds, which sorts
-- correctly. Every text column is COLLATE "C" so that comparisons and ORDER BY follow code points, as
-- SQLite's BINARY collation does, whatever the database's default collation is (ids and times are
-- paginated by text comparison).

CREATE TABLE merchants (
    id                      TEXT COLLATE "C" PRIMARY KEY,
    name                    TEXT COLLATE "C" NOT NULL,
    btc_account_key         TEXT COLLATE "C",
    eth_account_key         TEXT COLLATE "C",
    accepted_assets         TEXT COLLATE "C" NOT NULL,          -- JSON array of asset codes
    default_expiry_seconds  BIGINT,
    status                  TEXT COLLATE "C" NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at              TEXT COLLATE "C" NOT NULL,
    updated_at              TEXT COLLATE "C" NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" PRIMARY KEY,
    merchant_id  TEXT COLLATE "C" NOT NULL REFERENCES merchants(id),
    lookup       TEXT COLLATE "C" NOT NULL UNIQUE,       -- the public part of the key, used to find the row
    secret_hash  TEXT COLLATE "C" NOT NULL,              -- hex SHA-256 of the whole key
    label        TEXT COLLATE "C" NOT NULL DEFAULT '',
    created_at   TEXT COLLATE "C" NOT NULL,
    revoked_at   TEXT COLLATE "C"
);
CREATE INDEX api_keys_merchant ON api_keys(merchant_id);

-- One derivation counter per extended public key, so two merchants registering the same key still
-- never get the same address.
CREATE TABLE address_counters (
    chain        TEXT COLLATE "C" NOT NULL,
    account_key  TEXT COLLATE "C" NOT NULL,
    next_index   BIGINT NOT NULL CHECK (next_index >= 0),
    PRIMARY KEY (chain, account_key)
);

CREATE TABLE invoices (
    id              TEXT COLLATE "C" PRIMARY KEY,
    merchant_id     TEXT COLLATE "C" NOT NULL REFERENCES merchants(id),
    status          TEXT COLLATE "C" NOT NULL CHECK (status IN ('new', 'processing', 'settled', 'expired', 'cancelled', 'reversed')),
    flags           TEXT COLLATE "C" NOT NULL DEFAULT '[]',     -- JSON array, sorted
    price_tiyn      BIGINT NOT NULL CHECK (price_tiyn > 0),
    currency        TEXT COLLATE "C" NOT NULL CHECK (currency = 'KZT'),
    tolerance       TEXT COLLATE "C" NOT NULL,
    order_id        TEXT COLLATE "C",
    description     TEXT COLLATE "C",
    metadata        TEXT COLLATE "C",                           -- JSON object
    redirect_url    TEXT COLLATE "C",
    quote           TEXT COLLATE "C" NOT NULL,                  -- JSON: the locked quote, never changed
    payment_methods TEXT COLLATE "C" NOT NULL,                  -- JSON: per asset address, index, amount due, URI
    state           TEXT COLLATE "C" NOT NULL,                  -- JSON: the lifecycle state (payments, terms, version)
    version         BIGINT NOT NULL,
    created_at      TEXT COLLATE "C" NOT NULL,
    updated_at      TEXT COLLATE "C" NOT NULL,
    expires_at      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX invoices_merchant_created ON invoices(merchant_id, created_at DESC, id DESC);
CREATE INDEX invoices_merchant_order ON invoices(merchant_id, order_id);
CREATE INDEX invoices_open_expiry ON invoices(expires_at) WHERE status = 'new';

-- One address per invoice per chain (ETH and the token share it); watchers find invoices by address.
CREATE TABLE invoice_addresses (
    chain             TEXT COLLATE "C" NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    invoice_id        TEXT COLLATE "C" NOT NULL REFERENCES invoices(id),
    account_key       TEXT COLLATE "C" NOT NULL,
    derivation_index  BIGINT NOT NULL,
    PRIMARY KEY (chain, address),
    UNIQUE (chain, account_key, derivation_index)
);
CREATE INDEX invoice_addresses_invoice ON invoice_addresses(invoice_id);

CREATE TABLE payments (
    id              TEXT COLLATE "C" PRIMARY KEY,
    invoice_id      TEXT COLLATE "C" NOT NULL REFERENCES invoices(id),
    chain           TEXT COLLATE "C" NOT NULL,
    payment_key     TEXT COLLATE "C" NOT NULL,                  -- the chain's natural key: txid:vout or tx_hash[:log_index]
    asset           TEXT COLLATE "C" NOT NULL,
    address         TEXT COLLATE "C" NOT NULL,
    amount_minor    TEXT COLLATE "C" NOT NULL,
    confirmations   BIGINT NOT NULL CHECK (confirmations >= 0),
    status          TEXT COLLATE "C" NOT NULL,
    rbf_signalling  BIGINT NOT NULL DEFAULT 0,
    late            BIGINT NOT NULL DEFAULT 0,
    hold_reason     TEXT COLLATE "C",
    payer           TEXT COLLATE "C",
    block_hash      TEXT COLLATE "C",
    block_height    BIGINT,
    detected_at     TEXT COLLATE "C" NOT NULL,
    updated_at      TEXT COLLATE "C" NOT NULL,
    UNIQUE (chain, payment_key)
);
CREATE INDEX payments_invoice ON payments(invoice_id);

-- The transactional outbox: every state change writes its event here in the same transaction.
-- seq orders events; consumers (webhooks, ledger, audit, metrics, SSE) keep their own cursor. With
-- concurrent transactions a sequence alone would hand out numbers in start order, not commit order, and a
-- consumer could step over a row with a lower seq that commits later: the PostgreSQL store therefore
-- serialises outbox inserts with a transaction-level advisory lock held until commit (gateway/store/postgres.py).
CREATE TABLE outbox (
    seq              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id               TEXT COLLATE "C" NOT NULL UNIQUE,
    type             TEXT COLLATE "C" NOT NULL,
    merchant_id      TEXT COLLATE "C",
    invoice_id       TEXT COLLATE "C",
    invoice_version  BIGINT,
    created_at       TEXT COLLATE "C" NOT NULL,
    payload          TEXT COLLATE "C" NOT NULL                  -- JSON: the whole event as consumers receive it
);
CREATE INDEX outbox_invoice ON outbox(invoice_id, seq);
CREATE INDEX outbox_merchant ON outbox(merchant_id, seq);

CREATE TABLE consumer_cursors (
    consumer    TEXT COLLATE "C" PRIMARY KEY,
    position    BIGINT NOT NULL,
    updated_at  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE idempotency_keys (
    merchant_id    TEXT COLLATE "C" NOT NULL REFERENCES merchants(id),
    key            TEXT COLLATE "C" NOT NULL,
    request_hash   TEXT COLLATE "C" NOT NULL,
    status_code    BIGINT NOT NULL,
    response_event TEXT COLLATE "C" NOT NULL,                   -- the outbox event whose data.invoice is the answer
    created_at     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
