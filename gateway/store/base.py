"""The store interface every backend implements, and the errors callers may catch.

Callers see two operations:

- ``await store.transaction(fn)`` runs ``fn(tx)`` as one all-or-nothing unit and returns its result only
  after the unit is durably committed. On SQLite, units from concurrent callers may share one physical
  commit (group commit), each inside its own savepoint: a unit that raises rolls back alone and its caller
  gets the exception, the others commit; reads inside a unit see the effects of earlier units of the same
  commit. On PostgreSQL each unit is its own SERIALIZABLE transaction, and a unit that conflicts with a
  concurrent one is rolled back and run again from the start (postgres.py); so ``fn`` may run more than
  once and must keep its effects inside ``tx`` (``after_commit`` callbacks run once, for the run that
  committed). Either way the outcome is that of running the units one after another.
- ``await store.read(fn)`` runs read-only queries on one snapshot, off the writer's path.

SQL is written once with ``?`` placeholders and the portable subset shared by SQLite and PostgreSQL
(``INSERT .. ON CONFLICT``, ``RETURNING``); a backend that needs another placeholder style rewrites it.
A unit must only await its ``tx`` (the SQLite backend drives each unit to completion in one step and refuses one that
suspends on anything else): anything slow or asynchronous (network, heavy CPU) belongs before the unit
starts, because the writer serialises units. ``after_commit`` callbacks run on the event loop. A unit that
catches a store error and goes on is still rolled back on PostgreSQL (a failed statement aborts the whole
transaction there), and its caller gets the error.

Exception tree::

    StoreError
    ├── StoreUnavailable   the database cannot take writes now (disk full, I/O error, closed, unreachable,
    │                      still conflicting after every retry): answer 503
    └── UniqueViolation    a unique key already exists (a racing insert); the unit was rolled back
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]


class StoreError(Exception):
    """Base of every store failure."""


class StoreUnavailable(StoreError):
    """The store cannot commit now; nothing of the unit was written and the caller may retry later."""


class UniqueViolation(StoreError):
    """A unique constraint refused a row; the unit that tried it was rolled back."""


class Tx(Protocol):
    """Handle given to a transaction unit (or to a read function, where writes are refused)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this unit is durably committed (never if it rolls back)."""
        ...


class Store(Protocol):
    backend: str

    async def transaction(self, fn: Callable[[Tx], Coroutine[Any, Any, T]]) -> T: ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T: ...

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit (outbox consumers use it to wake up without polling).

        On PostgreSQL, with gateway/cluster/notify.py listening, also after outbox commits of other
        processes on the same schema."""
        ...

    async def close(self) -> None: ...
