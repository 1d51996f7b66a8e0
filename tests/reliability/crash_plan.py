"""What the crash harness does with each invoice, and its records of what it did.

:func:`plan_for` decides an invoice's price, assets and fate from the seed and the invoice's number alone,
so a seed replays the same mix whatever the timing (the timing, and so where the kills land, is not
reproducible on a shared machine). Fates, and where each must end (docs/lifecycle.md):

| kind | what happens | end |
|---|---|---|
| none | nothing | new |
| full | the amount due | settled |
| partial | 20–80 % of it | new + underpaid |
| split | a part, later the rest | settled |
| over | twice the amount due | settled + overpaid |
| extra | the amount due, later half as much again | settled + overpaid |
| expire | nothing; expires in 30–45 s | expired |
| late | the amount due, after it expired | expired + paid_late |
| late_accepted | the same, then the merchant accepts it | settled + paid_late |
| cancel | the merchant cancels it | cancelled |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tests.integration.settlement_helpers import method

# Prices just under the confirmation rules' bounds (config.toml), so the mix covers 0, 1, 3 and 6
# confirmations: BTC 0 / ETH 1 up to 50,000 KZT; BTC 1, ETH 1 up to 100,000; BTC 1, ETH 6; BTC 3, ETH 6.
PRICE_TIERS_KZT = (12_500, 80_000, 300_000, 600_000)
ASSET_SETS: tuple[tuple[str, ...], ...] = (
    ("BTC", "ETH", "USDT"),
    ("BTC",),
    ("ETH",),
    ("USDT",),
    ("ETH", "USDT"),
)
KINDS = ("none", "full", "partial", "split", "over", "extra", "expire", "late", "late_accepted", "cancel")
KIND_WEIGHTS = (1, 4, 1, 2, 1, 1, 1, 1, 1, 1)
UNPAID_KINDS = frozenset({"none", "expire", "cancel"})
SHORT_EXPIRY_KINDS = frozenset({"expire", "late", "late_accepted"})
LATE_KINDS = frozenset({"late", "late_accepted"})
EXPIRES_IN_SECONDS = 3 * 3600  # far beyond the longest run: the other invoices never expire under it
SHORT_EXPIRES_IN_SECONDS = (30, 45)  # needs invoices.min_expiry_seconds <= 30 (the harness sets it)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the harness does with invoice number ``index``: its price, assets, and fate."""

    index: int
    price: str  # KZT, two decimals
    assets: tuple[str, ...]
    kind: str
    pay_asset: str | None
    partial_percent: int
    expires_in: int

    def request(self) -> dict[str, Any]:
        return {
            "amount": self.price,
            "currency": "KZT",
            "assets": list(self.assets),
            "order_id": f"crash-{self.index}",
            "expires_in": self.expires_in,
        }

    def amounts(self, due_minor: int) -> list[int]:
        """The payments, in order, for an asset whose amount due is ``due_minor``."""
        part = max(1, due_minor * self.partial_percent // 100)
        if self.kind in UNPAID_KINDS:
            return []
        return {
            "full": [due_minor],
            "partial": [part],
            "split": [part, due_minor - part],
            "over": [2 * due_minor],
            "extra": [due_minor, due_minor // 2],
            "late": [due_minor],
            "late_accepted": [due_minor],
        }[self.kind]


def plan_for(seed: int, index: int) -> Plan:
    rng = random.Random(f"{seed}:{index}")
    tier = rng.choice(PRICE_TIERS_KZT)
    price = f"{tier - rng.randrange(100)}.{rng.randrange(100):02d}"
    assets = rng.choice(ASSET_SETS)
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    pay_asset = None if kind in UNPAID_KINDS else rng.choice(assets)
    expires_in = rng.randint(*SHORT_EXPIRES_IN_SECONDS) if kind in SHORT_EXPIRY_KINDS else EXPIRES_IN_SECONDS
    return Plan(index, price, assets, kind, pay_asset, rng.randrange(20, 80), expires_in)


@dataclass(frozen=True, slots=True)
class AnsweredInvoice:
    """An invoice the gateway answered 201 for, with the body it answered."""

    plan: Plan
    body: dict[str, Any]
    replayed: bool  # the answer came from a retry with the same Idempotency-Key
    attempts: int

    @property
    def id(self) -> str:
        return str(self.body["id"])

    def method(self, asset: str) -> dict[str, Any]:
        return method(self.body, asset)

    def due_minor(self, asset: str) -> int:
        return int(self.method(asset)["amount_due_minor"])

    def address(self, asset: str) -> str:
        return str(self.method(asset)["address"])


@dataclass(frozen=True, slots=True)
class SentPayment:
    """One payment a wallet made to an invoice's address (accepted by the node)."""

    invoice_id: str
    asset: str
    address: str
    tx: str  # BTC txid, EVM tx hash (0x…)
    vout: int | None  # BTC: the output paying the invoice
    amount_minor: int

    def is_key(self, payment_key: str) -> bool:
        """Whether the gateway's payment key names this payment (txid:vout, tx hash, tx hash:log index)."""
        key = payment_key.lower()
        if self.asset == "BTC":
            return key == f"{self.tx}:{self.vout}".lower()
        if self.asset == "ETH":
            return key == self.tx.lower()
        return key.startswith(self.tx.lower() + ":")
