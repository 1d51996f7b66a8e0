-- The digital-tenge ledger of the sandbox (sandbox/ledger): an append-only double-entry journal in tiyn.
-- Generated from sandbox.ledger.store.LEDGER_SCHEMA_SQL (a test keeps the two equal). The store has no
-- per-extension migrations yet, so the sandbox's tables are created with the gateway's.

CREATE TABLE ledger_entries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- journal order
    id               TEXT NOT NULL UNIQUE,               -- le_ + hash(outbox event id, leg): re-posting is a no-op
    event_id         TEXT NOT NULL,                      -- the outbox event that caused it
    event_type       TEXT NOT NULL,
    leg              TEXT NOT NULL,                      -- settle, reversal, hold, ... (sandbox/ledger/model.py)
    invoice_id       TEXT,
    invoice_version  INTEGER,
    merchant_id      TEXT,
    payment_key      TEXT,
    posted_at        TEXT NOT NULL,                      -- the event's created_at (domain clock), RFC 3339 UTC
    UNIQUE (event_id, leg)
);

CREATE INDEX ledger_entries_merchant ON ledger_entries(merchant_id, seq);

CREATE INDEX ledger_entries_invoice ON ledger_entries(invoice_id, seq);

CREATE TABLE ledger_lines (
    entry_seq    INTEGER NOT NULL REFERENCES ledger_entries(seq),
    line_no      INTEGER NOT NULL CHECK (line_no >= 0),
    account      TEXT NOT NULL,
    amount_tiyn  INTEGER NOT NULL CHECK (amount_tiyn <> 0),  -- > 0 into the account, < 0 out of it
    posted_at    TEXT NOT NULL,                              -- copied from the entry, for statements
    PRIMARY KEY (entry_seq, line_no),
    UNIQUE (entry_seq, account)
);

CREATE INDEX ledger_lines_account ON ledger_lines(account, posted_at, entry_seq);

CREATE TABLE ledger_balances (
    account         TEXT PRIMARY KEY,
    balance_tiyn    INTEGER NOT NULL,    -- always equals SUM(ledger_lines.amount_tiyn) for the account
    line_count      INTEGER NOT NULL,
    last_entry_seq  INTEGER NOT NULL
);

CREATE TABLE ledger_invoices (
    invoice_id   TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    last_seq     INTEGER NOT NULL,       -- outbox seq of the last event booked for the invoice
    version      INTEGER NOT NULL,       -- its invoice version
    settled      INTEGER NOT NULL CHECK (settled IN (0, 1)),
    state        TEXT NOT NULL,          -- JSON: sandbox.ledger.model.InvoiceBook
    updated_at   TEXT NOT NULL           -- created_at of that event
);

CREATE INDEX ledger_invoices_merchant ON ledger_invoices(merchant_id, settled);

CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;

CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;

CREATE TRIGGER ledger_lines_append_only_update BEFORE UPDATE ON ledger_lines BEGIN SELECT RAISE(ABORT, 'ledger_lines is append-only'); END;

CREATE TRIGGER ledger_lines_append_only_delete BEFORE DELETE ON ledger_lines BEGIN SELECT RAISE(ABORT, 'ledger_lines is append-only'); END;
