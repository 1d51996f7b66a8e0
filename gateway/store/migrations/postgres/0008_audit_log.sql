-- The sandbox's tamper-evident audit log (sandbox/audit, docs/audit-log.md): an append-only, hash-chained
-- list of entries, one per outbox event plus one per gateway start-up, and the chain heads authenticated
-- with the regulator's key. PostgreSQL form of sqlite/0008_audit_log.sql. The triggers stop accidents and
-- honest code; a database owner can drop them, which is what the hash chain and the head MACs are for.
-- Appends read the last entry and write seq + 1: the store's SERIALIZABLE units make two concurrent
-- appends conflict (one is retried) instead of forking the chain.

CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,                   -- 1, 2, 3, ... without gaps (set by sandbox.audit.store.append)
    id           TEXT COLLATE "C" NOT NULL UNIQUE,     -- aud_...
    recorded_at  TEXT COLLATE "C" NOT NULL,            -- when the audit log appended it, RFC 3339 UTC
    kind         TEXT COLLATE "C" NOT NULL,            -- the outbox event type (invoice.settled, ...) or config.startup
    subject      TEXT COLLATE "C",                     -- what it is about: invoice, merchant, endpoint or resident id
    event_id     TEXT COLLATE "C" UNIQUE,              -- the outbox event it records (NULL for config.startup): replays append nothing
    body         TEXT COLLATE "C" NOT NULL,            -- canonical JSON (RFC 8785) of a small summary
    prev_hash    TEXT COLLATE "C" NOT NULL,            -- hash of entry seq - 1; 64 zeros for seq 1
    hash         TEXT COLLATE "C" NOT NULL             -- SHA-256 hex of the canonical entry (docs/audit-log.md)
);

CREATE INDEX audit_log_subject ON audit_log(subject, seq);

-- The head after every append batch: hash of the entry at seq, and HMAC-SHA256(key, "<seq>:<hash>") when
-- the gateway runs with the regulator's audit key (mac and key_id are NULL without one).
CREATE TABLE audit_heads (
    seq        BIGINT PRIMARY KEY,                     -- the last entry of the batch
    hash       TEXT COLLATE "C" NOT NULL,
    mac        TEXT COLLATE "C",                       -- lower-case hex
    key_id     TEXT COLLATE "C",                       -- which key made the MAC (sandbox.audit.keys.AuditKey.key_id)
    signed_at  TEXT COLLATE "C" NOT NULL               -- RFC 3339 UTC
);

CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();

CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();

CREATE TRIGGER audit_heads_append_only_update BEFORE UPDATE ON audit_heads FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();

CREATE TRIGGER audit_heads_append_only_delete BEFORE DELETE ON audit_heads FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();
