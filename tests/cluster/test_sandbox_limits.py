"""The sandbox's limits hold across processes: two payments of one resident, over the month's limit together,
recorded at the same moment by two gateways (two stores) on one schema → exactly one is held."""

from __future__ import annotations

import asyncio

from gateway.config import SandboxConfig
from sandbox.extension import sandbox_extensions
from sandbox.limits import Tier
from sandbox.registry import Registry
from tests.api.test_sandbox import SCRIPT_A, SCRIPT_B, pay, resident, txid
from tests.conftest import GatewayFactory


async def test_two_payments_over_the_limit_recorded_by_two_gateways_hold_exactly_one(
    make_gateway: GatewayFactory,
) -> None:
    first = await make_gateway(sandbox_extensions(SandboxConfig()))
    second = await make_gateway(sandbox_extensions(SandboxConfig()))
    registry = Registry(first.store, first.clock)
    payers = [SCRIPT_A, SCRIPT_B, "0014" + "cc" * 20]
    for script in payers:
        await resident(registry, Tier.BASIC, script)
    # Per resident two invoices of 300,000 KZT: either fits under the 505,000 KZT month, both do not.
    invoices = [
        (
            await first.create_invoice("300000.00", assets=["BTC"]),
            await second.create_invoice("300000.00", assets=["BTC"]),
        )
        for _ in payers
    ]
    rows = await asyncio.gather(
        *(
            payment
            for n, (script, (one, other)) in enumerate(zip(payers, invoices, strict=True))
            for payment in (
                pay(first, one, txid(2 * n + 1), script=script),  # through the first gateway's store
                pay(second, other, txid(2 * n + 2), script=script),  # through the second's, at once
            )
        )
    )
    for n in range(len(payers)):
        pair = rows[2 * n : 2 * n + 2]
        assert sorted(r["decision"] for r in pair) == ["accepted", "held"], pair
        assert [r["reason"] for r in pair if r["decision"] == "held"] == ["over_monthly_limit"]
