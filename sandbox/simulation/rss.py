"""Peak resident memory of a whole process tree (driver, gateway, shop and the nodes it started), sampled.

Read from /proc, so no extra dependency: the sum of VmRSS over the process and all its descendants at each
sample, and the largest sum seen. Linux only; elsewhere the figure is reported as unavailable (None).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

PROC = Path("/proc")


def _children_map() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            found.setdefault(ppid, []).append(int(entry.name))
    return found


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss_bytes(root: int | None = None) -> int | None:
    """RSS of ``root`` (default: this process) plus every descendant, now."""
    if not PROC.exists():
        return None
    children = _children_map()
    pending, total = [root or os.getpid()], 0
    while pending:
        pid = pending.pop()
        total += _rss_bytes(pid)
        pending.extend(children.get(pid, []))
    return total


class PeakRss:
    """Samples :func:`tree_rss_bytes` every ``interval`` seconds while running."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak: int | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        now = tree_rss_bytes()
        if now is not None:
            self.peak = max(self.peak or 0, now)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="peak-rss")

    async def stop(self) -> None:
        self.sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
