"""What the fault-injection tests ask of a gateway under test: its health as operators see it, the events it
wrote, and the invariant every fault must leave intact (each payment counted exactly once).

Sizes come from the environment so that CI runs the short version and a full-size run is the same test,
bigger (``env_number``). Measured figures are printed and, with ``CRYPTOCITY_FAULT_REPORT`` naming a
file, appended to it as JSON lines, so a full-size run leaves numbers behind for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import Gateway
from tests.integration.settlement_helpers import payment_rows

REPORT_ENV = "CRYPTOCITY_FAULT_REPORT"


def env_number(name: str, default: float) -> float:
    """A positive number from the environment (the full-size knob of a test), else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def report(test: str, **figures: Any) -> None:
    """Print one measured line (visible with ``-s``) and append it to $CRYPTOCITY_FAULT_REPORT if set."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"\n[fault-report] {line}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(line + "\n")


async def readiness(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    """``GET /readyz``: its status code and body (checks per store and chain, the chains' tips)."""
    response = await gateway.client.get("/readyz")
    body: dict[str, Any] = await response.json()
    return response.status, body


async def chain_ready(gateway: Gateway, chain: str) -> bool:
    """Whether /readyz says ``chain`` is ok (False while its watcher cannot poll its node)."""
    _, body = await readiness(gateway)
    return bool(body["checks"].get(chain) == "ok")


async def chain_up_metric(gateway: Gateway, chain: str) -> float | None:
    """``cryptocity_chain_up{chain=...}`` from /metrics (None when the series is missing)."""
    text = await (await gateway.client.get("/metrics")).text()
    match = re.search(rf'^cryptocity_chain_up\{{chain="{chain}"\}} (\S+)$', text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def event_types(gateway: Gateway, invoice_id: str) -> list[str]:
    """The outbox event types of one invoice in the order they were written (what webhooks deliver)."""
    rows = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT type FROM outbox WHERE invoice_id = ? ORDER BY seq", (invoice_id,))
    )
    return [str(r["type"]) for r in rows]


async def hold_fault(
    gateway: Gateway, chain: str, seconds: float, *, until_degraded: bool, limit: float = 30.0
) -> list[str]:
    """Keep a fault on for at least ``seconds`` and, with ``until_degraded``, until /readyz reports
    ``chain`` unavailable (at most ``limit`` seconds: clients retry before they give up, so the report
    lags the fault by their retry budget). Returns the checks that were not ok, oldest first."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen: list[str] = []
    while loop.time() - started < seconds or (until_degraded and not seen and loop.time() - started < limit):
        _, body = await readiness(gateway)
        check = str(body["checks"].get(chain))
        if check != "ok":
            seen.append(check)
        await asyncio.sleep(0.1)
    return seen


async def assert_each_paid_once(
    gateway: Gateway, paid: dict[str, int], *, asset_of: dict[str, str] | None = None
) -> None:
    """Every invoice in ``paid`` (id → amount sent, in the asset's smallest unit) has exactly one payment of
    that amount, accepted, and exactly one ``payment.detected`` event: nothing missed, nothing twice."""
    for invoice_id, amount in paid.items():
        rows = await payment_rows(gateway, invoice_id)
        assert len(rows) == 1, (invoice_id, rows)
        [row] = rows
        assert int(row["amount_minor"]) == amount and row["status"] == "accepted", (invoice_id, row)
        if asset_of is not None:
            assert row["asset"] == asset_of[invoice_id]
        counts = Counter(await event_types(gateway, invoice_id))
        assert counts["payment.detected"] == 1, (invoice_id, counts)
        assert counts["payment.dropped"] == 0 and counts["invoice.reversed"] == 0, (invoice_id, counts)


def count_of(types: Iterable[str], wanted: str) -> int:
    return sum(1 for t in types if t == wanted)
