"""The gateway under test: one real `cryptocity serve` at a time on the harness's store, killed and restarted.

Each start is a new process (a new PID, a new free port, its output in its own files so a full pipe can
never stall it: tests/cluster/processes.py). A kill is SIGKILL to exactly that PID, never by name, so the
process gets no chance to flush, close or finish anything: whatever it had not committed is gone, which
is the point. Its address-derivation worker processes are noted before the kill; they must exit by
themselves (they watch their parent), and the harness reports any that outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.processes import ServeProcess, pid_exists, start_serve


@dataclass(frozen=True, slots=True)
class Kill:
    """One SIGKILL: which process, how long it had been up, and how it ended."""

    number: int
    pid: int
    uptime_seconds: float
    returncode: int | None
    sigterm_first: float | None = None  # SIGTERM this long before the SIGKILL (a shutdown cut short)


def worker_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (the derivation workers), read from /proc."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@dataclass
class KillableGateway:
    """Starts, SIGKILLs and restarts `cryptocity serve` with the same environment (so the same store).

    ``up`` is set while a started process is believed to be serving; clients wait on it after a failed
    request instead of hammering a dead port.
    """

    workdir: Path
    env: dict[str, str]
    up: asyncio.Event = field(default_factory=asyncio.Event)
    starts: int = 0
    kills: list[Kill] = field(default_factory=list)
    workers: set[int] = field(default_factory=set)
    _process: ServeProcess | None = None
    _started_at: float = 0.0

    @property
    def base_url(self) -> str:
        if self._process is None:
            raise RuntimeError("the gateway is not running")
        return self._process.base_url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start a new process and return once it listens (start_serve waits for its banner)."""
        name = f"gateway-{self.starts}"
        self._process = await asyncio.to_thread(start_serve, self.workdir, self.env, name=name)
        self.starts += 1
        self._started_at = time.monotonic()
        self.up.set()

    async def kill(self, *, sigterm_first: float | None = None) -> Kill:
        """SIGKILL the running process by its PID and reap it. With ``sigterm_first``, a SIGTERM comes that
        many seconds earlier: a shutdown cut short, as by an impatient supervisor (the process may also
        have finished it, and exited 0, before the SIGKILL)."""
        process = self._process
        if process is None:
            raise RuntimeError("the gateway is not running")
        self.up.clear()
        self.workers.update(worker_pids(process.pid))
        uptime = time.monotonic() - self._started_at
        if sigterm_first is not None:
            os.kill(process.pid, signal.SIGTERM)
            await asyncio.sleep(sigterm_first)
        await asyncio.to_thread(process.kill)
        kill = Kill(len(self.kills) + 1, process.pid, uptime, process.process.poll(), sigterm_first)
        self.kills.append(kill)
        self._process = None
        return kill

    async def stop(self) -> int | None:
        """SIGTERM (a clean shutdown) by PID; the exit status (0 when it shut down cleanly)."""
        process = self._process
        if process is None:
            return None
        self.up.clear()
        self.workers.update(worker_pids(process.pid))
        status = await asyncio.to_thread(process.stop)
        self._process = None
        return status

    async def orphaned_workers(self, grace_seconds: float = 15.0) -> list[int]:
        """Worker processes of stopped or killed gateways still alive after ``grace_seconds`` (they notice
        their parent is gone by polling, so they get a moment)."""
        deadline = time.monotonic() + grace_seconds
        while (
            alive := sorted(pid for pid in self.workers if pid_exists(pid))
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return alive

    def output(self) -> str:
        """The running (or last) process's output, for failure messages."""
        logs = sorted(self.workdir.glob("gateway-*.err"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-4000:] if logs else ""


def ended_as_meant(kill: Kill) -> bool:
    """SIGKILLed; or, after a SIGTERM, SIGKILLed or exited cleanly before the SIGKILL came."""
    return kill.returncode == -signal.SIGKILL or (kill.sigterm_first is not None and kill.returncode == 0)
