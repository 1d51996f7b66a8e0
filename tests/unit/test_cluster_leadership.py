"""Leadership without a database: leader jobs start and stop in order, SQLite always leads, the supervisor
restarts and stops its workers, and `serve --processes` refuses the SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.api.state import LEADERSHIP, WEBHOOKS
from gateway.cluster import Leadership, SingleProcess, leader_lock_key
from gateway.cluster.supervisor import Supervisor
from tests.conftest import Gateway


def recorder(
    log: list[str], name: str, *, fail: bool = False
) -> contextlib.AbstractAsyncContextManager[None]:
    @contextlib.asynccontextmanager
    async def job() -> AsyncIterator[None]:
        if fail:
            raise RuntimeError(f"{name} cannot start")
        log.append(f"start {name}")
        try:
            yield
        finally:
            log.append(f"stop {name}")

    return job()


async def test_jobs_start_in_order_when_leading_and_stop_in_reverse() -> None:
    log: list[str] = []
    leadership = Leadership(clustered=True)
    await leadership.add("a", lambda: recorder(log, "a"))
    await leadership.add("b", lambda: recorder(log, "b"))
    assert log == [] and leadership.role.value == "follower"
    await leadership.lead()
    await leadership.add("c", lambda: recorder(log, "c"))  # registered while leading: starts at once
    assert log == ["start a", "start b", "start c"] and leadership.is_leader
    await leadership.follow()
    assert log[3:] == ["stop c", "stop b", "stop a"] and not leadership.is_leader
    await leadership.lead()  # a new term builds every job afresh
    await leadership.remove("b")  # its context unwinds: stopped and forgotten
    assert log[6:] == ["start a", "start b", "start c", "stop b"]
    await leadership.follow()
    assert log[10:] == ["stop c", "stop a"] and leadership.terms == 2


async def test_a_job_that_cannot_start_leaves_no_job_running_and_the_process_following() -> None:
    log: list[str] = []
    leadership = Leadership(clustered=True)
    await leadership.add("a", lambda: recorder(log, "a"))
    await leadership.add("b", lambda: recorder(log, "b", fail=True))
    with pytest.raises(RuntimeError):
        await leadership.lead()
    assert log == ["start a", "stop a"] and not leadership.is_leader and leadership.running_jobs == ()


async def test_single_process_leads_from_the_start() -> None:
    log: list[str] = []
    leadership = Leadership(clustered=False)
    elector = SingleProcess(leadership)
    await elector.start()
    await leadership.add("a", lambda: recorder(log, "a"))
    assert log == ["start a"] and leadership.view()["election"] == "single_process"
    await elector.stop()
    assert log == ["start a", "stop a"]


@pytest.mark.sqlite_only
async def test_the_sqlite_gateway_is_its_own_leader(gateway: Gateway) -> None:
    leadership = gateway.app[LEADERSHIP]
    assert leadership.is_leader and not leadership.clustered
    assert set(leadership.running_jobs) == {"rates", "outbox", "expiry-sweeper"}
    assert (await (await gateway.client.get("/healthz")).json()) == {"status": "ok", "checks": {}}
    ready = await (await gateway.client.get("/readyz")).json()
    assert ready["cluster"]["role"] == "leader"
    assert "cryptocity_leader 1.0" in await (await gateway.client.get("/metrics")).text()
    assert gateway.app[LEADERSHIP].view()["pid"] > 0
    assert "SKIP LOCKED" not in gateway.app[WEBHOOKS]._claim_sql  # SQLite keeps its plain claim


def test_the_lock_key_is_a_signed_64_bit_constant_per_schema() -> None:
    keys = {leader_lock_key(name) for name in ("public", "t_abc", "t_abd", None)}
    assert len(keys) == 4
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert leader_lock_key("t_abc") == leader_lock_key("t_abc")


async def test_the_supervisor_restarts_a_dying_worker_and_stops_the_others() -> None:
    started: list[tuple[int, int]] = []
    supervisor = Supervisor(
        [
            [sys.executable, "-c", "import time; time.sleep(0.2)"],  # dies, again and again
            [sys.executable, "-c", "import time; time.sleep(60)"],  # stays until stopped
        ],
        restart_initial_seconds=0.05,
        restart_max_seconds=0.1,
        stop_timeout_seconds=5,
        on_started=lambda index, pid: started.append((index, pid)),
    )
    running = asyncio.create_task(supervisor.run())
    deadline = asyncio.get_running_loop().time() + 20
    while sum(1 for index, _ in started if index == 1) < 3:
        assert asyncio.get_running_loop().time() < deadline, started
        await asyncio.sleep(0.05)
    assert sum(1 for index, _ in started if index == 2) == 1
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 0
    assert supervisor.pids == []


async def test_the_supervisor_gives_up_when_a_worker_refuses_to_start() -> None:
    supervisor = Supervisor(
        [
            [sys.executable, "-c", "raise SystemExit(2)"],
            [sys.executable, "-c", "import time; time.sleep(60)"],
        ],
        restart_initial_seconds=0.05,
        stop_timeout_seconds=5,
    )
    assert await asyncio.wait_for(supervisor.run(), 20) == 2
    assert supervisor.pids == []


def test_serve_processes_refuses_the_sqlite_store(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.cli", "serve", "--processes", "2", "--port", "0"],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "CRYPTOCITY_STORE__PATH": str(tmp_path / "g.sqlite3"),
        },
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "PostgreSQL" in result.stderr and "SQLite" in result.stderr
    assert not (tmp_path / "g.sqlite3").exists()  # refused before anything was opened
