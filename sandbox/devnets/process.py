"""A local node process (bcoin, anvil): a free loopback port, a log file, and a stop by the PID we started.

Tests and tools never stop processes by name (bcoin even renames itself), so every devnet keeps the
``Popen`` of the node it spawned and stops exactly that: SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DevnetError(RuntimeError):
    """The local node could not be installed, started or stopped, or refused what it was asked."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started us dies, even by SIGKILL.

    A simulation or test stopped by a signal cannot run its clean-up, and its nodes would go on running.
    (The signal follows the thread that spawned the child; nodes are spawned from the event loop's
    default executor, whose threads live until the loop closes, after the devnets have stopped.)
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class NodeProcess:
    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def started(self) -> bool:
        return self._process is not None

    def exit_code(self) -> int | None:
        """None while the node runs (or before it started), else its exit status."""
        return None if self._process is None else self._process.poll()

    async def spawn(self, args: list[str]) -> None:
        await asyncio.to_thread(self._spawn, args)

    def _spawn(self, args: list[str]) -> None:
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments, our own node
            args,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=PROJECT_ROOT,
            preexec_fn=_die_with_parent,  # one prctl between fork and exec
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the node we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None
