-- The regulatory sandbox (sandbox/): residents, their wallets, merchants' category and licence, every
-- payment the sandbox policy judged, and the regulator's API tokens. The gateway never reads these; the
-- sandbox reaches the gateway only through its extension points. PostgreSQL form of sqlite/0007_sandbox.sql.

-- Residents are pseudonymous: the KYC provider keeps who they are; the sandbox keeps the tier and whether
-- travel-rule originator data is on file there.
CREATE TABLE residents (
    id               TEXT COLLATE "C" PRIMARY KEY,
    tier             TEXT COLLATE "C" NOT NULL CHECK (tier IN ('anonymous', 'basic', 'verified')),
    originator_data  BIGINT NOT NULL DEFAULT 0 CHECK (originator_data IN (0, 1)),
    status           TEXT COLLATE "C" NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at       TEXT COLLATE "C" NOT NULL,
    updated_at       TEXT COLLATE "C" NOT NULL
);

-- A wallet a resident registered: a Bitcoin output script (hex; P2WPKH is what the watcher recovers from
-- witnesses) or an Ethereum address (lower case). One owner belongs to one resident.
CREATE TABLE resident_wallets (
    chain          TEXT COLLATE "C" NOT NULL CHECK (chain IN ('bitcoin', 'ethereum')),
    owner          TEXT COLLATE "C" NOT NULL,
    resident_id    TEXT COLLATE "C" NOT NULL REFERENCES residents(id),
    label          TEXT COLLATE "C",
    registered_at  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain, owner)
);
CREATE INDEX resident_wallets_resident ON resident_wallets(resident_id);

CREATE TABLE merchant_profiles (
    merchant_id     TEXT COLLATE "C" PRIMARY KEY REFERENCES merchants(id),
    category        TEXT COLLATE "C" NOT NULL
                    CHECK (category IN ('grocery', 'cafe', 'transport', 'pharmacy', 'utilities', 'other')),
    licence_status  TEXT COLLATE "C" NOT NULL DEFAULT 'active' CHECK (licence_status IN ('active', 'suspended')),
    licence_reason  TEXT COLLATE "C",
    updated_at      TEXT COLLATE "C" NOT NULL
);

-- Every payment the policy judged, written in the transaction that records the payment. value_tiyn counts
-- against the resident's month (Asia/Almaty calendar) while counts = 1: accepted payments, and held ones
-- once released. resolution records the regulator's decision on a hold.
CREATE TABLE sandbox_payments (
    chain           TEXT COLLATE "C" NOT NULL,
    payment_key     TEXT COLLATE "C" NOT NULL,
    invoice_id      TEXT COLLATE "C" NOT NULL,
    merchant_id     TEXT COLLATE "C" NOT NULL,
    resident_id     TEXT COLLATE "C",                          -- NULL: the payer is not a registered wallet
    payer           TEXT COLLATE "C",
    asset           TEXT COLLATE "C" NOT NULL,
    amount_minor    TEXT COLLATE "C" NOT NULL,
    value_tiyn      BIGINT NOT NULL,
    month           TEXT COLLATE "C" NOT NULL,                 -- YYYY-MM in Asia/Almaty
    decision        TEXT COLLATE "C" NOT NULL CHECK (decision IN ('accepted', 'held')),
    reason          TEXT COLLATE "C",
    counts          BIGINT NOT NULL CHECK (counts IN (0, 1)),
    decided_at      TEXT COLLATE "C" NOT NULL,
    resolution      TEXT COLLATE "C" CHECK (resolution IN ('released', 'refunded')),
    resolved_at     TEXT COLLATE "C",
    resolved_by     TEXT COLLATE "C",
    refund_address  TEXT COLLATE "C",
    note            TEXT COLLATE "C",
    PRIMARY KEY (chain, payment_key)
);
CREATE INDEX sandbox_payments_resident_month ON sandbox_payments(resident_id, month);
CREATE INDEX sandbox_payments_decided ON sandbox_payments(decided_at);
CREATE INDEX sandbox_payments_held ON sandbox_payments(decision, resolution);

-- Regulator API tokens (crt_…): shown once, stored as a hash like merchant API keys.
CREATE TABLE regulator_tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    lookup       TEXT COLLATE "C" NOT NULL UNIQUE,
    secret_hash  TEXT COLLATE "C" NOT NULL,
    label        TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    revoked_at   TEXT COLLATE "C"
);
