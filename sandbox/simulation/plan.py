"""The city's day drawn in advance from the seed: residents, merchants, every purchase and every fault.

Everything random is drawn here, from one ``random.Random(seed)``, before any node or gateway exists, so a
seed gives the same plan, and (the driver keeps order) the same outcome counts. Amounts are integer tiyn.

Arrivals follow the hourly curve: each step's count is Poisson with the step's share of the day's expected
payments (residents x payments per resident per day). A purchase picks a resident uniformly, a category by
its share, a merchant of that category uniformly, and a ticket from the category's log-normal distribution.
A resident pays at most once per step (the driver judges one payment per resident at a time, so limits are
decided in plan order); a second arrival for them moves to the next step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from gateway.config import SimulationConfig
from gateway.money import Asset, parse_decimal_amount

KZT_DECIMALS = 2


class Behaviour(StrEnum):
    """What the payer does with the payment request."""

    EXACT = "exact"
    UNDERPAY = "underpay"  # pays 10 % short
    OVERPAY = "overpay"  # pays 20 % more
    LATE = "late"  # pays after the invoice expired
    ABANDONED = "abandoned"  # never pays
    DOUBLE_SPEND = "double_spend"  # BTC: the payment is double-spent in a competing block
    REPLACEMENT = "replacement"  # ETH/USDT: the payment is replaced by a same-nonce transfer to themselves
    OVER_LIMIT = "over_limit"  # the ticket is above the resident's per-operation limit
    UNREGISTERED = "unregistered"  # pays from a wallet the sandbox does not know


@dataclass(frozen=True, slots=True)
class PlannedResident:
    index: int
    tier: str
    asset: Asset


@dataclass(frozen=True, slots=True)
class PlannedMerchant:
    index: int
    category: str


@dataclass(frozen=True, slots=True)
class Purchase:
    seq: int
    at_seconds: int  # virtual seconds from the start of the run
    resident: int
    merchant: int
    price_tiyn: int
    behaviour: Behaviour
    read_qr: bool  # the wallet decodes the QR image instead of reading the URI


@dataclass(frozen=True, slots=True)
class Window:
    start_seconds: int
    end_seconds: int

    def contains(self, at_seconds: int) -> bool:
        return self.start_seconds <= at_seconds < self.end_seconds


@dataclass(slots=True)
class Plan:
    residents: list[PlannedResident]
    merchants: list[PlannedMerchant]
    purchases: list[Purchase]
    reorgs_at: list[int]  # virtual seconds
    rates_outages: list[Window]
    node_outages: list[Window]
    total_seconds: int
    steps: int
    by_step: dict[int, list[Purchase]] = field(default_factory=dict)


def _pick(rng: random.Random, weights: Mapping[str, Decimal] | Mapping[Asset, Decimal]) -> str:
    names = list(weights)
    return str(rng.choices(names, weights=[float(weights[n]) for n in names])[0])  # type: ignore[index]


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method for small means, a rounded normal approximation for large ones."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _behaviour(rng: random.Random, config: SimulationConfig, asset: Asset) -> Behaviour:
    rates = config.behaviours
    table: list[tuple[Behaviour, Decimal]] = [
        (Behaviour.UNDERPAY, rates.underpay),
        (Behaviour.OVERPAY, rates.overpay),
        (Behaviour.LATE, rates.pay_after_expiry),
        (Behaviour.ABANDONED, rates.abandoned),
        (Behaviour.OVER_LIMIT, rates.over_limit),
        (Behaviour.UNREGISTERED, rates.unregistered_wallet),
        (
            Behaviour.DOUBLE_SPEND if asset is Asset.BTC else Behaviour.REPLACEMENT,
            rates.btc_double_spend if asset is Asset.BTC else rates.eth_replacement,
        ),
    ]
    draw = Decimal(str(rng.random()))
    for behaviour, rate in table:
        if draw < rate:
            return behaviour
        draw -= rate
    return Behaviour.EXACT


def _ticket_tiyn(rng: random.Random, median_tiyn: int, sigma: Decimal) -> int:
    value = median_tiyn * math.exp(rng.gauss(0.0, float(sigma)))
    return max(100, min(round(value / 100) * 100, 100_000_000))  # whole tenge, 1 to 1,000,000 KZT


def make_plan(config: SimulationConfig, *, over_limit_tiyn: Mapping[str, int]) -> Plan:
    """The whole run. ``over_limit_tiyn``: per tier, a ticket just above its per-operation limit (tiers
    missing from it have no over-limit purchases)."""
    rng = random.Random(config.seed)
    residents = [
        PlannedResident(i, _pick(rng, config.tier_mix), Asset(_pick(rng, config.asset_mix)))
        for i in range(config.residents)
    ]
    merchants: list[PlannedMerchant] = []
    by_category: dict[str, list[int]] = {}
    for name, cat in config.categories.items():
        count = max(1, round(float(cat.merchants_per_10000_residents) * config.residents / 10_000))
        for _ in range(count):
            by_category.setdefault(name, []).append(len(merchants))
            merchants.append(PlannedMerchant(len(merchants), name))
    medians = {
        n: parse_decimal_amount(c.median_ticket_kzt, KZT_DECIMALS) for n, c in config.categories.items()
    }
    shares = {n: c.share for n, c in config.categories.items()}

    day = 24 * 3600
    total = config.days * day
    step = config.step_seconds
    steps = math.ceil(total / step)
    curve = [float(w) for w in config.hourly_curve]
    curve_sum = sum(curve)
    per_day = float(config.payments_per_resident_day) * config.residents
    purchases: list[Purchase] = []
    busy: dict[int, int] = {}  # resident → the last step they pay in
    carried: list[tuple[int, int]] = []  # (resident, original second) moved to a later step
    for index in range(steps):
        start = index * step
        hour = (start % day) // 3600
        mean = per_day * (curve[hour] / curve_sum) * (step / 3600)
        arrivals = [
            (rng.randrange(config.residents), start + rng.randrange(step)) for _ in range(_poisson(rng, mean))
        ]
        queue, carried = carried + sorted(arrivals, key=lambda a: a[1]), []
        for resident_index, second in queue:
            if busy.get(resident_index) == index:
                carried.append((resident_index, second))
                continue
            busy[resident_index] = index
            resident = residents[resident_index]
            category: str = _pick(rng, shares)
            merchant = rng.choice(by_category[category])
            behaviour = _behaviour(rng, config, resident.asset)
            price = _ticket_tiyn(rng, medians[category], config.categories[category].ticket_sigma)
            if behaviour is Behaviour.OVER_LIMIT:
                if resident.tier in over_limit_tiyn:
                    price = over_limit_tiyn[resident.tier]
                else:  # no invoice can exceed this tier's per-operation limit
                    behaviour = Behaviour.EXACT
            read_qr = rng.random() < float(config.qr_sample_rate)
            at = max(second, start)
            purchases.append(
                Purchase(len(purchases), at, resident_index, merchant, price, behaviour, read_qr)
            )

    def windows(count: int, minutes: int) -> list[Window]:
        found = []
        for d in range(config.days):
            for _ in range(count):
                begin = d * day + rng.randrange(6 * 3600, 22 * 3600)  # in the busy part of the day
                found.append(Window(begin, begin + minutes * 60))
        return sorted(found, key=lambda w: w.start_seconds)

    b = config.behaviours
    reorgs = sorted(
        d * day + rng.randrange(7 * 3600, 21 * 3600)
        for d in range(config.days)
        for _ in range(b.reorgs_per_day)
    )
    plan = Plan(
        residents,
        merchants,
        purchases,
        reorgs,
        windows(b.rates_outages_per_day, b.rates_outage_minutes),
        windows(b.node_outages_per_day, b.node_outage_minutes),
        total,
        steps,
    )
    for purchase in purchases:
        plan.by_step.setdefault(purchase.at_seconds // step, []).append(purchase)
    return plan


def counts(plan: Plan) -> dict[str, int]:
    """The plan's figures by behaviour (what the report sets against the outcomes)."""
    found: dict[str, int] = {b.value: 0 for b in Behaviour}
    for purchase in plan.purchases:
        found[purchase.behaviour.value] += 1
    return found


def assets_of(residents: Sequence[PlannedResident]) -> dict[Asset, int]:
    found = dict.fromkeys(Asset, 0)
    for resident in residents:
        found[resident.asset] += 1
    return found
