"""The sandbox's payment policy and invoice gate, plugged into the gateway's extension points.

For every detected payment the gateway calls :meth:`SandboxPolicy.decide` inside the transaction that
records it; the decision and the value counted against the resident's month are written in that same
transaction (``sandbox_payments``), so two payments of one resident judged at the same time can never
both fit under a limit only one of them fits under: the store serialises the transactions, and the second
sees the first's row.

A payment is held, with the first reason that applies, when:

1. ``unregistered_payer``: no payer wallet the watcher recovered is registered (or none was recovered);
   ``several_payers`` when the inputs belong to more than one resident;
2. ``merchant_suspended``: the regulator suspended the merchant's licence;
3. ``asset_not_allowed``: the asset is not in ``sandbox.allowed_assets``;
4. ``resident_suspended``;
5. ``over_operation_limit``: the payment's tenge value (at the invoice's locked rate) is above the tier's
   per-operation limit;
6. ``over_monthly_limit``: with what the resident already paid this calendar month (Asia/Almaty), it
   would be above the tier's monthly limit;
7. ``travel_rule_data_missing``: the value is at or above the travel-rule threshold and the resident has
   no originator data on file.

Limits are inclusive: a payment exactly at a limit is accepted, one tiyn over is held. A held payment does
not count against the month until the regulator releases it.

The gate refuses new invoices with 403 when the sandbox-wide accepted volume has reached the aggregate
cap, or when the merchant's licence is suspended.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import structlog

from gateway.clock import isoformat
from gateway.extensions import DetectedPayment, InvoiceRequestContext, PolicyDecision, Refusal
from gateway.outbox import insert_event, prepare_event
from gateway.store import Store, Tx
from sandbox.limits import Conversion, SandboxRules, Tier
from sandbox.registry import merchant_profile, residents_of

log = structlog.get_logger("sandbox.policy")

UsdRate = Callable[[], Decimal | None]


def payer_owners(payment: DetectedPayment) -> tuple[str, list[str]]:
    """The chain and the payer wallets as the registry stores them."""
    if payment.chain == "ethereum":
        return "ethereum", [payment.payer.lower()] if payment.payer else []
    owners = list(dict.fromkeys(s.lower() for s in payment.payer_scripts))
    if not owners and payment.payer:
        owners = [payment.payer.lower()]
    return "bitcoin", owners


async def month_usage(tx: Tx, resident_id: str, month: str) -> int:
    row = await tx.fetchone(
        "SELECT coalesce(sum(value_tiyn), 0) AS used FROM sandbox_payments"
        " WHERE resident_id = ? AND month = ? AND counts = 1",
        (resident_id, month),
    )
    return int(row["used"]) if row is not None else 0


async def sandbox_volume(tx: Tx, month: str) -> int:
    """What the whole sandbox accepted in ``month`` (YYYY-MM in the pilot's time zone): the aggregate cap
    is a calendar month's, as the sandbox's other limits are (ARCHITECTURE.md, "Sandbox figures")."""
    row = await tx.fetchone(
        "SELECT coalesce(sum(value_tiyn), 0) AS used FROM sandbox_payments WHERE counts = 1 AND month = ?",
        (month,),
    )
    return int(row["used"]) if row is not None else 0


class SandboxPolicy:
    def __init__(self, rules: SandboxRules, usd_rate: UsdRate | None = None) -> None:
        self._rules = rules
        self._usd_rate = usd_rate

    def conversion(self) -> Conversion:
        return self._rules.conversion(self._usd_rate() if self._usd_rate is not None else None)

    async def decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        conversion = self.conversion()
        resident_id, reason = await self._judge(tx, payment, conversion)
        decision = PolicyDecision.accepted() if reason is None else PolicyDecision.hold(reason)
        chain, owners = payer_owners(payment)
        month = self._rules.month_of(payment.detected_at)
        await tx.execute(
            "INSERT INTO sandbox_payments (chain, payment_key, invoice_id, merchant_id, resident_id, payer, asset,"
            " amount_minor, value_tiyn, month, decision, reason, counts, decided_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (chain, payment_key) DO NOTHING",
            (
                payment.chain,
                payment.payment_key,
                payment.invoice_id,
                payment.merchant_id,
                resident_id,
                owners[0] if owners else None,
                payment.asset.value,
                str(payment.amount_minor),
                payment.value_tiyn,
                month,
                "accepted" if reason is None else "held",
                reason,
                1 if reason is None else 0,
                isoformat(payment.detected_at),
            ),
        )
        data: dict[str, Any] = {
            "chain": chain,
            "payment_key": payment.payment_key,
            "invoice_id": payment.invoice_id,
            "merchant_id": payment.merchant_id,
            "resident_id": resident_id,
            "asset": payment.asset.value,
            "value_tiyn": payment.value_tiyn,
            "month": month,
            "decision": "accepted" if reason is None else "held",
            "reason": reason,
        }
        await insert_event(
            tx, prepare_event(event_type="sandbox.payment_decided", now=payment.detected_at, data=data)
        )
        log.info("sandbox.payment_decided", **data)
        return decision

    async def _judge(
        self, tx: Tx, payment: DetectedPayment, conversion: Conversion
    ) -> tuple[str | None, str | None]:
        chain, owners = payer_owners(payment)
        found = await residents_of(tx, chain, owners)
        residents = set(found.values())
        if len(residents) > 1:
            return None, "several_payers"
        resident_id = next(iter(residents), None)
        if resident_id is None:
            return None, "unregistered_payer"
        if (await merchant_profile(tx, payment.merchant_id)).suspended:
            return resident_id, "merchant_suspended"
        if payment.asset not in self._rules.config.allowed_assets:
            return resident_id, "asset_not_allowed"
        row = await tx.fetchone(
            "SELECT tier, originator_data, status FROM residents WHERE id = ?", (resident_id,)
        )
        if row is None or row["status"] != "active":
            return resident_id, "resident_suspended"
        limits = self._rules.tier_limits(Tier(row["tier"]), conversion)
        if payment.value_tiyn > limits.per_operation_tiyn:
            return resident_id, "over_operation_limit"
        used = await month_usage(tx, resident_id, self._rules.month_of(payment.detected_at))
        if used + payment.value_tiyn > limits.monthly_tiyn:
            return resident_id, "over_monthly_limit"
        if payment.value_tiyn >= self._rules.travel_rule_tiyn(conversion) and not row["originator_data"]:
            return resident_id, "travel_rule_data_missing"
        return resident_id, None


class SandboxGate:
    """Refuses new invoices once the aggregate cap is reached, and for suspended merchants."""

    def __init__(self, store: Store | None, policy: SandboxPolicy, rules: SandboxRules) -> None:
        self.store = store
        self._policy = policy
        self._rules = rules

    async def check(self, request: InvoiceRequestContext) -> Refusal | None:
        if self.store is None:
            return None

        month = self._rules.month_of(request.now)

        async def read(tx: Tx) -> tuple[bool, int]:
            suspended = (await merchant_profile(tx, request.merchant_id)).suspended
            return suspended, await sandbox_volume(tx, month)

        suspended, volume = await self.store.read(read)
        if suspended:
            return Refusal(
                403,
                "Merchant licence suspended",
                "the sandbox regulator suspended this merchant's licence: no new invoices until it is reinstated",
                "merchant-suspended",
            )
        cap = self._rules.aggregate_cap_tiyn(self._policy.conversion())
        if volume >= cap:
            return Refusal(
                403,
                "Sandbox cap reached",
                f"the sandbox's aggregate cap of {self._rules.config.aggregate_cap} ({cap / 100:.2f} KZT) for"
                f" {month} is reached: no new invoices until next month or until the regulator raises it",
                "sandbox-cap-reached",
            )
        return None
