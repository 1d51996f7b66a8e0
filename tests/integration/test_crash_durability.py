"""Durability of invoice creation: SIGKILL the gateway under concurrent creates, restart, check every 201.

The gateway answers 201 only after the group commit that holds the invoice, its addresses and its
`invoice.created` event is on disk (synchronous=FULL), so every answered invoice must survive a kill, and
index reservations made ahead must never let a restarted gateway hand out an address twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.integration.gateway_process import create_merchant, start_gateway

pytestmark = pytest.mark.integration


async def _hammer(base_url: str, key: str, answered: list[dict[str, object]], stop: asyncio.Event) -> None:
    """Create invoices on 32 connections until told to stop or the server dies; keep every 201 body."""

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async with session.post(
                    f"{base_url}/v1/invoices",
                    json={"amount": f"{1000 + n}.00", "currency": "KZT", "order_id": f"{n}-{i}"},
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    if response.status == 201:
                        answered.append(await response.json())
            except (TimeoutError, aiohttp.ClientError):
                return  # the server was killed: this request's fate is unknown, which is allowed

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session, n) for n in range(32)))


async def _load_then_kill(
    base_url: str, key: str, process_kill: object, seconds: float
) -> list[dict[str, object]]:
    answered: list[dict[str, object]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_hammer(base_url, key, answered, stop))
    await asyncio.sleep(seconds)
    process_kill()
    stop.set()
    await asyncio.wait_for(load, timeout=30)
    return answered


def test_every_answered_invoice_survives_sigkill_and_no_address_repeats(tmp_path: Path) -> None:
    key = create_merchant(tmp_path)["api_key"]
    answered: list[dict[str, object]] = []
    for round_number in range(3):
        gateway = start_gateway(tmp_path)
        try:
            got = asyncio.run(
                _load_then_kill(
                    gateway.base_url, key, functools.partial(gateway.process.send_signal, signal.SIGKILL), 1.5
                )
            )
        finally:
            gateway.stop()
        assert got, f"round {round_number}: no invoice was created before the kill"
        answered += got

    conn = sqlite3.connect(tmp_path / "gateway.sqlite3")
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM invoices")}
        events = {
            row[0] for row in conn.execute("SELECT invoice_id FROM outbox WHERE type = 'invoice.created'")
        }
        addresses = conn.execute(
            "SELECT chain, address, invoice_id, derivation_index FROM invoice_addresses"
        ).fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    answered_ids = {str(body["id"]) for body in answered}
    assert answered_ids <= stored, "an invoice answered with 201 was lost"
    assert answered_ids <= events, "an answered invoice has no invoice.created event"
    by_invoice = {(chain, invoice): address for chain, address, invoice, _ in addresses}
    for body in answered:
        for method in body["payment_methods"]:  # type: ignore[attr-defined]
            chain = method["chain"]
            assert by_invoice[(chain, body["id"])] == method["address"]
    for chain in ("bitcoin", "ethereum"):
        indexes = [index for c, _, _, index in addresses if c == chain]
        assert len(indexes) == len(set(indexes)), f"a {chain} derivation index was used twice across restarts"
    print(json.dumps({"answered": len(answered), "stored": len(stored)}))
