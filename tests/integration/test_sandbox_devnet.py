"""Issue 8's end-to-end check on a real bcoin regtest node: residents of each tier pay through BIP21, the
sandbox accepts or holds each payment by the payer it recovers from the transaction, the regulator decides
the holds, and three independent records agree: the digital-tenge ledger, the audit chain and the
regulator's metrics.

The gateway runs in this process as `cryptocity serve` composes it (sandbox, ledger, audit log), watching
the node; every payment is a real transaction from a BIP84 wallet, found by the watcher in the mempool or
in a block. BTC is at the fixed 48,450,000 KZT.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from embit import bip39

from gateway.config import SandboxConfig
from gateway.extensions import Extensions
from sandbox.audit import audit_extensions
from sandbox.audit.keys import AuditKey
from sandbox.audit.verify import verify
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.extension import sandbox_extensions
from sandbox.ledger import store as ledger
from sandbox.ledger.model import held_account, refunds_account, settlement_account
from sandbox.limits import Tier
from sandbox.registry import Registry
from sandbox.regulator.tokens import RegulatorTokens
from tests.conftest import Gateway, GatewayFactory
from tests.integration.settlement_helpers import eventually, method, wait_state
from tests.integration.test_bitcoin_settlement import devnet_env, rpc_of, wait_tip
from wallets.bitcoin import CHANGE, EXTERNAL, BitcoinWallet

pytestmark = pytest.mark.integration

KEY = bytes.fromhex("5a" * 32)


def new_wallet() -> BitcoinWallet:
    return BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)


@pytest.fixture
async def devnet(tmp_path: Path) -> AsyncIterator[BitcoinDevnet]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node:
        yield node


async def register(registry: Registry, wallet: BitcoinWallet, tier: Tier, *, originator_data: bool) -> str:
    resident = await registry.add_resident(tier, originator_data=originator_data)
    for chain in (EXTERNAL, CHANGE):
        for index in range(30):
            await registry.register_wallet(
                resident.id, "bitcoin", wallet.script_pubkey(index, chain=chain).hex()
            )
    return resident.id


async def decision(gateway: Gateway, invoice: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def judged() -> bool:
        row = await gateway.store.read(
            lambda tx: tx.fetchone("SELECT * FROM sandbox_payments WHERE invoice_id = ?", (invoice["id"],))
        )
        if row is not None:
            found.update(dict(row))
        return row is not None

    await eventually(judged)
    return found


async def test_tiers_pay_on_chain_and_ledger_audit_and_metrics_agree(
    make_gateway: GatewayFactory, devnet: BitcoinDevnet
) -> None:
    anonymous, basic, verified, stranger = new_wallet(), new_wallet(), new_wallet(), new_wallet()
    await devnet.fund(anonymous)  # activates segwit, hundreds of mature coins
    for wallet in (basic, verified, stranger):
        await devnet.fund(wallet, blocks=101)  # one mature coinbase each
    rpc = rpc_of(devnet)
    for wallet in (anonymous, basic, verified, stranger):
        await wallet.scan(rpc)

    key = AuditKey.load(environ={"CRYPTOCITY_AUDIT_KEY": KEY.hex()})
    assert key is not None
    audit = audit_extensions(key)
    gateway = await make_gateway(
        sandbox_extensions(SandboxConfig(), Extensions(consumers=audit.consumers)), **devnet_env(devnet)
    )
    await wait_tip(gateway, devnet)
    registry = Registry(gateway.store, gateway.clock)
    await register(registry, anonymous, Tier.ANONYMOUS, originator_data=False)
    await register(registry, basic, Tier.BASIC, originator_data=True)
    await register(registry, verified, Tier.VERIFIED, originator_data=False)
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("e2e")).plaintext

    async def pay(wallet: BitcoinWallet, amount: str) -> tuple[dict[str, Any], dict[str, Any]]:
        invoice = await gateway.create_invoice(amount, assets=["BTC"])
        await wallet.pay_uri(rpc, method(invoice, "BTC")["uri"])
        return invoice, await decision(gateway, invoice)

    cases = [
        (anonymous, "10000.00", "accepted", None),  # under 3 MRP (12,975 KZT)
        (anonymous, "15000.00", "held", "over_operation_limit"),
        (basic, "400000.00", "accepted", None),
        (basic, "200000.00", "held", "over_monthly_limit"),  # 600,000 > US$1,000 (505,000 KZT) this month
        (verified, "600000.00", "held", "travel_rule_data_missing"),  # >= US$1,000, no originator data
        (stranger, "5000.00", "held", "unregistered_payer"),
    ]
    paid = []
    for wallet, amount, expected, reason in cases:
        invoice, judged = await pay(wallet, amount)
        assert (judged["decision"], judged["reason"]) == (expected, reason), (amount, judged)
        assert (judged["resident_id"] is None) == (wallet is stranger)
        paid.append((invoice, judged))

    # The regulator releases the travel-rule hold (the originator data arrived) and refunds the stranger.
    async def regulator(path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        response = await gateway.client.request(
            "POST" if body is not None else "GET", f"/sandbox/v1{path}", json=body, headers=headers
        )
        assert response.status == 200, await response.text()
        return await response.json()

    travel, unregistered = paid[4][1], paid[5][1]
    await regulator(f"/holds/bitcoin/{travel['payment_key']}/release", {"note": "originator data received"})
    await regulator(f"/holds/bitcoin/{unregistered['payment_key']}/refund", {})
    await devnet.mine(3, anonymous.address(0))  # confirmations for the larger invoices
    for index in (0, 2, 4):
        await wait_state(gateway, paid[index][0]["id"], "settled")
    for index in (1, 3, 5):
        assert (await wait_state(gateway, paid[index][0]["id"], "new"))["status"] == "new"

    # 1. The ledger: balanced; settlement = the prices of the settled invoices; held and refunds.
    merchant = gateway.merchant_id
    settled_prices = sum(paid[i][0]["amount_tiyn"] for i in (0, 2, 4))

    async def booked() -> bool:
        balance = await gateway.store.read(lambda tx: ledger.balance(tx, settlement_account(merchant)))
        return balance == settled_prices

    await eventually(booked, 30)
    balances = await gateway.store.read(ledger.balances)
    assert await gateway.store.read(ledger.trial_balance) == 0
    assert balances.get(held_account(merchant), 0) == paid[1][1]["value_tiyn"] + paid[3][1]["value_tiyn"]
    assert balances.get(refunds_account(merchant), 0) == unregistered["value_tiyn"]

    # 2. The regulator's metrics say the same.
    summary = await regulator("/summary")
    counted = sum(paid[i][1]["value_tiyn"] for i in (0, 2, 4))
    assert summary["volume"]["total_tiyn"] == counted
    settled_value = counted  # every counted payment belongs to a settled invoice: value at the locked rate
    fx_and_overpaid = sum(
        v for k, v in balances.items() if k.startswith((f"fx:{merchant}", f"overpaid:{merchant}"))
    )
    assert balances[settlement_account(merchant)] + fx_and_overpaid == settled_value
    assert summary["payments"]["judged"] == 6 and summary["payments"]["held"] == 4
    assert summary["payments"]["held_by_reason"] == {
        "over_monthly_limit": 1,
        "over_operation_limit": 1,
        "travel_rule_data_missing": 1,
        "unregistered_payer": 1,
    }
    assert summary["invoices"]["by_status"] == {"new": 3, "settled": 3}
    assert summary["unique_payers"]["residents"] == 3
    trial = await regulator("/ledger/trial-balance")
    assert trial["trial_balance_tiyn"] == 0 and trial["mismatches"] == []

    # 3. The audit chain verifies under the regulator's key and holds every decision and action.
    async def audited() -> bool:
        rows = await gateway.store.read(
            lambda tx: tx.fetchone(
                "SELECT count(*) AS n FROM audit_log WHERE kind = 'sandbox.payment_decided'"
            )
        )
        return rows is not None and int(rows["n"]) == 6

    await eventually(audited, 30)
    kinds = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT kind, count(*) AS n FROM audit_log GROUP BY kind")
    )
    counts = {row["kind"]: int(row["n"]) for row in kinds}
    assert counts["sandbox.hold_released"] == 1 and counts["sandbox.hold_refunded"] == 1
    assert counts["invoice.settled"] == 3
    result = await verify(gateway.store, key)
    assert result.ok, result.verdict()
