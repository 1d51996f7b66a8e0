"""PostgreSQL restarted under load: two gateway processes answer 503 while it is down and recover alone.

The server here is a private one (tests/cluster/private_postgres.py), never the shared test server: the
test stops it. Steps:

1. initdb + pg_ctl start a cluster in a temporary directory on a free loopback port; two `cryptocity
   serve` processes (each on its own port, as the other cluster tests start them) share one schema there.
2. A load of invoice creations runs throughout: a few requests in flight, spread over both processes,
   every one with a unique Idempotency-Key and a client timeout.
3. ``pg_ctl stop -m fast`` (every session is ended, as in an operator's restart), ~5 s down: every request
   must be answered, with 503 and a problem+json body saying the store is unavailable; never a 500, never
   a hang past the client timeout.
4. ``pg_ctl start`` on the same data directory and port: within 30 s both processes create invoices
   again (201) without being restarted, and exactly one of them leads again.
5. Every invoice that was answered 201, before or after the outage, is readable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster.private_postgres import PrivateCluster, find_bin_dir
from tests.cluster.processes import Cluster, ServeProcess, cluster_env, create_merchant, wait_for_leader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = "restart"
IN_FLIGHT = 4  # concurrent clients
PAUSE_SECONDS = 0.02  # between one client's requests: a steady load, not a flood of fast 503s
CLIENT_TIMEOUT_SECONDS = 10.0
OUTAGE_SECONDS = 5.0
RECOVERY_SECONDS = 30.0
SETTLED_SECONDS = 2.0  # after both processes recovered, every later create must succeed


@dataclass(frozen=True, slots=True)
class Outcome:
    """One create as the client saw it (times on time.monotonic())."""

    process: int
    started: float
    finished: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    content_type: str
    body: Any
    error: str = ""


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "initdb not found (PostgreSQL server binaries, e.g. /usr/lib/postgresql/15/bin)"
        if os.environ.get("CRYPTOCITY_TEST_REQUIRE_PG_BIN"):  # .ci/run: this test must run, not skip
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PrivateCluster.create(bin_dir)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def gateways(tmp_path: Path, private_pg: PrivateCluster) -> AsyncIterator[Cluster]:
    started = Cluster(tmp_path, cluster_env(tmp_path, SCHEMA, CRYPTOCITY_STORE__DSN=private_pg.dsn))
    try:
        yield started
    finally:
        started.stop()


class Load:
    """Invoice creations from ``IN_FLIGHT`` clients, round-robin over the processes, until stopped."""

    def __init__(self, session: aiohttp.ClientSession, processes: list[ServeProcess], key: str) -> None:
        self.session = session
        self.processes = processes
        self.key = key
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()
        self._running = True
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(IN_FLIGHT)]

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def _client(self) -> None:
        while self._running:
            self.outcomes.append(await self.create(next(self._numbers)))
            await asyncio.sleep(PAUSE_SECONDS)

    async def create(self, n: int) -> Outcome:
        index = n % len(self.processes)
        started = time.monotonic()
        try:
            async with self.session.post(
                self.processes[index].base_url + "/v1/invoices",
                json={"amount": f"{1000 + n % 9000}.00", "currency": "KZT", "order_id": f"restart-{n}"},
                headers={"Authorization": f"Bearer {self.key}", "Idempotency-Key": f"restart-{n}"},
                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS),
            ) as response:
                text = await response.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                return Outcome(index, started, time.monotonic(), response.status, response.content_type, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(index, started, time.monotonic(), 0, "", None, f"{type(exc).__name__}: {exc}")

    def created(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 201]


def _describe(outcomes: list[Outcome], limit: int = 5) -> str:
    return "; ".join(
        f"process {o.process} status {o.status} {o.content_type} {o.error or o.body!r:.300}"
        for o in outcomes[:limit]
    )


def _unhandled(gateways: Cluster, limit: int = 2) -> str:
    """The gateways' first logged unexpected errors (what a 500 was), for the failure message."""
    lines = [
        line
        for process in gateways.processes
        for line in process.output().splitlines()
        if "api.unhandled_error" in line
    ]
    return "\n".join(line[-3000:] for line in lines[:limit])


async def _recovered(load: Load, since: float, processes: int) -> dict[int, float]:
    """Per process, when the first create started after ``since`` was answered 201 (waits up to
    RECOVERY_SECONDS in all)."""
    deadline = since + RECOVERY_SECONDS
    while True:
        first: dict[int, float] = {}
        for outcome in load.outcomes:
            if outcome.status == 201 and outcome.started >= since and outcome.process not in first:
                first[outcome.process] = outcome.finished
        if len(first) == processes:
            return first
        assert time.monotonic() < deadline, (
            f"only processes {sorted(first)} created invoices within {RECOVERY_SECONDS} s of the restart;"
            f" latest: {_describe(load.outcomes[-6:])}"
        )
        await asyncio.sleep(0.1)


async def test_gateways_answer_503_while_postgres_is_down_and_recover_after_it_restarts(
    gateways: Cluster, private_pg: PrivateCluster
) -> None:
    began = time.monotonic()
    _, key = await create_merchant(SCHEMA, private_pg.dsn)
    gateways.start(2)
    pids = [p.pid for p in gateways.processes]
    async with aiohttp.ClientSession() as session:
        await wait_for_leader(session, gateways.processes, seconds=15)
        load = Load(session, gateways.processes, key)
        load.start()
        try:
            await asyncio.sleep(2.0)
            assert len(load.created()) >= 10, _describe(load.outcomes[-5:])

            stop_requested = time.monotonic()
            await asyncio.to_thread(private_pg.stop, "fast")
            stopped = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            start_requested = time.monotonic()
            await asyncio.to_thread(private_pg.start)
            restarted = time.monotonic()

            recovered = await _recovered(load, restarted, processes=2)
            remaining = max(1.0, restarted + RECOVERY_SECONDS - time.monotonic())
            leader, _ = await wait_for_leader(session, gateways.processes, seconds=remaining)
            leader_again = time.monotonic()
            settled = max(recovered.values()) + SETTLED_SECONDS
            await asyncio.sleep(max(0.0, settled + 1.0 - time.monotonic()))
        finally:
            await load.stop()

        outcomes = load.outcomes
        # Every request was answered, with 201 or 503: no 500, no client timeout, no dropped connection.
        odd = [o for o in outcomes if o.status not in (201, 503)]
        assert not odd, f"{len(odd)} answers neither 201 nor 503: {_describe(odd)}\n{_unhandled(gateways)}"
        unavailable = [o for o in outcomes if o.status == 503]
        assert unavailable, "no request saw the outage"
        bad_problems = [
            o
            for o in unavailable
            if o.content_type != "application/problem+json"
            or not isinstance(o.body, dict)
            or o.body.get("status") != 503
            or "unavailable" not in str(o.body.get("detail", ""))
        ]
        assert not bad_problems, f"503s without a store-unavailable problem body: {_describe(bad_problems)}"
        # While the server was down, every create failed that way, on both processes.
        during = [o for o in outcomes if o.started >= stopped and o.finished <= start_requested]
        assert {o.process for o in during} == {0, 1}, "the outage window saw no request on some process"
        assert all(o.status == 503 for o in during), _describe([o for o in during if o.status != 503])
        # Both recovered, without a restart; once they had, creates succeeded again.
        assert [p.pid for p in gateways.alive()] == pids, "a gateway process exited or was replaced"
        late_failures = [o for o in outcomes if o.started >= settled and o.status != 201]
        assert not late_failures, f"failures after recovery: {_describe(late_failures)}"
        created_before = [o for o in outcomes if o.status == 201 and o.finished <= stop_requested]
        created_after = [o for o in outcomes if o.status == 201 and o.started >= restarted]
        assert created_before and created_after

        # Every invoice answered 201, before or after the outage, is stored and readable.
        reads = asyncio.Semaphore(8)

        async def read(n: int, invoice_id: str) -> tuple[int, str]:
            base = gateways.processes[n % 2].base_url
            async with (
                reads,
                session.get(
                    f"{base}/v1/invoices/{invoice_id}", headers={"Authorization": f"Bearer {key}"}
                ) as response,
            ):
                body = await response.json()
                return response.status, str(body.get("id"))

        ids = [o.body["id"] for o in load.created()]
        answers = await asyncio.gather(*(read(n, invoice_id) for n, invoice_id in enumerate(ids)))
        missing = [
            invoice_id for invoice_id, (status, got) in zip(ids, answers, strict=True) if status != 200
        ]
        assert not missing, f"{len(missing)} of {len(ids)} created invoices are not readable: {missing[:5]}"
        assert [got for _, got in answers] == ids

    print(
        f"\nrequests {len(outcomes)}: {len(ids)} created ({len(created_before)} before the stop,"
        f" {len(created_after)} after the restart), {len(unavailable)} answered 503;"
        f" pg_ctl stop {stopped - stop_requested:.1f} s, down {start_requested - stopped:.1f} s,"
        f" pg_ctl start {restarted - start_requested:.1f} s; creating again after"
        f" {', '.join(f'{t - restarted:.1f} s' for t in sorted(recovered.values()))};"
        f" leader (pid {leader}) after {leader_again - restarted:.1f} s; test {time.monotonic() - began:.0f} s"
    )
