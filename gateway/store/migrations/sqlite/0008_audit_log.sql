-- The sandbox's tamper-evident audit log (sandbox/audit, docs/audit-log.md): an append-only, hash-chained
-- list of entries, one per outbox event plus one per gateway start-up, and the chain heads authenticated
-- with the regulator's key. The triggers stop accidents and honest code; an attacker with the file can
-- drop them, which is what the hash chain and the head MACs are for.

CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,         -- 1, 2, 3, ... without gaps (set by sandbox.audit.store.append)
    id           TEXT NOT NULL UNIQUE,        -- aud_...
    recorded_at  TEXT NOT NULL,               -- when the audit log appended it, RFC 3339 UTC
    kind         TEXT NOT NULL,               -- the outbox event type (invoice.settled, ...) or config.startup
    subject      TEXT,                        -- what it is about: invoice, merchant, endpoint or resident id
    event_id     TEXT UNIQUE,                 -- the outbox event it records (NULL for config.startup): replays append nothing
    body         TEXT NOT NULL,               -- canonical JSON (RFC 8785) of a small summary
    prev_hash    TEXT NOT NULL,               -- hash of entry seq - 1; 64 zeros for seq 1
    hash         TEXT NOT NULL                -- SHA-256 hex of the canonical entry (docs/audit-log.md)
);

CREATE INDEX audit_log_subject ON audit_log(subject, seq);

-- The head after every append batch: hash of the entry at seq, and HMAC-SHA256(key, "<seq>:<hash>") when
-- the gateway runs with the regulator's audit key (mac and key_id are NULL without one).
CREATE TABLE audit_heads (
    seq        INTEGER PRIMARY KEY,           -- the last entry of the batch
    hash       TEXT NOT NULL,
    mac        TEXT,                          -- lower-case hex
    key_id     TEXT,                          -- which key made the MAC (sandbox.audit.keys.AuditKey.key_id)
    signed_at  TEXT NOT NULL                  -- RFC 3339 UTC
);

CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TRIGGER audit_heads_append_only_update BEFORE UPDATE ON audit_heads BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only'); END;

CREATE TRIGGER audit_heads_append_only_delete BEFORE DELETE ON audit_heads BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only'); END;
