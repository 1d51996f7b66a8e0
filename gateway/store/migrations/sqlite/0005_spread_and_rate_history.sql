-- A merchant's spread, in basis points: the locked rate is the composite rate lowered by it, so the
-- customer pays that much more coin (the merchant's cushion against the price moving before conversion).
ALTER TABLE merchants ADD COLUMN spread_bps INTEGER NOT NULL DEFAULT 0
    CHECK (spread_bps >= 0 AND spread_bps < 10000);

-- Every distinct rate the composite derived, for reports (what was the BTC price at 14:05 on the 3rd?) and
-- for checking a locked quote against the market of its moment. Appended by the rate refresher; one row per
-- asset and observation, so a refresh that brings nothing new writes nothing.
CREATE TABLE rate_history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    asset         TEXT NOT NULL,
    kzt_per_unit  TEXT NOT NULL,                    -- decimal string, as locked
    sources       TEXT NOT NULL,                    -- JSON array of the paths that made the median
    observed_at   TEXT NOT NULL,                    -- when the oldest input of the value was observed
    recorded_at   TEXT NOT NULL,
    UNIQUE (asset, observed_at, kzt_per_unit)
);
CREATE INDEX rate_history_asset_time ON rate_history(asset, observed_at);
