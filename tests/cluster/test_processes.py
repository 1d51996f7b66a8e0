"""Several real gateway processes on one PostgreSQL schema: one leader, every invoice everywhere, failover.

Each process is a separate `cryptocity serve` on its own loopback port (so a test can ask each one), except
in the supervisor test, where `serve --processes 2` puts both workers on one port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.store import PostgresStore
from tests.cluster.processes import (
    Cluster,
    ServeProcess,
    cluster_env,
    create_merchant,
    health,
    leaders,
    pid_exists,
    start_serve,
    wait_for_leader,
)
from tests.conftest import pg_dsn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def cluster(tmp_path: Path, pg_schema: str) -> AsyncIterator[Cluster]:
    started = Cluster(tmp_path, cluster_env(tmp_path, pg_schema))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_three_processes_share_every_invoice_and_elect_exactly_one_leader(
    cluster: Cluster, pg_schema: str, session: aiohttp.ClientSession
) -> None:
    _, key = await create_merchant(pg_schema)
    cluster.start(3)
    await wait_for_leader(session, cluster.processes, seconds=15)

    polls: list[list[int]] = []
    polling = True

    async def poll_leaders() -> None:
        while polling:
            polls.append(await leaders(session, cluster.processes))
            await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll_leaders())
    in_flight = asyncio.Semaphore(30)

    async def create(n: int) -> tuple[int, dict[str, Any]]:
        process = cluster.processes[n % 3]
        async with (
            in_flight,
            session.post(
                process.base_url + "/v1/invoices",
                json={"amount": f"{1000 + n}.00", "currency": "KZT", "order_id": f"order-{n}"},
                headers={**auth(key), "Idempotency-Key": f"create-{n}"},
            ) as response,
        ):
            return response.status, await response.json()

    results = await asyncio.gather(*(create(n) for n in range(300)))
    polling = False
    await poller

    statuses = [status for status, _ in results]
    assert statuses.count(201) == 300, [body for status, body in results if status != 201][:3]
    invoices = [body for _, body in results]

    # Every invoice is readable from every process.
    async def read(process: ServeProcess, invoice_id: str) -> tuple[int, dict[str, Any]]:
        url = f"{process.base_url}/v1/invoices/{invoice_id}"
        async with in_flight, session.get(url, headers=auth(key)) as response:
            return response.status, await response.json()

    reads = await asyncio.gather(*(read(p, inv["id"]) for inv in invoices for p in cluster.processes))
    assert all(status == 200 for status, _ in reads), [b for s, b in reads if s != 200][:3]
    assert {body["id"] for _, body in reads} == {inv["id"] for inv in invoices}

    # No address is given to two invoices (ETH and the token share one invoice's address by design).
    owner: dict[str, str] = {}
    for invoice in invoices:
        for method in invoice["payment_methods"]:
            assert owner.setdefault(method["address"], invoice["id"]) == invoice["id"], method["address"]
    assert len(owner) == 2 * 300  # a BTC address and an EVM address each

    # Exactly one leader at every poll, and always the same process.
    assert polls and all(len(found) == 1 for found in polls), [p for p in polls if len(p) != 1][:5]
    assert len({found[0] for found in polls}) == 1


async def test_failover_after_sigkill_resumes_the_outbox_and_the_sweeper(
    cluster: Cluster, pg_schema: str, session: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(receiver_app)
    merchant_id, key = await create_merchant(pg_schema)
    cluster.start(3)
    leader_pid, _ = await wait_for_leader(session, cluster.processes, seconds=15)
    leader = next(p for p in cluster.processes if p.pid == leader_pid)
    follower = next(p for p in cluster.processes if p.pid != leader_pid)

    async with session.post(
        follower.base_url + "/v1/webhook-endpoints",
        json={"url": str(receiver.make_url("/hook"))},
        headers=auth(key),
    ) as response:
        assert response.status == 201, await response.text()
    async with session.post(
        follower.base_url + "/v1/invoices",
        json={"amount": "2500.00", "currency": "KZT", "expires_in": 30},
        headers=auth(key),
    ) as response:
        assert response.status == 201, await response.text()
        invoice = await response.json()

    leader.kill()  # SIGKILL: no clean-up; the server ends its session and with it the lock
    killed_at = asyncio.get_running_loop().time()
    survivors = cluster.alive()
    new_leader, polls = await wait_for_leader(session, survivors, seconds=10)
    assert new_leader != leader_pid
    assert asyncio.get_running_loop().time() - killed_at < 10
    assert all(len(found) <= 1 for found in polls), polls

    async def expired_delivered() -> bool:
        return any(
            e["type"] == "invoice.expired" and e["data"]["invoice"]["id"] == invoice["id"] for e in received
        )

    deadline = asyncio.get_running_loop().time() + 60
    while not await expired_delivered():
        assert asyncio.get_running_loop().time() < deadline, f"no invoice.expired webhook: {received}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # room for a duplicate to show up, if there were one

    store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2, migrate=False)
    try:
        events = await store.read(
            lambda tx: tx.fetchall(
                "SELECT id, type FROM outbox WHERE invoice_id = ? ORDER BY seq", (invoice["id"],)
            )
        )
        deliveries = await store.read(
            lambda tx: tx.fetchall(
                "SELECT d.event_id, d.status FROM webhook_deliveries d JOIN outbox o ON o.id = d.event_id"
                " WHERE o.merchant_id = ?",
                (merchant_id,),
            )
        )
    finally:
        await store.close()
    types = [row["type"] for row in events]
    assert types.count("invoice.created") == 1 and types.count("invoice.expired") == 1, types
    expired_id = next(row["id"] for row in events if row["type"] == "invoice.expired")
    assert [e["id"] for e in received].count(expired_id) == 1  # delivered, and once
    by_event: dict[str, list[str]] = {}
    for row in deliveries:
        by_event.setdefault(row["event_id"], []).append(row["status"])
    assert by_event[expired_id] == ["succeeded"]
    assert all(len(statuses) == 1 for statuses in by_event.values()), by_event  # fanned out once per event


async def test_serve_processes_supervises_workers_on_one_port(
    tmp_path: Path, pg_schema: str, session: aiohttp.ClientSession
) -> None:
    supervisor = start_serve(
        tmp_path,
        cluster_env(tmp_path, pg_schema),
        "--processes",
        "2",
        name="supervisor",
        pattern=r"2 gateway processes on (http://\S+)",
    )
    try:
        roles = await _roles_by_pid(supervisor.base_url, want=2, seconds=30)
        assert sorted(roles.values()) == ["follower", "leader"], roles
        assert supervisor.pid not in roles  # the supervisor serves nothing itself

        # A worker that dies is restarted; the other keeps serving meanwhile.
        victim = next(pid for pid, role in roles.items() if role == "follower")
        os.kill(victim, signal.SIGKILL)
        roles_after = await _roles_by_pid(supervisor.base_url, want=2, seconds=30, without=victim)
        assert victim not in roles_after and len(roles_after) == 2
        assert sorted(roles_after.values()) == ["follower", "leader"]
        assert "cluster.worker_exited" in supervisor.output()
    finally:
        status = supervisor.stop()
    assert status == 0, supervisor.output()
    for pid in roles_after:
        assert not pid_exists(pid), f"worker {pid} outlived its supervisor"
    assert len(re.findall(r"listening on http://\S+ \(worker \d, pid \d+\)", supervisor.output())) == 3


async def _roles_by_pid(base_url: str, *, want: int, seconds: float, without: int = 0) -> dict[int, str]:
    """Ask the shared port (a new connection each time, so the kernel picks a worker) until ``want``
    distinct live workers answered; their latest roles by PID."""
    roles: dict[int, str] = {}
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            answer = await health(fresh, base_url)
        if answer is not None and answer["cluster"]["pid"] != without:
            roles[answer["cluster"]["pid"]] = answer["cluster"]["role"]
        alive = {pid: role for pid, role in roles.items() if pid_exists(pid)}
        if len(alive) >= want and list(alive.values()).count("leader") == 1:
            return alive
        assert asyncio.get_running_loop().time() < deadline, f"workers seen: {roles}"
        await asyncio.sleep(0.05)
