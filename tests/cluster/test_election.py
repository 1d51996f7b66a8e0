"""The advisory-lock election between stores on one schema, and the leader jobs it starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway.api.state import LEADERSHIP, WEBHOOKS
from gateway.cluster import ElectionSettings, Leadership, PostgresElection, leader_lock_key
from gateway.cluster.leader import ELECTION_SESSION
from gateway.store import PostgresStore
from tests.conftest import GatewayFactory, pg_dsn

FAST = ElectionSettings(
    retry_seconds=0.1, check_seconds=0.1, check_timeout_seconds=1.0, reconnect_max_seconds=0.5
)


class Member:
    """One process's side of an election: its store, its leadership, a job that logs starts and stops."""

    def __init__(self, store: PostgresStore, key: int) -> None:
        self.store = store
        self.log: list[str] = []
        self.leadership = Leadership(clustered=True)
        self.election = PostgresElection(
            self.leadership, lambda: store.connect_dedicated(settings=ELECTION_SESSION), key, FAST
        )

    async def add_job(self) -> None:
        @contextlib.asynccontextmanager
        async def job() -> AsyncIterator[None]:
            self.log.append("start")
            try:
                yield
            finally:
                self.log.append("stop")

        await self.leadership.add("job", job)


@pytest.fixture
async def members(pg_schema: str) -> AsyncIterator[Callable[[int], Any]]:
    opened: list[Member] = []

    async def make(n: int) -> list[Member]:
        for _ in range(n):
            store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2)
            member = Member(store, leader_lock_key(pg_schema))
            await member.add_job()
            opened.append(member)
        return opened[-n:]

    yield make
    for member in opened:
        await member.election.stop()
        await member.store.close()


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def leading(members: list[Member]) -> list[Member]:
    return [m for m in members if m.leadership.is_leader]


async def test_the_first_to_start_leads_alone_and_a_follower_takes_over_when_it_resigns(
    members: Callable[[int], Any],
) -> None:
    first, second, third = await members(3)
    for member in (first, second, third):
        await member.election.start()
    assert leading([first, second, third]) == [first]  # won during its own start(), before serving
    assert first.log == ["start"] and second.log == third.log == []
    await asyncio.sleep(0.5)  # followers keep trying; nobody else gets the lock
    assert leading([first, second, third]) == [first]

    await first.election.stop()  # shutdown: the jobs stop, then the lock is released
    assert first.log == ["start", "stop"]
    await eventually(lambda: len(leading([second, third])) == 1, seconds=3)
    new = leading([second, third])[0]
    assert new.log == ["start"]
    await asyncio.sleep(0.5)
    assert leading([second, third]) == [new]


async def test_a_leader_whose_session_is_killed_stops_its_jobs_and_one_process_takes_over(
    members: Callable[[int], Any],
) -> None:
    first, second = await members(2)
    await first.election.start()
    await second.election.start()
    assert leading([first, second]) == [first]
    pid = first.election.backend_pid
    assert pid is not None
    admin = await asyncpg.connect(pg_dsn())
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    # The leader notices at its next check (0.1 s here), stops its job, and the lock is free for either.
    await eventually(lambda: "stop" in first.log, seconds=3)
    await eventually(lambda: len(leading([first, second])) == 1, seconds=5)
    await asyncio.sleep(0.5)
    assert len(leading([first, second])) == 1
    assert (
        first.log.count("start")
        - first.log.count("stop")
        + second.log.count("start")
        - second.log.count("stop")
        == 1
    )  # exactly one job runs


async def test_separate_schemas_have_separate_leaders(pg_schema: str) -> None:
    store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2)
    try:
        members = [Member(store, leader_lock_key(f"{pg_schema}_{secrets.token_hex(3)}")) for _ in range(2)]
        for member in members:
            await member.election.start()
        assert all(m.leadership.is_leader for m in members)
        assert leader_lock_key(pg_schema) == leader_lock_key(pg_schema)
        for member in members:
            await member.election.stop()
    finally:
        await store.close()


async def test_two_gateways_on_one_schema_one_leads_the_other_takes_over_when_it_stops(
    make_gateway: GatewayFactory,
) -> None:
    quick = {"CRYPTOCITY_CLUSTER__RETRY_SECONDS": "0.1", "CRYPTOCITY_CLUSTER__CHECK_SECONDS": "0.1"}
    first = await make_gateway(**quick)
    second = await make_gateway(**quick)
    lead, follow = first.app[LEADERSHIP], second.app[LEADERSHIP]
    assert lead.is_leader and not follow.is_leader
    assert set(lead.running_jobs) == {"rates", "outbox", "expiry-sweeper"}
    assert follow.running_jobs == () and set(follow.jobs) == {"rates", "outbox", "expiry-sweeper"}
    assert second.app[WEBHOOKS].in_flight == 0  # the dispatcher runs everywhere (not a leader job)

    async def role(app: web.Application, client: Any) -> tuple[str, str, str]:
        healthz = await (await client.get("/healthz")).json()
        readyz = await (await client.get("/readyz")).json()
        metrics = await (await client.get("/metrics")).text()
        gauge = next(line for line in metrics.splitlines() if line.startswith("cryptocity_leader "))
        return healthz["cluster"]["role"], readyz["cluster"]["role"], gauge

    assert await role(first.app, first.client) == ("leader", "leader", "cryptocity_leader 1.0")
    assert await role(second.app, second.client) == ("follower", "follower", "cryptocity_leader 0.0")

    await first.client.close()  # the first gateway shuts down and releases the lock
    await eventually(lambda: follow.is_leader, seconds=5)
    assert set(follow.running_jobs) == {"rates", "outbox", "expiry-sweeper"}
    assert await role(second.app, second.client) == ("leader", "leader", "cryptocity_leader 1.0")
    invoice = await second.create_invoice("1500.00")  # the new leader's outbox fans its event out

    async def consumed() -> bool:
        row = await second.store.read(
            lambda tx: tx.fetchone("SELECT position FROM consumer_cursors WHERE consumer = 'webhooks'")
        )
        seq = await second.store.read(
            lambda tx: tx.fetchone("SELECT seq FROM outbox WHERE invoice_id = ?", (invoice["id"],))
        )
        return row is not None and seq is not None and int(row["position"]) >= int(seq["seq"])

    deadline = asyncio.get_running_loop().time() + 5
    while not await consumed():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
