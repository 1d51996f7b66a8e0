"""Which process runs the single-writer jobs: a PostgreSQL advisory lock held by exactly one of them.

Several gateway processes may share one PostgreSQL store. Every one serves the API, streams checkout
pages and delivers webhooks (deliveries are claimed row by row, so that is safe anywhere), but some jobs
must run in one process only, because each keeps state in memory that two copies would fight over or do
twice: the chain watchers (their followed tip), the rates refresher (a provider's rate limit is per
client), the outbox runner and its consumers (webhook fan-out, ledger, audit, metrics: they would all
process the same batch and conflict on their cursors), and the expiry sweeper. Those are the *leader
jobs* (:class:`Leadership`); the process that runs them is the leader, the others are followers.

How the leader is chosen (:class:`PostgresElection`):

- **The lock.** The leader holds ``pg_try_advisory_lock(<key>)``, a *session-level* advisory lock, on a
  connection of its own (not from the store's pool, whose connections serve one unit at a time and are
  replaced at will). The server keeps the lock for as long as that session lives and gives it to no one
  else, so at most one process holds it; no row, clock or lease is involved. The key is derived from the
  store's schema, so gateways (or tests) in separate schemas of one database elect separately.
- **Followers** try the lock every ``retry_seconds`` (1 s). A process that starts alone takes it on its
  first attempt, during start-up, so a single gateway leads from its first request, as with SQLite.
- **The leader** runs a health query on its lock's connection every ``check_seconds`` (1 s). When the
  query fails or takes longer than ``check_timeout_seconds``, or the connection closes, it stops its
  leader jobs at once and only then drops the connection (which releases the lock if the server still
  held it), and goes back to trying as a follower. So a leader cut off from the database stops within
  about ``check_seconds + check_timeout_seconds``, and two processes never both believe they lead for
  longer than that. (Even then nothing is corrupted: every job writes through SERIALIZABLE units that
  check and advance their stored cursors and checkpoints; the lock is what keeps them from wasting work.)
- **Takeover.** When the leader process dies (SIGKILL included), its kernel closes the socket, the
  server ends the session and releases the lock, and the first follower to try next takes it: within
  ``retry_seconds`` plus a round trip. A host that vanishes without closing its sockets is noticed by the
  server's TCP keepalives, which this connection sets short (about 11 s). The new leader's jobs resume
  from the store: watchers from their stored checkpoints, outbox consumers from their cursors, the sweeper
  from the invoices' expiry times, so nothing is lost or done twice.
- **Shutdown** stops the jobs and then closes the connection, so a follower takes over within a second
  instead of waiting for a failure to be noticed.

With SQLite there is no election (:class:`SingleProcess`): the store is a file of one process, which is
the leader from start to stop, exactly as before this module existed.

Role changes are logged (``cluster.elected``, ``cluster.lost``) and shown in ``/readyz``, ``/healthz``
(PostgreSQL only) and the ``cryptocity_leader`` gauge of ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.aio import cancel_and_wait, wait_for_event

log = structlog.get_logger("gateway.cluster")

JobFactory = Callable[[], contextlib.AbstractAsyncContextManager[None]]
Connect = Callable[[], Awaitable[Any]]  # opens a dedicated asyncpg connection

# Session settings of the lock's connection: the server notices a vanished client (no FIN) after about
# idle + interval × count = 11 s, instead of the operating system's two hours.
ELECTION_SESSION = {
    "application_name": "cryptocity-leader",
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


class Role(enum.StrEnum):
    LEADER = "leader"
    FOLLOWER = "follower"


def leader_lock_key(schema: str | None) -> int:
    """The advisory lock key of the gateways sharing ``schema``: a constant for one schema (a signed 64-bit
    hash of its name), so that separate schemas of one database have separate leaders."""
    digest = hashlib.blake2b(f"cryptocity leader/{schema or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    retry_seconds: float = 1.0
    check_seconds: float = 1.0
    check_timeout_seconds: float = 2.0
    reconnect_max_seconds: float = 10.0


class Leadership:
    """The leader jobs of one gateway process, and whether it runs them now.

    A job is an async context manager factory: entering it starts the job, exiting stops it, and every
    leadership term enters it afresh (a watcher of a new term reads its checkpoint from the store again).
    The app's cleanup contexts register their job with :meth:`add` and take it back with :meth:`remove`
    when they unwind, so each context still stops its own job before it releases what the job uses. A job
    registered while the process leads starts at once; so with SQLite (always leader) and with a
    PostgreSQL process that won the election during start-up, each job starts exactly where its context
    used to start it. Becoming leader starts the registered jobs in registration order; ceasing to lead
    stops them in reverse.
    """

    def __init__(self, *, clustered: bool) -> None:
        self.clustered = clustered  # False: SQLite, one process, always leader
        self._jobs: dict[str, JobFactory] = {}
        self._running: dict[str, contextlib.AbstractAsyncContextManager[None]] = {}
        self._leading = False
        self._changing = asyncio.Lock()  # one change at a time: add, remove, lead, follow
        self.terms = 0  # how many times this process became leader
        # Cleared when the process starts shutting down: a follower then no longer takes the lead (it
        # would only start jobs to stop them again), while a leader keeps checking its lock until it stops.
        self.seeking = True

    @property
    def role(self) -> Role:
        return Role.LEADER if self._leading else Role.FOLLOWER

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def jobs(self) -> tuple[str, ...]:
        return tuple(self._jobs)

    @property
    def running_jobs(self) -> tuple[str, ...]:
        return tuple(self._running)

    async def add(self, name: str, run: JobFactory) -> None:
        """Register a leader job; it starts now if this process leads (a failure to start is raised)."""
        async with self._changing:
            if name in self._jobs:
                raise ValueError(f"leader job {name!r} is registered already")
            self._jobs[name] = run
            if self._leading:
                await self._enter(name, run)

    async def remove(self, name: str) -> None:
        """Stop the job if it runs and forget it (its context is unwinding)."""
        async with self._changing:
            self._jobs.pop(name, None)
            await self._exit(name)

    async def lead(self) -> None:
        """Start every registered job. If one fails to start, those already started are stopped and the
        error raised, so the process never leads with half its jobs."""
        async with self._changing:
            if self._leading:
                return
            try:
                for name, run in list(self._jobs.items()):
                    await self._enter(name, run)
            except BaseException:
                await self._exit_all()
                raise
            self._leading = True  # reported once every job runs
            self.terms += 1

    async def follow(self) -> None:
        """Stop every running job, in reverse order; a no-op when not leading."""
        async with self._changing:
            self._leading = False
            await self._exit_all()

    async def _enter(self, name: str, run: JobFactory) -> None:
        manager = run()
        await manager.__aenter__()
        self._running[name] = manager

    async def _exit(self, name: str) -> None:
        manager = self._running.pop(name, None)
        if manager is None:
            return
        try:
            await manager.__aexit__(None, None, None)
        except Exception:  # one job failing to stop must not keep the others running
            log.exception("cluster.job_stop_failed", job=name)

    async def _exit_all(self) -> None:
        for name in reversed(list(self._running)):
            await self._exit(name)

    def view(self) -> dict[str, Any]:
        """What /readyz and /healthz show."""
        return {
            "role": self.role.value,
            "election": "advisory_lock" if self.clustered else "single_process",
            "terms": self.terms,
            "pid": os.getpid(),
        }


class Elector(Protocol):
    """Decides when this process leads; :meth:`start` returns once the first decision is made."""

    leadership: Leadership

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SingleProcess:
    """SQLite: no election. The only process leads from start-up (before any job is registered, so each
    job starts where it is registered) to shutdown."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership

    async def start(self) -> None:
        await self.leadership.lead()

    async def stop(self) -> None:
        await self.leadership.follow()


class PostgresElection:
    """The advisory-lock election (see the module docstring)."""

    def __init__(
        self,
        leadership: Leadership,
        connect: Connect,
        key: int,
        settings: ElectionSettings | None = None,
    ) -> None:
        self.leadership = leadership
        self._connect = connect
        self.key = key
        self.settings = settings or ElectionSettings()
        self._conn: Any = None
        self._closed = asyncio.Event()  # set when the current lock connection closes under us
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.last_error: str | None = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lock's session (pg_stat_activity.pid), while connected."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """One attempt now (a process alone takes the lock before it serves), then the loop."""
        try:
            await self._step()
        except Exception as exc:
            await self._lose(exc)
        if not self.leadership.is_leader:
            log.info("cluster.following", key=self.key, pid=os.getpid())
        self._task = asyncio.create_task(self._run(), name="cluster-election")

    async def stop(self) -> None:
        """Stop the jobs first, then release the lock (closing the session), so a follower takes over now."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        was_leader = self.leadership.is_leader
        await self.leadership.follow()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=self.settings.check_timeout_seconds)
            except Exception:
                conn.terminate()
        if was_leader:
            log.info("cluster.resigned", key=self.key, pid=os.getpid())

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
                self._failures = 0
                pause = (
                    self.settings.check_seconds if self.leadership.is_leader else self.settings.retry_seconds
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._lose(exc)
                self._failures += 1
                pause = min(
                    self.settings.reconnect_max_seconds,
                    self.settings.retry_seconds * 2 ** min(self._failures - 1, 10),
                )
            await wait_for_event(self._closed, pause)

    async def _step(self) -> None:
        """Follower: try the lock (and lead if granted). Leader: check that the lock's session is alive."""
        conn = self._conn
        if conn is None or conn.is_closed() or self._closed.is_set():
            if conn is not None:
                raise ConnectionError("the election connection closed")
            conn = await self._open()
        timeout = self.settings.check_timeout_seconds
        if self.leadership.is_leader:
            await conn.fetchval("SELECT 1", timeout=timeout)
            return
        if not self.leadership.seeking:
            return
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key, timeout=timeout):
            return
        log.info("cluster.elected", key=self.key, pid=os.getpid(), term=self.leadership.terms + 1)
        await self.leadership.lead()

    async def _open(self) -> Any:
        conn = await self._connect()
        closed = self._closed = asyncio.Event()  # one per connection: a dropped one cannot wake a new one
        conn.add_termination_listener(lambda _conn: closed.set())
        self._conn = conn
        return conn

    async def _lose(self, exc: BaseException) -> None:
        """Stop leading at once (if leading), then drop the connection (releasing the lock, if still held)."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.leadership.is_leader:
            log.warning("cluster.lost", key=self.key, pid=os.getpid(), reason=self.last_error)
            await self.leadership.follow()
        elif self._failures == 0:
            log.warning("cluster.election_failed", key=self.key, pid=os.getpid(), reason=self.last_error)
        conn, self._conn = self._conn, None
        self._closed = asyncio.Event()  # the back-off pause is not cut short by the connection just dropped
        if conn is not None:
            conn.terminate()


@contextlib.asynccontextmanager
async def running(elector: Elector) -> AsyncIterator[Elector]:
    """``async with running(elector):`` the election (and the leader jobs it starts) for the block."""
    await elector.start()
    try:
        yield elector
    finally:
        await elector.stop()
