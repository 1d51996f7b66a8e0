"""The sandbox around the real gateway: limits, holds, the aggregate cap, licences, and the regulator API.

Payments enter the way a watcher hands them over (``InvoiceService.record_payment`` with the payer scripts
the watcher recovered); the sandbox policy judges each one inside the gateway's transaction.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from gateway.chains.chain_state import AddressSpend, ChainState, StoredBlock
from gateway.config import SandboxConfig
from gateway.extensions import DetectedPayment
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.rates.base import AssetRate
from sandbox.extension import sandbox_extensions
from sandbox.limits import SandboxRules, Tier
from sandbox.policy import SandboxPolicy
from sandbox.registry import Category, Registry
from sandbox.regulator.tokens import RegulatorTokens
from tests.conftest import Gateway, GatewayFactory

SCRIPT_A = "0014" + "aa" * 20
SCRIPT_B = "0014" + "bb" * 20
USD = Decimal("505.00")  # config's sandbox.usd_kzt


async def sandbox_gateway(make_gateway: GatewayFactory, **rules: Any) -> tuple[Gateway, Registry, str]:
    gateway = await make_gateway(sandbox_extensions(SandboxConfig(**rules)))
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("test regulator")).plaintext
    return gateway, Registry(gateway.store, gateway.clock), token


async def resident(registry: Registry, tier: Tier, script: str, *, originator_data: bool = False) -> str:
    found = await registry.add_resident(tier, originator_data=originator_data)
    await registry.register_wallet(found.id, "bitcoin", script)
    return found.id


async def pay(
    gateway: Gateway, invoice: dict[str, Any], key: str, *, script: str | None, amount: int | None = None
) -> dict[str, Any]:
    method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
    fact = PaymentFact(
        Chain.BITCOIN,
        method["address"],
        key,
        Asset.BTC,
        method["amount_due_minor"] if amount is None else amount,
        6,
        payer=script,
        payer_scripts=(script,) if script else (),
    )
    await gateway.service.record_payment(fact)
    row = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT * FROM sandbox_payments WHERE payment_key = ?", (key,))
    )
    assert row is not None
    return dict(row)


def txid(n: int) -> str:
    return f"{n:064x}:0"


async def regulator(gateway: Gateway, method: str, path: str, token: str | None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await gateway.client.request(method, f"/sandbox/v1{path}", json=body, headers=headers)
    text = await response.text()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return response.status, parsed


# -- limits, with the policy called directly on exact tenge values ------------------------------------


def detected(
    value_tiyn: int, *, script: str = SCRIPT_A, when: datetime | None = None, n: int = 1
) -> DetectedPayment:
    return DetectedPayment(
        invoice_id="inv_x",
        merchant_id="mer_x",
        chain="bitcoin",
        payment_key=txid(n),
        asset=Asset.BTC,
        amount_minor=1,
        value_tiyn=value_tiyn,
        payer=script,
        detected_at=when or datetime(2026, 12, 10, 12, 0, tzinfo=UTC),
        payer_scripts=(script,),
    )


@pytest.mark.parametrize(("delta", "held"), [(-1, False), (0, False), (1, True)])
async def test_the_per_operation_limit_is_inclusive_to_the_tiyn(
    make_gateway: GatewayFactory, delta: int, held: bool
) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway)
    await resident(registry, Tier.ANONYMOUS, SCRIPT_A)
    limit = 3 * 432_500  # 3 MRP of 4,325 KZT, in tiyn
    policy = SandboxPolicy(SandboxRules(SandboxConfig()))
    decision = await gateway.store.transaction(lambda tx: policy.decide(tx, detected(limit + delta)))
    assert decision.accept is not held
    assert decision.reason == ("over_operation_limit" if held else None)


async def test_the_monthly_limit_counts_the_calendar_month_in_almaty(make_gateway: GatewayFactory) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway)
    await resident(registry, Tier.BASIC, SCRIPT_A, originator_data=True)  # a whole month's cap in one go
    policy = SandboxPolicy(SandboxRules(SandboxConfig()))
    monthly = int(1000 * USD * 100)  # US$1,000 at the official rate, in tiyn
    november = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # 23:00 in Almaty: still November
    december = datetime(2026, 11, 30, 19, 30, tzinfo=UTC)  # 00:30 on 1 December in Almaty

    async def decide(value: int, when: datetime, n: int) -> Any:
        return await gateway.store.transaction(lambda tx: policy.decide(tx, detected(value, when=when, n=n)))

    assert (await decide(monthly - 100, november, 1)).accept
    assert (await decide(101, november, 2)).reason == "over_monthly_limit"  # one tiyn over November's limit
    assert (await decide(100, november, 3)).accept  # exactly at it
    assert (await decide(monthly, december, 4)).accept  # a new month in Almaty, though still November in UTC
    rows = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT month, decision FROM sandbox_payments ORDER BY payment_key")
    )
    assert [(r["month"], r["decision"]) for r in rows] == [
        ("2026-11", "accepted"),
        ("2026-11", "held"),
        ("2026-11", "accepted"),
        ("2026-12", "accepted"),
    ]


async def test_the_travel_rule_needs_originator_data_from_us_1000(make_gateway: GatewayFactory) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway)
    await resident(registry, Tier.VERIFIED, SCRIPT_A)
    await resident(registry, Tier.VERIFIED, SCRIPT_B, originator_data=True)
    policy = SandboxPolicy(SandboxRules(SandboxConfig()))
    threshold = int(1000 * USD * 100)
    below = await gateway.store.transaction(lambda tx: policy.decide(tx, detected(threshold - 1, n=1)))
    at = await gateway.store.transaction(lambda tx: policy.decide(tx, detected(threshold, n=2)))
    with_data = await gateway.store.transaction(
        lambda tx: policy.decide(tx, detected(threshold, script=SCRIPT_B, n=3))
    )
    assert below.accept and with_data.accept
    assert at.reason == "travel_rule_data_missing"


async def test_unregistered_payers_and_disallowed_assets_are_held(make_gateway: GatewayFactory) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway, allowed_assets=[Asset.ETH])
    invoice = await gateway.create_invoice("1000.00", assets=["BTC"])
    assert (await pay(gateway, invoice, txid(1), script=SCRIPT_B))["reason"] == "unregistered_payer"
    await resident(registry, Tier.BASIC, SCRIPT_A)
    other = await gateway.create_invoice("1000.00", assets=["BTC"])
    assert (await pay(gateway, other, txid(2), script=SCRIPT_A))["reason"] == "asset_not_allowed"
    record = await gateway.service.get(None, other["id"])
    assert record.state.status.value == "new"  # a held payment does not move the invoice


# -- end to end through the service ---------------------------------------------------------------------


async def test_two_concurrent_payments_crossing_the_month_hold_exactly_one(
    make_gateway: GatewayFactory,
) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway)
    await resident(registry, Tier.BASIC, SCRIPT_A)
    # Two invoices of 300,000 KZT each: either fits under the 505,000 KZT month, both do not.
    first = await gateway.create_invoice("300000.00", assets=["BTC"])
    second = await gateway.create_invoice("300000.00", assets=["BTC"])
    rows = await asyncio.gather(
        pay(gateway, first, txid(1), script=SCRIPT_A), pay(gateway, second, txid(2), script=SCRIPT_A)
    )
    assert sorted(r["decision"] for r in rows) == ["accepted", "held"]
    assert [r["reason"] for r in rows if r["decision"] == "held"] == ["over_monthly_limit"]


async def test_a_suspended_merchant_gets_403_on_new_invoices_and_its_payments_are_held(
    make_gateway: GatewayFactory,
) -> None:
    gateway, registry, token = await sandbox_gateway(make_gateway)
    await resident(registry, Tier.BASIC, SCRIPT_A)
    invoice = await gateway.create_invoice("1000.00", assets=["BTC"])
    status, body = await regulator(
        gateway, "POST", f"/merchants/{gateway.merchant_id}/suspend", token, {"reason": "licence review"}
    )
    assert status == 200 and body["licence_status"] == "suspended"
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "1000.00", "currency": "KZT"}, headers=gateway.auth()
    )
    problem = await response.json()
    assert response.status == 403 and "suspended" in problem["detail"]
    assert (await pay(gateway, invoice, txid(1), script=SCRIPT_A))["reason"] == "merchant_suspended"
    status, body = await regulator(gateway, "POST", f"/merchants/{gateway.merchant_id}/reinstate", token, {})
    assert status == 200 and body["licence_status"] == "active"
    await gateway.create_invoice("1000.00")


async def test_the_aggregate_cap_refuses_new_invoices_with_403(make_gateway: GatewayFactory) -> None:
    gateway, registry, _ = await sandbox_gateway(make_gateway, aggregate_cap="10000 KZT")
    await resident(registry, Tier.BASIC, SCRIPT_A)
    invoice = await gateway.create_invoice("6000.00", assets=["BTC"])
    await pay(gateway, invoice, txid(1), script=SCRIPT_A)
    still = await gateway.create_invoice("6000.00", assets=["BTC"])  # 6,000 of 10,000 used: still open
    await pay(gateway, still, txid(2), script=SCRIPT_A)
    response = await gateway.client.post(
        "/v1/invoices", json={"amount": "100.00", "currency": "KZT"}, headers=gateway.auth()
    )
    problem = await response.json()
    assert response.status == 403 and problem["type"].endswith("sandbox-cap-reached")
    assert "10000 KZT" in problem["detail"]

    # The cap is a calendar month's (Asia/Almaty): next month the sandbox takes invoices again.
    rules = SandboxRules(SandboxConfig())
    _, month_end = rules.month_bounds(rules.month_of(gateway.clock.now()))
    gateway.clock.set(month_end + timedelta(minutes=1))
    reopened = await gateway.client.post(
        "/v1/invoices", json={"amount": "100.00", "currency": "KZT"}, headers=gateway.auth()
    )
    assert reopened.status == 201, await reopened.text()


async def test_the_regulator_releases_or_refunds_a_hold_once(make_gateway: GatewayFactory) -> None:
    gateway, _, token = await sandbox_gateway(make_gateway)
    released = await gateway.create_invoice("2000.00", assets=["BTC"])
    refunded = await gateway.create_invoice("2500.00", assets=["BTC"])
    await pay(gateway, released, txid(1), script=SCRIPT_B)  # unregistered: held
    await pay(gateway, refunded, txid(2), script=SCRIPT_B)

    status, queue = await regulator(gateway, "GET", "/holds", token)
    assert status == 200 and {h["payment_key"] for h in queue["data"]} == {txid(1), txid(2)}
    assert all(h["reason"] == "unregistered_payer" and "payer" not in h for h in queue["data"])

    status, body = await regulator(
        gateway, "POST", f"/holds/bitcoin/{txid(1)}/release", token, {"note": "checked"}
    )
    assert status == 200 and body["resolution"] == "released"
    assert (await gateway.service.get(None, released["id"])).state.status.value == "settled"
    status, problem = await regulator(gateway, "POST", f"/holds/bitcoin/{txid(1)}/release", token, {})
    assert status == 409 and "already" in problem["detail"]

    status, body = await regulator(
        gateway, "POST", f"/holds/bitcoin/{txid(2)}/refund", token, {"refund_address": "bcrt1qrefund"}
    )
    assert status == 200 and body["resolution"] == "refunded" and body["refund_address"] == "bcrt1qrefund"
    status, _ = await regulator(gateway, "POST", f"/holds/bitcoin/{txid(2)}/release", token, {})
    assert status == 409
    status, queue = await regulator(gateway, "GET", "/holds", token)
    assert queue["data"] == []
    events = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT type FROM outbox WHERE type LIKE 'sandbox.hold_%' ORDER BY seq")
    )
    assert [e["type"] for e in events] == ["sandbox.hold_released", "sandbox.hold_refunded"]


async def test_the_regulator_api_wants_a_regulator_token(make_gateway: GatewayFactory) -> None:
    gateway, _, token = await sandbox_gateway(make_gateway)
    assert (await regulator(gateway, "GET", "/summary", None))[0] == 401
    status, problem = await regulator(gateway, "GET", "/summary", gateway.api_key)
    assert status == 403 and "merchant" in problem["detail"]
    assert (await regulator(gateway, "GET", "/summary", "crt_" + "0" * 38))[0] == 401
    assert (await regulator(gateway, "GET", "/summary", token))[0] == 200
    response = await gateway.client.get("/v1/invoices", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401  # and a regulator token is no merchant key


async def test_summary_and_exports_of_a_period(make_gateway: GatewayFactory) -> None:
    gateway, registry, token = await sandbox_gateway(make_gateway)
    resident_id = await resident(registry, Tier.BASIC, SCRIPT_A)
    await registry.set_merchant_profile(gateway.merchant_id, category=Category.CAFE)
    paid = await gateway.create_invoice("5300.00", assets=["BTC"])
    accepted = await pay(gateway, paid, txid(1), script=SCRIPT_A)
    held_invoice = await gateway.create_invoice("700.00", assets=["BTC"])
    await pay(gateway, held_invoice, txid(2), script=SCRIPT_B)
    await gateway.create_invoice("100.00")  # left open

    start = (gateway.clock.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (gateway.clock.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, summary = await regulator(gateway, "GET", f"/summary?from={start}&to={end}", token)
    assert status == 200, summary
    assert summary["volume"]["total_tiyn"] == accepted["value_tiyn"]
    assert summary["volume"]["by_category"] == {"cafe": accepted["value_tiyn"]}
    assert summary["volume"]["by_asset"] == {"BTC": accepted["value_tiyn"]}
    assert summary["invoices"]["created"] == 3 and summary["invoices"]["by_status"]["settled"] == 1
    assert summary["payments"] == {
        "judged": 2,
        "held": 1,
        "held_rate": 0.5,
        "held_by_reason": {"unregistered_payer": 1},
    }
    assert summary["settlement_seconds"]["count"] == 1
    assert summary["unique_payers"] == {"residents": 1, "unregistered_wallets": 1}
    assert summary["limit_utilisation"]["residents"] == 1

    status, residents = await regulator(gateway, "GET", "/residents", token)
    assert [r["id"] for r in residents["data"]] == [resident_id]
    assert residents["data"][0]["month_used_tiyn"] == accepted["value_tiyn"]
    status, trial = await regulator(gateway, "GET", "/ledger/trial-balance", token)
    assert status == 200 and trial["trial_balance_tiyn"] == 0

    status, text = await regulator(
        gateway, "GET", f"/exports/payments?from={start}&to={end}&format=csv", token
    )
    body, trailer = text.rstrip("\n").rsplit("\n", 1)
    assert trailer == "# audit_head none"  # no audit log in this gateway: said so, not left out
    rows = list(csv.DictReader(io.StringIO(body)))
    assert status == 200 and [r["payment_key"] for r in rows] == [txid(1), txid(2)]
    status, lines = await regulator(
        gateway, "GET", f"/exports/payments?from={start}&to={end}&format=jsonl", token
    )
    *records, last = [json.loads(line) for line in str(lines).splitlines()]
    assert [r["decision"] for r in records] == ["accepted", "held"] and last == {"audit_head": None}
    empty_from, empty_to = "2020-01-01T00:00:00Z", "2020-02-01T00:00:00Z"
    status, text = await regulator(
        gateway, "GET", f"/exports/payments?from={empty_from}&to={empty_to}&format=csv", token
    )
    assert status == 200 and text.splitlines() == [text.splitlines()[0], "# audit_head none"]
    assert text.startswith("decided_at,")
    status, problem = await regulator(gateway, "GET", f"/summary?from={end}&to={start}", token)
    assert status == 400 and problem["errors"][0]["pointer"] == "?to"


class MovableRates:
    """A rate source whose BTC price the test moves (the fixed table cannot change while running)."""

    def __init__(self) -> None:
        self.btc = Decimal("48450000.00")

    def current(self, asset: Asset, now: datetime) -> Any:
        price = {Asset.BTC: self.btc, Asset.ETH: Decimal("1683000.00"), Asset.USDT: Decimal("510.00")}[asset]
        return AssetRate(asset, price, ("test",), now)


async def test_exposure_values_the_coins_on_invoice_addresses_now_and_at_the_locked_rates(
    make_gateway: GatewayFactory,
) -> None:
    rates = MovableRates()
    gateway = await make_gateway(sandbox_extensions(SandboxConfig()), rates=rates)
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("t")).plaintext
    registry = Registry(gateway.store, gateway.clock)
    await resident(registry, Tier.BASIC, SCRIPT_A)
    settled = await gateway.create_invoice("5000.00", assets=["BTC"])
    held = await gateway.create_invoice("3000.00", assets=["BTC"])
    gone = await gateway.create_invoice("2000.00", assets=["BTC"])
    one = await pay(gateway, settled, txid(1), script=SCRIPT_A)
    two = await pay(gateway, held, txid(2), script=SCRIPT_B)  # unregistered: held
    await pay(gateway, gone, txid(3), script=SCRIPT_A)
    await gateway.service.payment_dropped(Chain.BITCOIN, txid(3), DropReason.DOUBLE_SPENT)

    async def booked() -> bool:
        # The ledger must have handled every event, not merely show the expected balance: before it books the
        # dropped payment's settlement and reversal the balance is already one + two.
        row = await gateway.store.read(
            lambda tx: tx.fetchone(
                "SELECT (SELECT balance_tiyn FROM ledger_balances WHERE account = 'clearing:BTC') AS balance,"
                " (SELECT position FROM consumer_cursors WHERE consumer = 'ledger') AS position,"
                " (SELECT COALESCE(MAX(seq), 0) FROM outbox) AS head"
            )
        )
        return (
            row is not None
            and row["balance"] is not None
            and row["position"] == row["head"]
            and -int(row["balance"]) == one["value_tiyn"] + two["value_tiyn"]
        )

    deadline = asyncio.get_running_loop().time() + 10
    while not await booked():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    rates.btc = Decimal("50000000.00")  # the market moved up after the payments were judged
    status, body = await regulator(gateway, "GET", "/exposure", token)
    assert status == 200, body
    btc = body["assets"]["BTC"]
    received = int(one["amount_minor"]) + int(two["amount_minor"])  # the dropped one is not there any more
    assert btc["on_addresses_minor"] == str(received)
    assert btc["locked_value_tiyn"] == one["value_tiyn"] + two["value_tiyn"]
    assert btc["booked_tiyn"] == one["value_tiyn"] + two["value_tiyn"]
    current = round(Fraction(received) * Fraction(50_000_000) * 100 / 10**8)
    assert abs(btc["current_value_tiyn"] - current) <= 1
    assert btc["unrealised_fx_tiyn"] == btc["current_value_tiyn"] - btc["locked_value_tiyn"] > 0
    assert body["spends_tracked"] is True
    assert btc["spent_minor"] == "0"

    # The merchant's wallet sweeps the settled payment's output in block 7: the watcher records the spend
    # with the block, and the open position is what is left, valued at its share of the locked value.
    state = ChainState(gateway.store, Chain.BITCOIN)
    await state.connect(StoredBlock(6, "66" * 32, "55" * 32))
    address = next(m for m in settled["payment_methods"] if m["asset"] == "BTC")["address"]
    sweep = AddressSpend(f"{'ab' * 32}:0", Asset.BTC, address, int(one["amount_minor"]), "ab" * 32, txid(1))
    await state.connect(StoredBlock(7, "77" * 32, "66" * 32), [sweep])
    await state.connect(StoredBlock(7, "77" * 32, "66" * 32), [sweep])  # a replayed block counts once
    status, body = await regulator(gateway, "GET", "/exposure", token)
    btc = body["assets"]["BTC"]
    assert btc["spent_minor"] == one["amount_minor"]
    assert btc["on_addresses_minor"] == two["amount_minor"]
    expected_locked = Fraction(one["value_tiyn"] + two["value_tiyn"]) * int(two["amount_minor"]) / received
    assert abs(btc["locked_value_tiyn"] - expected_locked) <= Fraction(1, 2)
    assert btc["booked_tiyn"] == one["value_tiyn"] + two["value_tiyn"]  # the ledger is not the chain

    # The sweep's block leaves the main chain in a reorg: the coins are back on the invoice address.
    await state.disconnect_above(6)
    status, body = await regulator(gateway, "GET", "/exposure", token)
    assert body["assets"]["BTC"]["spent_minor"] == "0"
    assert body["assets"]["BTC"]["on_addresses_minor"] == str(received)
