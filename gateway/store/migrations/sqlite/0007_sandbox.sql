-- The regulatory sandbox (sandbox/): residents, their wallets, merchants' category and licence, every
-- payment the sandbox policy judged, and the regulator's API tokens. The gateway never reads these; the
-- sandbox reaches the gateway only through its extension points.

-- Residents are pseudonymous: the KYC provider keeps who they are; the sandbox keeps the tier and whether
-- travel-rule originator data is on file there.
CREATE TABLE residents (
    id               TEXT PRIMARY KEY,
    tier             TEXT NOT NULL CHECK (tier IN ('anonymous', 'basic', 'verified')),
    originator_data  INTEGER NOT NULL DEFAULT 0 CHECK (originator_data IN (0, 1)),
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

-- A wallet a resident registered: a Bitcoin output script (hex; P2WPKH is what the watcher recovers from
-- witnesses) or an Ethereum address (lower case). One owner belongs to one resident.
CREATE TABLE resident_wallets (
    chain          TEXT NOT NULL CHECK (chain IN ('bitcoin', 'ethereum')),
    owner          TEXT NOT NULL,
    resident_id    TEXT NOT NULL REFERENCES residents(id),
    label          TEXT,
    registered_at  TEXT NOT NULL,
    PRIMARY KEY (chain, owner)
);
CREATE INDEX resident_wallets_resident ON resident_wallets(resident_id);

CREATE TABLE merchant_profiles (
    merchant_id     TEXT PRIMARY KEY REFERENCES merchants(id),
    category        TEXT NOT NULL
                    CHECK (category IN ('grocery', 'cafe', 'transport', 'pharmacy', 'utilities', 'other')),
    licence_status  TEXT NOT NULL DEFAULT 'active' CHECK (licence_status IN ('active', 'suspended')),
    licence_reason  TEXT,
    updated_at      TEXT NOT NULL
);

-- Every payment the policy judged, written in the transaction that records the payment. value_tiyn counts
-- against the resident's month (Asia/Almaty calendar) while counts = 1: accepted payments, and held ones
-- once released. resolution records the regulator's decision on a hold.
CREATE TABLE sandbox_payments (
    chain           TEXT NOT NULL,
    payment_key     TEXT NOT NULL,
    invoice_id      TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    resident_id     TEXT,                          -- NULL: the payer is not a registered wallet
    payer           TEXT,
    asset           TEXT NOT NULL,
    amount_minor    TEXT NOT NULL,
    value_tiyn      INTEGER NOT NULL,
    month           TEXT NOT NULL,                 -- YYYY-MM in Asia/Almaty
    decision        TEXT NOT NULL CHECK (decision IN ('accepted', 'held')),
    reason          TEXT,
    counts          INTEGER NOT NULL CHECK (counts IN (0, 1)),
    decided_at      TEXT NOT NULL,
    resolution      TEXT CHECK (resolution IN ('released', 'refunded')),
    resolved_at     TEXT,
    resolved_by     TEXT,
    refund_address  TEXT,
    note            TEXT,
    PRIMARY KEY (chain, payment_key)
);
CREATE INDEX sandbox_payments_resident_month ON sandbox_payments(resident_id, month);
CREATE INDEX sandbox_payments_decided ON sandbox_payments(decided_at);
CREATE INDEX sandbox_payments_held ON sandbox_payments(decision, resolution);

-- Regulator API tokens (crt_…): shown once, stored as a hash like merchant API keys.
CREATE TABLE regulator_tokens (
    id           TEXT PRIMARY KEY,
    lookup       TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    label        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
