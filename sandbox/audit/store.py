"""The audit log's SQL (tables: migration 0008): appending a batch with its signed head, and reading pages.

Appending reads the last entry and links the batch to it inside the caller's transaction. With SQLite's
single writer no other unit can append in between, so ``seq`` has no gaps and no fork. The PostgreSQL store
runs units SERIALIZABLE: two appends that read the same last entry conflict (a serialization failure, or
the primary key on ``seq``), one is rolled back and run again on top of the other, so the guarantee holds
there without a lock here.

Every batch ends with one ``audit_heads`` row for its last entry, written in the same transaction: the
head is never behind or ahead of the chain unless someone edited the file. With an :class:`AuditKey` the
row carries the MAC; without one the row still records the hash (so truncation of a copy is visible) but
cannot prove who wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.clock import isoformat
from gateway.ids import new_id
from gateway.store import Row, Tx
from sandbox.audit.chain import GENESIS_HASH, AuditEntry, EntryDraft, seal
from sandbox.audit.keys import AuditKey

_ENTRY_COLUMNS = "seq, id, recorded_at, kind, subject, event_id, body, prev_hash, hash"
_LOOKUP_CHUNK = 400  # well under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class Head:
    """A stored chain head: the hash of entry ``seq`` and, when a key was configured, its MAC."""

    seq: int
    hash: str
    mac: str | None
    key_id: str | None
    signed_at: str

    def view(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "mac": self.mac,
            "key_id": self.key_id,
            "signed_at": self.signed_at,
        }


def entry_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]),
        id=row["id"],
        recorded_at=row["recorded_at"],
        kind=row["kind"],
        subject=row["subject"],
        event_id=row["event_id"],
        body=row["body"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def head_from_row(row: Row) -> Head:
    return Head(int(row["seq"]), row["hash"], row["mac"], row["key_id"], row["signed_at"])


async def last_entry(tx: Tx) -> AuditEntry | None:
    row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1")  # noqa: S608
    return None if row is None else entry_from_row(row)


async def latest_head(tx: Tx, up_to_seq: int | None = None) -> Head | None:
    bound = (1 << 62) if up_to_seq is None else up_to_seq
    row = await tx.fetchone(
        "SELECT seq, hash, mac, key_id, signed_at FROM audit_heads WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
        (bound,),
    )
    return None if row is None else head_from_row(row)


async def recorded_event_ids(tx: Tx, event_ids: Sequence[str]) -> set[str]:
    """Which of ``event_ids`` the log holds already (a replayed outbox batch)."""
    found: set[str] = set()
    for start in range(0, len(event_ids), _LOOKUP_CHUNK):
        chunk = list(event_ids[start : start + _LOOKUP_CHUNK])
        marks = ", ".join("?" for _ in chunk)
        rows = await tx.fetchall(f"SELECT event_id FROM audit_log WHERE event_id IN ({marks})", chunk)  # noqa: S608
        found.update(row["event_id"] for row in rows)
    return found


async def append(
    tx: Tx, drafts: Sequence[EntryDraft], now: datetime, key: AuditKey | None
) -> list[AuditEntry]:
    """Append ``drafts`` in order after the last entry and write the new head; returns the new entries.

    Drafts whose ``event_id`` is already recorded (or repeated within the batch) are skipped, so a replayed
    outbox batch appends nothing. Everything is sealed before the first INSERT: a draft that cannot be
    canonicalised (a float) raises with nothing written.
    """
    wanted = [d.event_id for d in drafts if d.event_id is not None]
    seen = await recorded_event_ids(tx, wanted) if wanted else set()
    previous = await last_entry(tx)
    seq, prev_hash = (previous.seq, previous.hash) if previous is not None else (0, GENESIS_HASH)
    stamp = isoformat(now)
    entries: list[AuditEntry] = []
    for draft in drafts:
        if draft.event_id is not None:
            if draft.event_id in seen:
                continue
            seen.add(draft.event_id)
        seq += 1
        entry = seal(draft, seq=seq, id=new_id("aud"), recorded_at=stamp, prev_hash=prev_hash)
        entries.append(entry)
        prev_hash = entry.hash
    if not entries:
        return []
    await tx.executemany(
        f"INSERT INTO audit_log ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        [
            (e.seq, e.id, e.recorded_at, e.kind, e.subject, e.event_id, e.body, e.prev_hash, e.hash)
            for e in entries
        ],
    )
    last = entries[-1]
    await tx.execute(
        "INSERT INTO audit_heads (seq, hash, mac, key_id, signed_at) VALUES (?, ?, ?, ?, ?)",
        (
            last.seq,
            last.hash,
            None if key is None else key.sign_head(last.seq, last.hash),
            None if key is None else key.key_id,
            stamp,
        ),
    )
    return entries


async def entries_page(tx: Tx, after_seq: int, limit: int, up_to_seq: int | None = None) -> list[AuditEntry]:
    """Entries with ``after_seq < seq <= up_to_seq`` in seq order, at most ``limit`` of them."""
    bound = (1 << 62) if up_to_seq is None else up_to_seq
    rows = await tx.fetchall(
        f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",  # noqa: S608
        (after_seq, bound, limit),
    )
    return [entry_from_row(row) for row in rows]


async def heads_page(tx: Tx, after_seq: int, limit: int, up_to_seq: int | None = None) -> list[Head]:
    bound = (1 << 62) if up_to_seq is None else up_to_seq
    rows = await tx.fetchall(
        "SELECT seq, hash, mac, key_id, signed_at FROM audit_heads WHERE seq > ? AND seq <= ?"
        " ORDER BY seq LIMIT ?",
        (after_seq, bound, limit),
    )
    return [head_from_row(row) for row in rows]


async def chain_bounds(tx: Tx) -> tuple[int, int]:
    """(last entry seq, last head seq), 0 when empty, read in ONE statement so both come from one snapshot."""
    row = await tx.fetchone(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_log) AS last_entry,"
        " (SELECT COALESCE(MAX(seq), 0) FROM audit_heads) AS last_head"
    )
    assert row is not None
    return int(row["last_entry"]), int(row["last_head"])
