"""A node must not outlive the process that started it, even when that process is killed by SIGKILL.

A simulation or test stopped by a signal runs no clean-up; without the parent-death signal its bcoin and
anvil would go on running (seen when a full-city benchmark was interrupted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STARTER = """
import asyncio
from sandbox.devnets.ethereum import EthereumDevnet

async def main() -> None:
    devnet = await EthereumDevnet(automine=False).start()
    print(devnet.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_node_dies_with_the_process_that_started_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", STARTER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    node_pid = 0
    try:
        assert parent.stdout is not None
        node_pid = int(parent.stdout.readline())
        assert _alive(node_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while _alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(node_pid), "anvil outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
        if node_pid and _alive(node_pid):
            os.kill(node_pid, signal.SIGKILL)
