"""The audit chain on a real store: appending, heads, and what verify says about each kind of tampering.

Appending, heads and the append-only triggers run on both backends (concurrent appends on PostgreSQL are
separate SERIALIZABLE units, which must still make one chain); the tampering tests use SQLite's file.

The attacker here has the database file: they open their own connection, drop the append-only triggers and
edit rows, as anyone with file access could. Each test checks that verify names the first changed entry
(seq and id) and the kind of fault, or, for a consistent rewrite, that only the head MAC gives it away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.store import SqliteStore, Store, StoreError, Tx
from sandbox.audit.canonical import FloatRefused, canonical_text
from sandbox.audit.chain import GENESIS_HASH, AuditEntry, EntryDraft, entry_hash
from sandbox.audit.keys import AuditKey
from sandbox.audit.store import append
from sandbox.audit.verify import AuditLogMissing, ProblemKind, VerifyResult, verify

KEY = AuditKey(bytes(range(32)), "test")
OTHER_KEY = AuditKey(bytes(range(1, 33)), "test")
TRIGGERS = (
    "audit_log_append_only_update",
    "audit_log_append_only_delete",
    "audit_heads_append_only_update",
    "audit_heads_append_only_delete",
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "audit.sqlite3")  # migration 0008 creates the audit log
    yield opened
    await opened.close()


def draft(n: int, **body: Any) -> EntryDraft:
    return EntryDraft(
        kind="invoice.settled",
        subject=f"inv_{n:04d}",
        event_id=f"evt_{n:04d}",
        body={"n": n, "amount_tiyn": 100 * n, **body},
    )


async def append_batches(
    store: Store, sizes: list[int], key: AuditKey | None = KEY, start: int = 1
) -> list[AuditEntry]:
    clock = ManualClock()
    entries: list[AuditEntry] = []
    n = start
    for size in sizes:
        drafts = [draft(i) for i in range(n, n + size)]
        n += size

        async def unit(tx: Tx, drafts: list[EntryDraft] = drafts) -> list[AuditEntry]:
            return await append(tx, drafts, clock.now(), key)

        entries += await store.transaction(unit)
        clock.advance(1)
    return entries


# -- the attacker's tools ------------------------------------------------------------------------------------


@contextlib.contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of someone with the file, who first drops the append-only triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        yield conn
    finally:
        conn.close()


def edit_body(path: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Change one entry's body in place, without touching its hash (a naive forger)."""
    with attacker(path) as conn:
        (text,) = conn.execute("SELECT body FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        body = json.loads(text)
        change(body)
        conn.execute("UPDATE audit_log SET body = ? WHERE seq = ?", (canonical_text(body), seq))


def rewrite_from(path: Path, seq: int, change: Callable[[dict[str, Any]], None], *, fix_heads: bool) -> None:
    """Change entry ``seq`` and recompute every hash and link after it: a forger who read docs/audit-log.md."""
    with attacker(path) as conn:
        rows = conn.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
        prev = GENESIS_HASH
        for row in rows:
            body = json.loads(row["body"])
            if row["seq"] == seq:
                change(body)
            fields = {k: row[k] for k in ("seq", "id", "recorded_at", "kind", "subject", "event_id")}
            digest = entry_hash(**fields, body=body, prev_hash=prev)
            conn.execute(
                "UPDATE audit_log SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (canonical_text(body), prev, digest, row["seq"]),
            )
            prev = digest
        if fix_heads:
            conn.execute(
                "UPDATE audit_heads SET hash = (SELECT hash FROM audit_log WHERE seq = audit_heads.seq)"
            )


def add_one_percent(body: dict[str, Any]) -> None:
    body["amount_tiyn"] += body["amount_tiyn"] // 100 + 1


def assert_fault(result: VerifyResult, kind: ProblemKind, seq: int, entry_id: str | None) -> None:
    assert not result.ok, result.verdict()
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq, result.problem.entry_id) == (kind, seq, entry_id), (
        result.verdict()
    )


# -- appending -----------------------------------------------------------------------------------------------


async def test_an_empty_log_verifies(any_store: Store) -> None:
    store = any_store
    result = await verify(store, KEY)
    assert result.ok and result.last_seq == 0 and result.verdict() == "OK: the audit log is empty"


async def test_batches_are_numbered_linked_and_their_heads_signed(any_store: Store) -> None:
    store = any_store
    entries = await append_batches(store, [3, 1, 5])
    assert [e.seq for e in entries] == list(range(1, 10))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    heads = await store.read(lambda tx: tx.fetchall("SELECT * FROM audit_heads ORDER BY seq"))
    assert [h["seq"] for h in heads] == [3, 4, 9]  # one head per batch, at its last entry
    for head in heads:
        entry = entries[head["seq"] - 1]
        assert head["hash"] == entry.hash
        assert head["mac"] == KEY.sign_head(entry.seq, entry.hash)
        assert head["key_id"] == KEY.key_id
    result = await verify(store, KEY, page_size=2)  # pages smaller than the batches
    assert result.ok and result.authenticated and result.entries == 9, result.verdict()
    assert result.verdict().startswith("OK: 9 entries, chain intact to seq 9")
    assert result.head is not None and result.head.seq == 9


async def test_concurrent_appends_stay_one_chain(any_store: Store) -> None:
    store = any_store
    clock = ManualClock()

    async def one(n: int) -> list[AuditEntry]:
        return await store.transaction(lambda tx: append(tx, [draft(n)], clock.now(), KEY))

    await asyncio.gather(*(one(n) for n in range(1, 41)))
    result = await verify(store, KEY)
    assert result.ok and result.last_seq == 40, result.verdict()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET body = '{}' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
        "UPDATE audit_heads SET mac = NULL",
        "DELETE FROM audit_heads",
    ],
)
async def test_the_store_refuses_updates_and_deletes(any_store: Store, sql: str) -> None:
    store = any_store
    await append_batches(store, [2])
    with pytest.raises(StoreError, match="append-only"):
        await store.transaction(lambda tx: tx.execute(sql))
    assert (await verify(store, KEY)).ok


async def test_a_recorded_event_is_not_appended_again(any_store: Store) -> None:
    store = any_store
    first = await append_batches(store, [4])
    again = await append_batches(store, [6])  # events 1..6: 1..4 are recorded already
    assert [e.event_id for e in again] == ["evt_0005", "evt_0006"]
    assert [e.seq for e in again] == [5, 6]
    assert await append_batches(store, [6]) == []
    heads = await store.read(lambda tx: tx.fetchall("SELECT seq FROM audit_heads ORDER BY seq"))
    assert [h["seq"] for h in heads] == [4, 6]  # a batch that appends nothing writes no head
    assert first[-1].hash == again[0].prev_hash


async def test_a_float_writes_nothing(any_store: Store) -> None:
    store = any_store
    await append_batches(store, [2])
    spoiled = [draft(3), draft(4, rate=0.1)]
    with pytest.raises(FloatRefused, match=r"\$\.rate"):
        await store.transaction(lambda tx: append(tx, spoiled, ManualClock().now(), KEY))
    result = await verify(store, KEY)
    assert result.ok and result.last_seq == 2


# -- tampering -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 6, 12])
async def test_an_edited_body_is_named_by_seq_and_id(store: SqliteStore, seq: int) -> None:
    entries = await append_batches(store, [5, 4, 3])
    assert (await verify(store, KEY)).ok
    edit_body(store.path, seq, add_one_percent)
    for key in (KEY, None):  # the chain alone shows it: no key needed
        result = await verify(store, key, page_size=4)
        assert_fault(result, ProblemKind.HASH_MISMATCH, seq, entries[seq - 1].id)
        assert result.entries == seq - 1
        assert result.verdict().startswith(f"TAMPERED: hash_mismatch at seq {seq} ({entries[seq - 1].id})")


@pytest.mark.parametrize("column", ["kind", "subject", "recorded_at", "event_id", "id"])
async def test_every_column_is_covered(store: SqliteStore, column: str) -> None:
    entries = await append_batches(store, [5])
    with attacker(store.path) as conn:
        conn.execute(f"UPDATE audit_log SET {column} = 'forged' WHERE seq = 3")  # noqa: S608
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.HASH_MISMATCH, 3, "forged" if column == "id" else entries[2].id)


async def test_an_entry_rehashed_alone_breaks_the_next_link(store: SqliteStore) -> None:
    entries = await append_batches(store, [8])

    def forge(body: dict[str, Any]) -> None:
        add_one_percent(body)

    with attacker(store.path) as conn:
        row = conn.execute("SELECT * FROM audit_log WHERE seq = 4").fetchone()
        body = json.loads(row["body"])
        forge(body)
        fields = {k: row[k] for k in ("seq", "id", "recorded_at", "kind", "subject", "event_id", "prev_hash")}
        conn.execute(
            "UPDATE audit_log SET body = ?, hash = ? WHERE seq = 4",
            (canonical_text(body), entry_hash(**fields, body=body)),
        )
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.BROKEN_LINK, 5, entries[4].id)


async def test_a_consistent_rewrite_fails_only_the_head_mac(store: SqliteStore) -> None:
    entries = await append_batches(store, [5, 5, 5])  # heads at 5, 10, 15
    rewrite_from(store.path, 7, add_one_percent, fix_heads=True)
    unkeyed = await verify(store, None)
    assert unkeyed.ok and not unkeyed.authenticated  # without the key, a perfect forgery looks fine
    assert unkeyed.verdict().startswith("OK (unauthenticated)")
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.HEAD_MAC_MISMATCH, 10, entries[9].id)
    assert result.problem is not None and result.problem.first_suspect_seq == 6  # after the last good head
    assert "entries 6..10 were changed" in result.problem.detail


async def test_a_rewrite_that_leaves_the_heads_is_caught_without_a_key(store: SqliteStore) -> None:
    entries = await append_batches(store, [5, 5])
    rewrite_from(store.path, 2, add_one_percent, fix_heads=False)
    result = await verify(store, None)
    assert_fault(result, ProblemKind.HEAD_HASH_MISMATCH, 5, entries[4].id)
    assert result.problem is not None and result.problem.first_suspect_seq == 1


async def test_a_deleted_last_entry_leaves_the_head_ahead(store: SqliteStore) -> None:
    await append_batches(store, [3, 4])
    with attacker(store.path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 7")
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.HEAD_AHEAD_OF_CHAIN, 7, None)
    assert result.last_seq == 6 and result.entries == 6
    assert "entry 7 was deleted" in result.verdict()


async def test_a_deleted_middle_entry_is_a_gap(store: SqliteStore) -> None:
    entries = await append_batches(store, [6])
    with attacker(store.path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.SEQ_GAP, 3, None)
    assert result.problem is not None and entries[3].id in result.problem.detail


async def test_a_forged_entry_after_the_head(store: SqliteStore) -> None:
    entries = await append_batches(store, [3])
    last = entries[-1]
    body = {"n": 99}
    forged = {
        "seq": 4,
        "id": "aud_forged",
        "recorded_at": last.recorded_at,
        "kind": "invoice.settled",
        "subject": "inv_x",
        "event_id": "evt_x",
    }
    digest = entry_hash(**forged, body=body, prev_hash=last.hash)
    with attacker(store.path) as conn:
        conn.execute(
            "INSERT INTO audit_log (seq, id, recorded_at, kind, subject, event_id, body, prev_hash, hash)"
            " VALUES (:seq, :id, :recorded_at, :kind, :subject, :event_id, :body, :prev_hash, :hash)",
            {**forged, "body": canonical_text(body), "prev_hash": last.hash, "hash": digest},
        )
    result = await verify(store, None)
    assert_fault(result, ProblemKind.HEAD_BEHIND_CHAIN, 4, "aud_forged")
    with attacker(store.path) as conn:  # and a head for it, without the key
        conn.execute("INSERT INTO audit_heads (seq, hash, signed_at) VALUES (4, ?, 'now')", (digest,))
    assert (await verify(store, None)).ok
    assert_fault(await verify(store, KEY), ProblemKind.HEAD_UNAUTHENTICATED, 4, None)
    with attacker(store.path) as conn:  # or with a made-up MAC
        conn.execute("UPDATE audit_heads SET mac = ?, key_id = ? WHERE seq = 4", ("00" * 32, KEY.key_id))
    assert_fault(await verify(store, KEY), ProblemKind.HEAD_MAC_MISMATCH, 4, "aud_forged")


async def test_an_unreadable_body(store: SqliteStore) -> None:
    entries = await append_batches(store, [3])
    with attacker(store.path) as conn:
        conn.execute("UPDATE audit_log SET body = '{\"amount\": 1.5}' WHERE seq = 2")
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.UNREADABLE_ENTRY, 2, entries[1].id)
    assert "float 1.5 refused" in result.verdict()


# -- keys, heads and exports ---------------------------------------------------------------------------------


async def test_without_a_key_the_heads_carry_no_mac(any_store: Store) -> None:
    store = any_store
    await append_batches(store, [2, 2], key=None)
    heads = await store.read(lambda tx: tx.fetchall("SELECT mac, key_id FROM audit_heads"))
    assert heads == [{"mac": None, "key_id": None}] * 2
    unkeyed = await verify(store, None)
    assert unkeyed.ok and not unkeyed.authenticated
    result = await verify(store, KEY)
    assert_fault(result, ProblemKind.HEAD_UNAUTHENTICATED, 4, None)
    assert result.verdict().startswith("UNVERIFIED: head_unauthenticated at seq 4")


async def test_a_key_rotation(any_store: Store) -> None:
    store = any_store
    await append_batches(store, [3], key=OTHER_KEY)
    await append_batches(store, [3], key=KEY, start=4)
    result = await verify(store, KEY)  # old heads: hash only; the latest is by this key
    assert result.ok and result.authenticated, result.verdict()
    assert_fault(await verify(store, OTHER_KEY), ProblemKind.HEAD_UNAUTHENTICATED, 6, None)


async def test_an_exported_head_defeats_truncation(store: SqliteStore) -> None:
    entries = await append_batches(store, [5, 5])
    exported = (10, entries[9].hash)
    assert (await verify(store, KEY, expected_head=exported)).ok
    with attacker(store.path) as conn:  # back to the genuine head at seq 5
        conn.execute("DELETE FROM audit_log WHERE seq > 5")
        conn.execute("DELETE FROM audit_heads WHERE seq > 5")
    truncated = await verify(store, KEY)
    assert truncated.ok and truncated.authenticated  # the remaining chain is genuine ...
    result = await verify(store, KEY, expected_head=exported)  # ... but shorter than what was exported
    assert_fault(result, ProblemKind.EXPECTED_HEAD_MISMATCH, 6, None)
    wrong = await verify(store, KEY, expected_head=(3, "ab" * 32))
    assert_fault(wrong, ProblemKind.EXPECTED_HEAD_MISMATCH, 3, entries[2].id)


async def test_a_file_is_verified_read_only(store: SqliteStore, tmp_path: Path) -> None:
    await append_batches(store, [4])
    before = store.path.read_bytes()
    from_file = await verify(store.path, KEY, page_size=3)
    from_store = await verify(store, KEY)
    assert from_file == from_store and from_file.ok
    assert store.path.read_bytes() == before
    bare = tmp_path / "bare.sqlite3"
    sqlite3.connect(bare).close()
    with pytest.raises(AuditLogMissing, match="no audit log"):
        await verify(bare, KEY)
    with pytest.raises(AuditLogMissing, match="no such database file"):
        await verify(tmp_path / "absent.sqlite3", KEY)


async def test_odd_values_a_forger_stores_are_faults_not_crashes(store: SqliteStore) -> None:
    entries = await append_batches(store, [3, 3])
    with attacker(store.path) as conn:
        conn.execute("UPDATE audit_heads SET mac = x'00ff' WHERE seq = 3")
    assert_fault(await verify(store, KEY), ProblemKind.HEAD_MAC_MISMATCH, 3, entries[2].id)
    with attacker(store.path) as conn:
        conn.execute("UPDATE audit_log SET body = x'ff' WHERE seq = 2")
    assert_fault(await verify(store, KEY), ProblemKind.UNREADABLE_ENTRY, 2, entries[1].id)
