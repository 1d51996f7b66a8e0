-- Money that reached an invoice address but cannot count for the invoice: a token the gateway does not
-- accept (a Transfer log of another contract), or an asset the invoice was not offered in (ETH sent to an
-- invoice that asked for USDT only). Kept so that support can see it and the merchant can refund it; it
-- never moves the invoice. PostgreSQL form of sqlite/0003_unaccounted_payments.sql.
CREATE TABLE unaccounted_payments (
    chain         TEXT COLLATE "C" NOT NULL,
    payment_key   TEXT COLLATE "C" NOT NULL,                  -- tx_hash or tx_hash:log_index
    invoice_id    TEXT COLLATE "C" NOT NULL REFERENCES invoices(id),
    address       TEXT COLLATE "C" NOT NULL,
    contract      TEXT COLLATE "C",                           -- the token contract, for token transfers
    asset         TEXT COLLATE "C",                           -- the asset when it is one the gateway knows
    amount_minor  TEXT COLLATE "C" NOT NULL,
    reason        TEXT COLLATE "C" NOT NULL CHECK (reason IN ('unknown_token', 'asset_not_accepted')),
    payer         TEXT COLLATE "C",
    block_hash    TEXT COLLATE "C",
    block_height  BIGINT,
    detected_at   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain, payment_key)
);
CREATE INDEX unaccounted_payments_invoice ON unaccounted_payments(invoice_id);
