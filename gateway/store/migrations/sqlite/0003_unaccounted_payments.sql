-- Money that reached an invoice address but cannot count for the invoice: a token the gateway does not
-- accept (a Transfer log of another contract), or an asset the invoice was not offered in (ETH sent to an
-- invoice that asked for USDT only). Kept so that support can see it and the merchant can refund it; it
-- never moves the invoice.
CREATE TABLE unaccounted_payments (
    chain         TEXT NOT NULL,
    payment_key   TEXT NOT NULL,                  -- tx_hash or tx_hash:log_index
    invoice_id    TEXT NOT NULL REFERENCES invoices(id),
    address       TEXT NOT NULL,
    contract      TEXT,                           -- the token contract, for token transfers
    asset         TEXT,                           -- the asset when it is one the gateway knows
    amount_minor  TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('unknown_token', 'asset_not_accepted')),
    payer         TEXT,
    block_hash    TEXT,
    block_height  INTEGER,
    detected_at   TEXT NOT NULL,
    PRIMARY KEY (chain, payment_key)
);
CREATE INDEX unaccounted_payments_invoice ON unaccounted_payments(invoice_id);
