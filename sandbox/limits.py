"""Sandbox limits in tenge: parsing "<amount> <unit>" settings, converting them to tiyn, calendar months.

Limits are written the way the rules are: "3 MRP" (the monthly calculation index), "1000 USD" (at the
official rate), "2500000 KZT". They are converted to integer tiyn when checked, with the official rate and
MRP of that moment, rounded down (a limit never allows a tiyn more than the rule). Months are calendar months
in the pilot's time zone (Asia/Almaty), because that is what "per month" means to a resident and to the
regulator's monthly report; a payment at 23:30 UTC on the 31st already belongs to the next month there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from gateway.config import SandboxConfig


class Tier(StrEnum):
    ANONYMOUS = "anonymous"
    BASIC = "basic"
    VERIFIED = "verified"


@dataclass(frozen=True, slots=True)
class Amount:
    value: Decimal
    unit: str  # KZT, USD or MRP

    @classmethod
    def parse(cls, text: str) -> Amount:
        number, unit = text.split()
        return cls(Decimal(number), unit)

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"


@dataclass(frozen=True, slots=True)
class Conversion:
    """What one tenge-denominated check needs: the MRP and the official USD rate, in KZT."""

    mrp_kzt: Decimal
    usd_kzt: Decimal

    def tiyn(self, amount: Amount) -> int:
        kzt = {"KZT": Decimal(1), "MRP": self.mrp_kzt, "USD": self.usd_kzt}[amount.unit] * amount.value
        return int((kzt * 100).to_integral_value(rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class TierLimits:
    per_operation_tiyn: int
    monthly_tiyn: int


class SandboxRules:
    """The configured rules, converted with a given official USD rate."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self._tiers = {
            Tier.ANONYMOUS: config.tiers.anonymous,
            Tier.BASIC: config.tiers.basic,
            Tier.VERIFIED: config.tiers.verified,
        }

    def conversion(self, usd_kzt: Decimal | None = None) -> Conversion:
        return Conversion(Decimal(self.config.mrp_kzt), usd_kzt or Decimal(self.config.usd_kzt))

    def tier_limits(self, tier: Tier, conversion: Conversion) -> TierLimits:
        limits = self._tiers[tier]
        return TierLimits(
            conversion.tiyn(Amount.parse(limits.per_operation)), conversion.tiyn(Amount.parse(limits.monthly))
        )

    def aggregate_cap_tiyn(self, conversion: Conversion) -> int:
        return conversion.tiyn(Amount.parse(self.config.aggregate_cap))

    def travel_rule_tiyn(self, conversion: Conversion) -> int:
        return conversion.tiyn(Amount.parse(self.config.travel_rule_threshold))

    def month_of(self, moment: datetime) -> str:
        """The calendar month (YYYY-MM) of ``moment`` in the pilot's time zone."""
        local = moment.astimezone(self.zone)
        return f"{local.year:04d}-{local.month:02d}"

    def month_bounds(self, month: str) -> tuple[datetime, datetime]:
        """The first instant of ``month`` and of the next one, in the pilot's time zone."""
        year, number = (int(part) for part in month.split("-"))
        start = datetime(year, number, 1, tzinfo=self.zone)
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=self.zone)
        return start, end
