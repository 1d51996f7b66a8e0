"""What the settlement tests of both chains ask of a running gateway: wait for a state, read payments."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import Gateway


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def invoice_body(gateway: Gateway, invoice_id: str) -> dict[str, Any]:
    response = await gateway.client.get(f"/v1/invoices/{invoice_id}", headers=gateway.auth())
    body: dict[str, Any] = await response.json()
    return body


async def wait_state(
    gateway: Gateway, invoice_id: str, status: str, flags: list[str] | None = None, seconds: float = 20.0
) -> dict[str, Any]:
    """Until the invoice has ``status`` (and exactly ``flags``, when given); its body then."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen.update(await invoice_body(gateway, invoice_id))
        return bool(seen["status"] == status and (flags is None or seen["flags"] == flags))

    try:
        await eventually(check, seconds)
    except AssertionError:
        raise AssertionError(
            f"{invoice_id} is {seen.get('status')} {seen.get('flags')}, not {status} {flags or ''}"
        ) from None
    return seen


async def payment_rows(gateway: Gateway, invoice_id: str) -> list[dict[str, Any]]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT payment_key, asset, amount_minor, status, confirmations, payer FROM payments"
            " WHERE invoice_id = ? ORDER BY detected_at, id",
            (invoice_id,),
        )
    )
    return [dict(r) for r in rows]


async def confirmations_are(gateway: Gateway, invoice_id: str, count: int) -> bool:
    rows = await payment_rows(gateway, invoice_id)
    return bool(rows) and all(r["confirmations"] == count for r in rows)


async def drop_reasons(gateway: Gateway, invoice_id: str) -> list[str]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT payload FROM outbox WHERE invoice_id = ? AND type = 'payment.dropped' ORDER BY seq",
            (invoice_id,),
        )
    )
    return [json.loads(r["payload"])["data"]["reason"] for r in rows]


def method(invoice: dict[str, Any], asset: str) -> dict[str, Any]:
    """The invoice's payment method for ``asset``."""
    return next(m for m in invoice["payment_methods"] if m["asset"] == asset)
