"""``cryptocity serve --processes N``: a parent that runs N gateway processes and keeps them running.

Why processes and not threads: one gateway process is one event loop on one core; a 2- or 8-core machine
serves more with several. Each worker is a full gateway (the same command line, re-executed, so it starts
exactly as a single ``cryptocity serve`` would) listening on the same host and port with
``SO_REUSEPORT``: the kernel spreads incoming connections over the workers, and no worker depends on
another. They share only the PostgreSQL store, where one of them is elected leader (leader.py).

The parent (:class:`Supervisor`) holds no store and serves nothing. It:

- starts the workers and waits;
- restarts a worker that exits while the parent is not stopping, after a pause that doubles (from
  ``restart_initial_seconds`` up to ``restart_max_seconds``) while the worker keeps dying within
  ``stable_seconds`` of its start, so a crash loop does not spin;
- stops everything, without restarting, when a worker exits with status 2: that is the CLI's "refused
  to start" (a configuration error, a node on the wrong chain), which no restart can fix;
- on SIGTERM or SIGINT, sends SIGTERM to every worker (by PID), waits up to ``stop_timeout_seconds`` for
  them to drain, SIGKILLs any still running, and returns when all have stopped.

Workers end themselves if the parent disappears (the CLI passes them the parent's PID to watch), so a
SIGKILLed supervisor leaves no orphan gateways behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("gateway.cluster")

REFUSED_EXIT = 2  # the CLI's exit status for a configuration error or a refusal to start


@dataclass(slots=True)
class _Worker:
    index: int
    argv: tuple[str, ...]
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        restart_initial_seconds: float = 1.0,
        restart_max_seconds: float = 30.0,
        stable_seconds: float = 30.0,
        stop_timeout_seconds: float = 20.0,
        on_started: Callable[[int, int], None] | None = None,
    ) -> None:
        self._workers = [_Worker(i, tuple(argv)) for i, argv in enumerate(commands, start=1)]
        self._initial = restart_initial_seconds
        self._max = restart_max_seconds
        self._stable = stable_seconds
        self._stop_timeout = stop_timeout_seconds
        self._on_started = on_started
        self._stopping = asyncio.Event()
        self._refused = False

    @property
    def pids(self) -> list[int]:
        return [
            w.process.pid for w in self._workers if w.process is not None and w.process.returncode is None
        ]

    def stop(self) -> None:
        """Ask every worker to stop (what SIGTERM and SIGINT do)."""
        self._stopping.set()

    async def run(self) -> int:
        """Run until stopped; 0 when the workers were stopped, 2 when one refused to start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await asyncio.gather(*(self._keep(worker) for worker in self._workers))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return REFUSED_EXIT if self._refused else 0

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker slot: start it, wait for it, restart it, until the supervisor stops."""
        while not self._stopping.is_set():
            await self._start(worker)
            assert worker.process is not None
            code = await self._wait(worker.process)
            if code is None:  # stopping: the worker was asked to stop
                await self._terminate(worker.process)
                return
            worker.exits.append(code)
            if code == REFUSED_EXIT:
                log.error("cluster.worker_refused", worker=worker.index, pid=worker.process.pid)
                self._refused = True
                self.stop()
                return
            lived = time.monotonic() - worker.started
            worker.backoff = (
                self._initial
                if lived >= self._stable
                else min(self._max, max(self._initial, worker.backoff * 2))
            )
            log.warning(
                "cluster.worker_exited",
                worker=worker.index,
                pid=worker.process.pid,
                exit_status=code,
                restart_in=worker.backoff,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.backoff):
                    await self._stopping.wait()
            worker.restarts += 1

    async def _start(self, worker: _Worker) -> None:
        worker.process = await asyncio.create_subprocess_exec(*worker.argv, stdin=asyncio.subprocess.DEVNULL)
        worker.started = time.monotonic()
        log.info(
            "cluster.worker_started", worker=worker.index, pid=worker.process.pid, restarts=worker.restarts
        )
        if self._on_started is not None:
            self._on_started(worker.index, worker.process.pid)

    async def _wait(self, process: asyncio.subprocess.Process) -> int | None:
        """The worker's exit status, or None if the supervisor is asked to stop first."""
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if exited.done():
            return exited.result()
        exited.cancel()
        return None

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM by PID, wait for the drain, SIGKILL if it hangs."""
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self._stop_timeout)
        except TimeoutError:
            log.warning("cluster.worker_killed", pid=process.pid, after_seconds=self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
