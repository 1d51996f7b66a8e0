"""Verifying the audit log: recompute every hash, follow every link, check the heads; name the first fault.

The walk streams entries and heads in seq order, a page at a time, so memory stays flat however long the
log is. It stops at the first fault, because everything after a fault is suspect anyway:

- ``seq_gap``: an entry is missing (seq jumps);
- ``unreadable_entry``: a body is not JSON, or holds something canonical JSON refuses (a float);
- ``hash_mismatch``: an entry's stored hash is not the hash of its fields (it was edited);
- ``broken_link``: an entry's prev_hash is not the previous entry's hash (an entry before it was edited
  and re-hashed, or entries were removed or reordered);
- ``head_hash_mismatch``: a stored head names a hash the chain does not have at that seq;
- ``head_mac_mismatch``: a head's MAC is not ``HMAC-SHA256(key, "<seq>:<recomputed hash>")``: the chain was
  rewritten consistently, by someone without the key;
- ``head_ahead_of_chain``: the latest head is past the last entry (entries at the end were deleted);
- ``head_behind_chain``: entries after the latest head, which the gateway never writes (every batch writes
  its head in the same transaction);
- ``head_unauthenticated``: a key was given but the latest head carries no MAC by it;
- ``expected_head_mismatch``: the chain does not contain a head exported earlier (``--expect-head``):
  the only defence against truncating the log back to an older, genuinely signed head.

Every head is checked, not just the latest, so after a consistent rewrite the fault is narrowed to the
entries between the last head that still verifies and the first that does not (``first_suspect_seq``).
A head signed with another key id (before a key rotation) is compared by hash only; the latest head must be
signed by the key given.

The walk reads the last entry and head seq in one statement first and verifies up to that point, so a
gateway appending meanwhile does not look like tampering.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from gateway.store import Row, Tx
from sandbox.audit.chain import GENESIS_HASH, AuditEntry, entry_hash
from sandbox.audit.keys import AuditKey
from sandbox.audit.store import Head, chain_bounds, entries_page, heads_page, latest_head

T = TypeVar("T")
PAGE_SIZE = 1000


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


_Row = TypeVar("_Row", bound=_Sequenced)


class _PageQuery(Protocol[_Row]):
    """``entries_page`` or ``heads_page``: rows after a seq, up to a bound, at most ``limit``."""

    def __call__(
        self, tx: Tx, after_seq: int, limit: int, up_to_seq: int | None = None
    ) -> Awaitable[list[_Row]]: ...


class ProblemKind(StrEnum):
    SEQ_GAP = "seq_gap"
    UNREADABLE_ENTRY = "unreadable_entry"
    HASH_MISMATCH = "hash_mismatch"
    BROKEN_LINK = "broken_link"
    HEAD_HASH_MISMATCH = "head_hash_mismatch"
    HEAD_MAC_MISMATCH = "head_mac_mismatch"
    HEAD_AHEAD_OF_CHAIN = "head_ahead_of_chain"
    HEAD_BEHIND_CHAIN = "head_behind_chain"
    HEAD_UNAUTHENTICATED = "head_unauthenticated"
    EXPECTED_HEAD_MISMATCH = "expected_head_mismatch"


@dataclass(frozen=True, slots=True)
class Problem:
    """The first fault: where (``seq``, ``entry_id`` when that entry exists) and what, in one sentence.

    ``first_suspect_seq`` is the earliest entry that may have been changed: the seq itself for an entry
    fault, just after the last head that still verifies for a head fault.
    """

    kind: ProblemKind
    seq: int
    entry_id: str | None
    detail: str
    first_suspect_seq: int

    def view(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "seq": self.seq,
            "entry_id": self.entry_id,
            "detail": self.detail,
            "first_suspect_seq": self.first_suspect_seq,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int  # entries walked (all of them when ok)
    last_seq: int
    last_hash: str | None
    head: Head | None  # the latest stored head
    authenticated: bool  # the latest head's MAC was checked with the given key and is genuine
    key_id: str | None  # the key given, if any
    problem: Problem | None

    def verdict(self) -> str:
        """One line for people: OK / OK (unauthenticated) / TAMPERED / UNVERIFIED, and why."""
        if self.problem is not None:
            p = self.problem
            word = "UNVERIFIED" if p.kind is ProblemKind.HEAD_UNAUTHENTICATED else "TAMPERED"
            where = f"seq {p.seq}" + (f" ({p.entry_id})" if p.entry_id else "")
            return f"{word}: {p.kind.value} at {where}: {p.detail}"
        if self.last_seq == 0:
            return "OK: the audit log is empty"
        assert self.last_hash is not None
        count = f"{self.entries} entr{'y' if self.entries == 1 else 'ies'}"
        intact = f"{count}, chain intact to seq {self.last_seq} (hash {self.last_hash[:16]}…)"
        if self.authenticated:
            return f"OK: {intact}; head authenticated with key {self.key_id}"
        return f"OK (unauthenticated): {intact}; head not checked against a key (none given)"

    def view(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.verdict(),
            "entries": self.entries,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "authenticated": self.authenticated,
            "key_id": self.key_id,
            "head": None if self.head is None else self.head.view(),
            "problem": None if self.problem is None else self.problem.view(),
        }


class Reader(Protocol):
    """Anything with the store's ``read``: the live store, or a read-only file (:func:`open_readonly`)."""

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T: ...


class AuditLogMissing(ValueError):
    """The database cannot be opened, or has no audit log (not migrated to 0008)."""


async def verify(
    source: Reader | Path | str,
    key: AuditKey | None,
    *,
    expected_head: tuple[int, str] | None = None,
    page_size: int = PAGE_SIZE,
) -> VerifyResult:
    """Verify the audit log of a store (or of an SQLite file, opened read-only and never migrated)."""
    if isinstance(source, Path | str):
        reader = open_readonly(source)
        try:
            return await _Walk(reader, key, expected_head, page_size).run()
        finally:
            reader.close()
    return await _Walk(source, key, expected_head, page_size).run()


class _Walk:
    """One pass over the chain; remembers the last good and the last authenticated head to narrow a fault."""

    def __init__(
        self, reader: Reader, key: AuditKey | None, expected: tuple[int, str] | None, page_size: int
    ) -> None:
        self._reader = reader
        self._key = key
        self._expected = expected
        self._page = page_size
        self._walked = 0
        self._good_head = 0  # seq of the last head that verified
        self._authenticated_head = 0  # seq of the last head whose MAC by the given key verified
        self._latest: Head | None = None
        self._first_uncovered: str | None = None  # id of the entry just after the latest head

    async def run(self) -> VerifyResult:
        last_entry, last_head = await self._reader.read(chain_bounds)
        bound = max(last_entry, last_head)
        self._latest = await self._reader.read(lambda tx: latest_head(tx, bound))
        covered = 0 if self._latest is None else self._latest.seq
        expected_seq, prev_hash = 1, GENESIS_HASH
        async with (
            aclosing(self._paged(entries_page, bound)) as entries,
            aclosing(self._paged(heads_page, bound)) as heads,
        ):
            head = await anext(heads, None)
            async for entry in entries:
                problem = self._check_entry(entry, expected_seq, prev_hash)
                if problem is not None:
                    return self._result(entry.seq - 1, prev_hash, problem)
                while head is not None and head.seq <= entry.seq:
                    problem = self._check_head(head, entry)
                    if problem is not None:
                        return self._result(entry.seq, entry.hash, problem)
                    head = await anext(heads, None)
                problem = self._check_expected(entry)
                if problem is not None:
                    return self._result(entry.seq, entry.hash, problem)
                if entry.seq == covered + 1:
                    self._first_uncovered = entry.id
                self._walked += 1
                expected_seq, prev_hash = entry.seq + 1, entry.hash
        last_seq = expected_seq - 1
        return self._result(last_seq, prev_hash, self._check_end(last_seq))

    # -- the checks ---------------------------------------------------------------------------------------

    def _check_entry(self, entry: AuditEntry, expected_seq: int, prev_hash: str) -> Problem | None:
        if entry.seq != expected_seq:
            return Problem(
                ProblemKind.SEQ_GAP,
                expected_seq,
                None,
                f"{_span(expected_seq, entry.seq - 1)} missing; the next stored entry is seq {entry.seq}"
                f" ({entry.id})",
                expected_seq,
            )
        try:
            body = json.loads(entry.body)
            recomputed = entry_hash(
                seq=entry.seq,
                id=entry.id,
                recorded_at=entry.recorded_at,
                kind=entry.kind,
                subject=entry.subject,
                event_id=entry.event_id,
                body=body,
                prev_hash=entry.prev_hash,
            )
        except (ValueError, TypeError) as exc:  # bad JSON, NotCanonical, or a NULL a forger stored
            return self._entry_problem(
                ProblemKind.UNREADABLE_ENTRY, entry, f"the stored entry cannot be hashed: {exc}"
            )
        if recomputed != entry.hash:
            return self._entry_problem(
                ProblemKind.HASH_MISMATCH,
                entry,
                f"stored hash {_short(entry.hash)} but its fields hash to {_short(recomputed)}: the entry was edited",
            )
        if entry.prev_hash != prev_hash:
            previous = "the genesis value (64 zeros)" if entry.seq == 1 else f"entry {entry.seq - 1}'s hash"
            return self._entry_problem(
                ProblemKind.BROKEN_LINK,
                entry,
                f"prev_hash {_short(entry.prev_hash)} is not {previous} {_short(prev_hash)}:"
                " an earlier entry was edited and re-hashed, removed or reordered",
            )
        return None

    def _entry_problem(self, kind: ProblemKind, entry: AuditEntry, detail: str) -> Problem:
        return Problem(kind, entry.seq, entry.id, detail, entry.seq)

    def _check_head(self, head: Head, entry: AuditEntry) -> Problem | None:
        """``head.seq <= entry.seq``; the walk passed every seq below, so a smaller seq names no entry."""
        since = self._good_head + 1
        if head.seq != entry.seq:
            return Problem(
                ProblemKind.HEAD_HASH_MISMATCH,
                head.seq,
                None,
                f"a head names seq {head.seq}, which is no entry",
                since,
            )
        last_good = f"seq {self._good_head}" if self._good_head else "none"
        after_good = f"{_span(since, head.seq)} changed (the last head that verifies: {last_good})"
        if head.hash != entry.hash:
            return Problem(
                ProblemKind.HEAD_HASH_MISMATCH,
                head.seq,
                entry.id,
                f"the head records hash {_short(head.hash)} but the chain has {_short(entry.hash)}: {after_good}",
                since,
            )
        key = self._key
        if key is not None and head.mac is not None and head.key_id in (None, key.key_id):
            if not key.head_is_genuine(head.seq, entry.hash, head.mac):
                return Problem(
                    ProblemKind.HEAD_MAC_MISMATCH,
                    head.seq,
                    entry.id,
                    f"the head's MAC is not HMAC-SHA256(key, '{head.seq}:<hash>') of the chain as stored:"
                    f" the log was rewritten without the key; {after_good}",
                    since,
                )
            self._authenticated_head = head.seq
        self._good_head = head.seq
        return None

    def _check_expected(self, entry: AuditEntry) -> Problem | None:
        if self._expected is None or self._expected[0] != entry.seq:
            return None
        seq, wanted = self._expected
        if entry.hash == wanted.lower():
            return None
        return Problem(
            ProblemKind.EXPECTED_HEAD_MISMATCH,
            seq,
            entry.id,
            f"the exported head says {_short(wanted)} at seq {seq}, the chain has {_short(entry.hash)}",
            1,
        )

    def _check_end(self, last_seq: int) -> Problem | None:
        latest = self._latest
        if latest is not None and latest.seq > last_seq:
            return Problem(
                ProblemKind.HEAD_AHEAD_OF_CHAIN,
                last_seq + 1,
                None,
                f"the latest head is seq {latest.seq} but the chain ends at seq {last_seq}:"
                f" {_span(last_seq + 1, latest.seq)} deleted",
                last_seq + 1,
            )
        if self._expected is not None and self._expected[0] > last_seq:
            return Problem(
                ProblemKind.EXPECTED_HEAD_MISMATCH,
                last_seq + 1,
                None,
                f"the chain ends at seq {last_seq}, before the exported head at seq {self._expected[0]}:"
                " entries were removed",
                last_seq + 1,
            )
        if last_seq == 0:
            return None
        covered = 0 if latest is None else latest.seq
        if covered < last_seq:
            return Problem(
                ProblemKind.HEAD_BEHIND_CHAIN,
                covered + 1,
                self._first_uncovered,
                f"{_span(covered + 1, last_seq)} after the latest head"
                f" ({'none' if latest is None else f'seq {covered}'}): not appended by the gateway",
                covered + 1,
            )
        key = self._key
        assert latest is not None
        if key is not None and latest.seq != self._authenticated_head:
            signer = "no MAC" if latest.mac is None else f"a MAC by another key ({latest.key_id})"
            since = self._authenticated_head + 1
            return Problem(
                ProblemKind.HEAD_UNAUTHENTICATED,
                latest.seq,
                None,
                f"the latest head carries {signer}, not one by key {key.key_id}:"
                f" {_span(since, latest.seq)} not covered by the key",
                since,
            )
        return None

    # -- streaming ----------------------------------------------------------------------------------------

    async def _paged(self, query: _PageQuery[_Row], bound: int) -> AsyncGenerator[_Row, None]:
        """Rows of ``query`` with seq up to ``bound``, one read (and one page in memory) at a time."""
        after = 0
        while True:
            page = await self._reader.read(
                functools.partial(query, after_seq=after, limit=self._page, up_to_seq=bound)
            )
            for row in page:
                yield row
            if len(page) < self._page:
                return
            after = page[-1].seq

    def _result(self, last_seq: int, last_hash: str | None, problem: Problem | None) -> VerifyResult:
        latest = self._latest
        authenticated = (
            problem is None
            and self._key is not None
            and latest is not None
            and latest.mac is not None
            and latest.seq == last_seq
        )
        return VerifyResult(
            ok=problem is None,
            entries=self._walked,
            last_seq=last_seq,
            last_hash=last_hash if last_seq else None,
            head=latest,
            authenticated=authenticated,
            key_id=None if self._key is None else self._key.key_id,
            problem=problem,
        )


def _span(first: int, last: int) -> str:
    """'entry 7 was' / 'entries 7..9 were', for messages."""
    return f"entry {first} was" if first == last else f"entries {first}..{last} were"


def _short(value: object) -> str:
    """The first 16 characters of a hash for messages; whatever a tampered row holds, as text."""
    return f"{str(value)[:16]}…"


# -- a read-only SQLite file --------------------------------------------------------------------------------


class FileReader:
    """A ``Reader`` over an SQLite file opened read-only: a regulator's copy is never migrated or changed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        return await fn(_FileTx(self._conn))

    def close(self) -> None:
        self._conn.close()


def open_readonly(path: Path | str) -> FileReader:
    path = Path(path)
    if not path.is_file():
        raise AuditLogMissing(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        found = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('audit_log', 'audit_heads')"
        ).fetchone()[0]
    except sqlite3.Error as exc:
        raise AuditLogMissing(f"{path}: cannot open as SQLite: {exc}") from None
    if found != 2:
        conn.close()
        raise AuditLogMissing(f"{path}: no audit log in this database (run `cryptocity migrate` on it first)")
    return FileReader(conn)


class _FileTx:
    """Read-only ``Tx`` whose queries run on a worker thread (a long verify must not block an event loop)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise AuditLogMissing("the audit file is opened read-only")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise AuditLogMissing("the audit file is opened read-only")

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        def run() -> list[Row]:
            return [dict(row) for row in self._conn.execute(sql, params).fetchall()]

        return await asyncio.to_thread(run)

    def after_commit(self, callback: Callable[[], None]) -> None:
        raise AuditLogMissing("the audit file is opened read-only")
