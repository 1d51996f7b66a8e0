"""Configuration: config.toml defaults, environment overrides, pydantic validation.

Every setting has its default here AND a commented line in config.toml at the project root; a test keeps
the two identical. Environment variables ``CRYPTOCITY_<SECTION>__<KEY>`` (nested sections joined with
``__``) override the file, because operators and CI change one value without editing a file.

A wrong value must stop start-up with one line naming the key and what was expected, so loading turns
pydantic's error list into :class:`ConfigError` with exactly that line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.money import KZT_DECIMALS, AmountError, Asset, parse_decimal_amount

ENV_PREFIX = "CRYPTOCITY_"
CONFIG_ENV = "CRYPTOCITY_CONFIG"


class ConfigError(Exception):
    """A configuration value is wrong; ``str(error)`` is the one line an operator needs."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kzt_to_tiyn(value: str) -> int:
    try:
        return parse_decimal_amount(value, KZT_DECIMALS)
    except AmountError as exc:
        raise ValueError(f'expected a KZT amount such as "1000.00": {exc}') from None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 65536
    switch_interval_ms: Annotated[float, Field(gt=0, le=100)] = 1.0
    shutdown_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Edge protections (docs/configuration.md#server): a connection's request head and a request's body
    # each have a deadline, so slow clients cannot hold connections open; failed authentications are
    # rate-limited per client address, so keys cannot be guessed at speed.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    auth_failures_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 20
    auth_failure_burst: Annotated[int, Field(ge=1, le=100_000)] = 20
    auth_failure_max_clients: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000


class StoreConfig(_Section):
    # "schema" is BaseModel's own attribute name, so the field is schema_name under the key store.schema.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str = "var/cryptocity.sqlite3"
    dsn: str = ""
    schema_name: Annotated[str, Field(alias="schema")] = ""
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    max_batch: Annotated[int, Field(ge=1, le=10000)] = 512
    readers: Annotated[int, Field(ge=1, le=16)] = 2
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5000
    # A ceiling on the SQLite file, in pages (PRAGMA max_page_count); 0 = none. See config.toml.
    max_pages: Annotated[int, Field(ge=0)] = 0

    @field_validator("schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("expected a lower-case SQL identifier (a-z, 0-9, _), or empty")
        return value


class ClusterConfig(_Section):
    """Several gateway processes on one PostgreSQL store (gateway/cluster/): the leader election's timings.

    Unused with the SQLite store, whose single process always leads."""

    retry_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    check_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    check_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    reconnect_max_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    rates_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = False


class InvoicesConfig(_Section):
    min_amount_kzt: str = "1.00"
    max_amount_kzt: str = "1000000.00"
    default_expiry_seconds: Annotated[int, Field(ge=60)] = 900
    min_expiry_seconds: Annotated[int, Field(ge=30)] = 60
    max_expiry_seconds: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    payment_tolerance: Decimal = Decimal("0")
    metadata_max_bytes: Annotated[int, Field(ge=0, le=65536)] = 4096
    description_max_length: Annotated[int, Field(ge=0, le=10000)] = 500
    expiry_sweep_seconds: Annotated[float, Field(gt=0)] = 1.0
    idempotency_retention_hours: Annotated[int, Field(ge=1)] = 24

    @field_validator("min_amount_kzt", "max_amount_kzt")
    @classmethod
    def _valid_kzt(cls, value: str) -> str:
        _kzt_to_tiyn(value)
        return value

    @field_validator("payment_tolerance")
    @classmethod
    def _valid_tolerance(cls, value: Decimal) -> Decimal:
        if not Decimal("0") <= value < Decimal("0.5"):
            raise ValueError("expected a fraction between 0 and 0.5, e.g. 0.005 for half a percent")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> InvoicesConfig:
        if _kzt_to_tiyn(self.min_amount_kzt) <= 0:
            raise ValueError("min_amount_kzt must be above zero")
        if _kzt_to_tiyn(self.min_amount_kzt) > _kzt_to_tiyn(self.max_amount_kzt):
            raise ValueError("min_amount_kzt must not exceed max_amount_kzt")
        if not self.min_expiry_seconds <= self.default_expiry_seconds <= self.max_expiry_seconds:
            raise ValueError(
                "default_expiry_seconds must lie between min_expiry_seconds and max_expiry_seconds"
            )
        return self

    @property
    def min_amount_tiyn(self) -> int:
        return _kzt_to_tiyn(self.min_amount_kzt)

    @property
    def max_amount_tiyn(self) -> int:
        return _kzt_to_tiyn(self.max_amount_kzt)


class AssetsConfig(_Section):
    enabled: list[Asset] = Field(default_factory=lambda: [Asset.BTC, Asset.ETH, Asset.USDT])


_BTC_DEFAULT_HRP = {"mainnet": "bc", "testnet": "tb", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}


class BitcoinRpcConfig(_Section):
    """How to reach the node's JSON-RPC (Bitcoin Core or bcoin); an empty url runs no Bitcoin watcher."""

    url: str = ""
    user: str = ""
    password: str = Field(default="", repr=False)
    cookie_file: str = ""
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError('expected an http:// or https:// URL such as "http://127.0.0.1:18443/"')
        return value


class BitcoinWatcherConfig(_Section):
    poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    start_height: int = -1
    recent_blocks: Annotated[int, Field(ge=10, le=10000)] = 100
    fetch_batch: Annotated[int, Field(ge=1, le=1000)] = 100
    genesis_hash: str = ""

    @field_validator("genesis_hash")
    @classmethod
    def _valid_hash(cls, value: str) -> str:
        if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
            raise ValueError("expected 64 lower-case hex digits (the node's getblockhash 0)")
        return value


class BitcoinConfig(_Section):
    network: Literal["mainnet", "testnet", "testnet4", "signet", "regtest"] = "regtest"
    hrp: str = ""
    allow_mainnet: bool = False
    dust_limit_sat: Annotated[int, Field(ge=0)] = 294
    rpc: BitcoinRpcConfig = Field(default_factory=BitcoinRpcConfig)
    watcher: BitcoinWatcherConfig = Field(default_factory=BitcoinWatcherConfig)

    @field_validator("hrp")
    @classmethod
    def _valid_hrp(cls, value: str) -> str:
        if value and not (value.isascii() and value.isalnum() and value.islower() and len(value) <= 10):
            raise ValueError('expected a lower-case bech32 human-readable part such as "tb", "bcrt" or "rb"')
        return value

    @model_validator(mode="after")
    def _mainnet_guard(self) -> BitcoinConfig:
        if self.network == "mainnet" and not self.allow_mainnet:
            raise ValueError("network is mainnet but allow_mainnet is false; refusing real money by accident")
        return self

    @property
    def bech32_hrp(self) -> str:
        return self.hrp or _BTC_DEFAULT_HRP[self.network]


class EthereumRpcConfig(_Section):
    """How to reach the node; an empty url runs no Ethereum watcher."""

    url: str = ""
    ws_url: str = ""
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError('expected an http:// or https:// URL such as "http://127.0.0.1:8545"')
        return value

    @field_validator("ws_url")
    @classmethod
    def _valid_ws_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError('expected a ws:// or wss:// URL such as "ws://127.0.0.1:8545"')
        return value


class EthereumWatcherConfig(_Section):
    poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    start_block: int = -1
    recent_blocks: Annotated[int, Field(ge=10, le=10000)] = 100
    log_span: Annotated[int, Field(ge=1, le=100000)] = 500


class EthereumConfig(_Section):
    chain_id: Annotated[int, Field(ge=1)] = 31337
    mainnet_chain_ids: list[int] = Field(default_factory=lambda: [1])
    allow_mainnet: bool = False
    token_address: str = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # noqa: S105 - a contract address
    token_symbol: str = "tUSDT"  # noqa: S105 - a ticker symbol
    token_decimals: Annotated[int, Field(ge=0, le=36)] = 6
    rpc: EthereumRpcConfig = Field(default_factory=EthereumRpcConfig)
    watcher: EthereumWatcherConfig = Field(default_factory=EthereumWatcherConfig)

    @model_validator(mode="after")
    def _mainnet_guard(self) -> EthereumConfig:
        if self.chain_id in self.mainnet_chain_ids and not self.allow_mainnet:
            raise ValueError(
                f"chain_id {self.chain_id} is a mainnet id but allow_mainnet is false; refusing real money by accident"
            )
        return self


class FixedRatesConfig(_Section):
    enabled: bool = True
    kzt_per_unit: dict[Asset, Decimal] = Field(
        default_factory=lambda: {
            Asset.BTC: Decimal("48450000.00"),
            Asset.ETH: Decimal("1683000.00"),
            Asset.USDT: Decimal("510.00"),
        }
    )

    @field_validator("kzt_per_unit")
    @classmethod
    def _positive(cls, value: dict[Asset, Decimal]) -> dict[Asset, Decimal]:
        for asset, rate in value.items():
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"rate for {asset.value} must be a positive number, got {rate}")
        return value


class RateProviderConfig(_Section):
    enabled: bool = False
    base_url: str
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0

    @field_validator("base_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError('expected an http:// or https:// base URL such as "https://api.binance.com"')
        return value.rstrip("/")


class RatesConfig(_Section):
    fixed: FixedRatesConfig = Field(default_factory=FixedRatesConfig)
    refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_crypto_age_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_official_age_days: Annotated[float, Field(gt=0, le=30)] = 4.0
    history_retention_days: Annotated[float, Field(gt=0)] = 400.0
    nbk: RateProviderConfig = Field(
        default_factory=lambda: RateProviderConfig(base_url="https://nationalbank.kz", timeout_seconds=10.0)
    )
    binance: RateProviderConfig = Field(
        default_factory=lambda: RateProviderConfig(base_url="https://api.binance.com", timeout_seconds=5.0)
    )
    kraken: RateProviderConfig = Field(
        default_factory=lambda: RateProviderConfig(base_url="https://api.kraken.com", timeout_seconds=5.0)
    )


class ConfirmationRule(_Section):
    """Confirmations needed for a payment in ``asset`` when the invoice price is at most ``up_to_kzt``."""

    asset: Asset
    up_to_kzt: str
    confirmations: Annotated[int, Field(ge=0, le=1000)]

    @field_validator("up_to_kzt")
    @classmethod
    def _valid_kzt(cls, value: str) -> str:
        _kzt_to_tiyn(value)
        return value


def _default_confirmation_rules() -> list[ConfirmationRule]:
    rules = [
        (Asset.BTC, "50000.00", 0),
        (Asset.BTC, "500000.00", 1),
        (Asset.BTC, "1000000000.00", 3),
        (Asset.ETH, "100000.00", 1),
        (Asset.ETH, "1000000000.00", 6),
        (Asset.USDT, "100000.00", 1),
        (Asset.USDT, "1000000000.00", 6),
    ]
    return [ConfirmationRule(asset=a, up_to_kzt=k, confirmations=c) for a, k, c in rules]


class ConfirmationsConfig(_Section):
    rules: list[ConfirmationRule] = Field(default_factory=_default_confirmation_rules)

    def required(self, asset: Asset, price_tiyn: int) -> int:
        """The first rule of the asset whose bound covers the price; above every bound, the strictest."""
        return confirmation_policy(self)(asset, price_tiyn)


def confirmation_policy(config: ConfirmationsConfig) -> Callable[[Asset, int], int]:
    """The rules compiled once into sorted integer bounds (invoice creation asks on every request)."""
    table: dict[Asset, list[tuple[int, int]]] = {}
    for rule in config.rules:
        table.setdefault(rule.asset, []).append((_kzt_to_tiyn(rule.up_to_kzt), rule.confirmations))
    for bounds in table.values():
        bounds.sort()

    def required(asset: Asset, price_tiyn: int) -> int:
        bounds = table.get(asset, [])
        for bound, confirmations in bounds:
            if price_tiyn <= bound:
                return confirmations
        return max((c for _, c in bounds), default=1)

    return required


class MerchantsConfig(_Section):
    api_key_environment: Literal["test", "live"] = "test"
    auth_cache_seconds: Annotated[float, Field(ge=0)] = 5.0


class AddressesConfig(_Section):
    pool_size: Annotated[int, Field(ge=0, le=100000)] = 256
    reserve_block: Annotated[int, Field(ge=1, le=1000)] = 50
    derive_workers: Annotated[int, Field(ge=0, le=16)] = 1


def _default_retry_schedule() -> list[float]:
    # 19 waits after the first attempt: 20 attempts over about 2.9 days, dense at first (a receiver that is
    # restarting), then hours apart (one that is down for a weekend).
    return [
        5,
        30,
        120,
        300,
        600,
        1200,
        1800,
        3600,
        3600,
        7200,
        7200,
        10800,
        10800,
        14400,
        14400,
        21600,
        21600,
        43200,
        86400,
    ]


class WebhooksConfig(_Section):
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    retry_schedule_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=_default_retry_schedule
    )
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.2
    disable_after_seconds: Annotated[float, Field(gt=0)] = 3 * 24 * 3600.0
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 256
    max_in_flight_per_endpoint: Annotated[int, Field(ge=1, le=1000)] = 32
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    allow_loopback: bool = True  # the local pilot's shops run on this machine
    allow_private: bool = False
    require_https: bool = False
    max_endpoints_per_merchant: Annotated[int, Field(ge=1, le=1000)] = 16

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _some_retries(cls, value: list[float]) -> list[float]:
        if len(value) > 100:
            raise ValueError("at most 100 retries")
        return value


_LIMIT_UNITS = ("KZT", "USD", "MRP")


def _valid_limit(value: str) -> str:
    """A limit is "<amount> <unit>", unit KZT, USD (at the official rate) or MRP (the monthly index)."""
    parts = value.split()
    if len(parts) != 2 or parts[1] not in _LIMIT_UNITS:
        raise ValueError(f'must be "<amount> KZT|USD|MRP", got {value!r}')
    try:
        amount = Decimal(parts[0])
    except ArithmeticError:
        raise ValueError(f"{parts[0]!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{parts[0]!r} must be a non-negative number")
    return value


class TierLimitsConfig(_Section):
    per_operation: str
    monthly: str

    @field_validator("per_operation", "monthly")
    @classmethod
    def _limit(cls, value: str) -> str:
        return _valid_limit(value)


class SandboxTiersConfig(_Section):
    anonymous: TierLimitsConfig = Field(
        default_factory=lambda: TierLimitsConfig(per_operation="3 MRP", monthly="50 MRP")
    )
    basic: TierLimitsConfig = Field(
        default_factory=lambda: TierLimitsConfig(per_operation="1000 USD", monthly="1000 USD")
    )
    verified: TierLimitsConfig = Field(
        default_factory=lambda: TierLimitsConfig(per_operation="10000 USD", monthly="10000 USD")
    )


class SandboxConfig(_Section):
    """The regulatory sandbox's rules (sandbox/); the gateway itself never reads them."""

    enabled: bool = True
    timezone: str = "Asia/Almaty"
    mrp_kzt: str = "4325.00"
    usd_kzt: str = "505.00"
    allowed_assets: list[Asset] = Field(default_factory=lambda: [Asset.BTC, Asset.ETH, Asset.USDT])
    aggregate_cap: str = "200000 USD"
    travel_rule_threshold: str = "1000 USD"
    tiers: SandboxTiersConfig = Field(default_factory=SandboxTiersConfig)

    @field_validator("aggregate_cap", "travel_rule_threshold")
    @classmethod
    def _limit(cls, value: str) -> str:
        return _valid_limit(value)

    @field_validator("mrp_kzt", "usd_kzt")
    @classmethod
    def _kzt(cls, value: str) -> str:
        if _kzt_to_tiyn(value) <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class SimulationCategoryConfig(_Section):
    """One merchant category of the city simulation: its share of payments and its ticket distribution."""

    share: Annotated[Decimal, Field(gt=0)]
    median_ticket_kzt: str
    # Spread of the log-normal ticket distribution: larger means a heavier tail of big tickets.
    ticket_sigma: Annotated[Decimal, Field(gt=0, le=3)] = Decimal("0.6")
    merchants_per_10000_residents: Annotated[Decimal, Field(gt=0)] = Decimal("2")

    @field_validator("median_ticket_kzt")
    @classmethod
    def _kzt(cls, value: str) -> str:
        if _kzt_to_tiyn(value) <= 0:
            raise ValueError("must be positive")
        return value


def _default_categories() -> dict[str, SimulationCategoryConfig]:
    table = {  # share, median ticket, sigma, merchants per 10,000 residents
        "grocery": ("0.35", "3800.00", "0.6", "6"),
        "cafe": ("0.25", "2200.00", "0.5", "5"),
        "transport": ("0.15", "450.00", "0.4", "1"),
        "pharmacy": ("0.08", "4500.00", "0.7", "2"),
        "utilities": ("0.05", "12000.00", "0.8", "0.5"),
        "other": ("0.12", "7500.00", "1.1", "4"),
    }
    return {
        name: SimulationCategoryConfig(
            share=Decimal(share),
            median_ticket_kzt=median,
            ticket_sigma=Decimal(sigma),
            merchants_per_10000_residents=Decimal(per),
        )
        for name, (share, median, sigma, per) in table.items()
    }


def _default_hourly_curve() -> list[Decimal]:
    # Relative arrivals per hour of the local day (00-23): quiet nights, a morning, lunch and evening peak.
    weights = [
        1,
        0.5,
        0.3,
        0.2,
        0.2,
        0.4,
        1.5,
        3.5,
        5,
        5,
        5.5,
        6,
        7.5,
        7,
        6,
        5.5,
        6,
        7,
        8,
        7.5,
        6,
        4,
        2.5,
        1.5,
    ]
    return [Decimal(str(w)) for w in weights]


class SimulationBehavioursConfig(_Section):
    """Rates (per payment) and counts (per day) of the things that go wrong in a real city."""

    underpay: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.02")
    overpay: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.01")
    pay_after_expiry: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.01")
    abandoned: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.03")
    btc_double_spend: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.005")
    eth_replacement: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.005")
    over_limit: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.01")
    unregistered_wallet: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.02")
    reorgs_per_day: Annotated[int, Field(ge=0, le=24)] = 1
    reorg_depth: Annotated[int, Field(ge=1, le=6)] = 2
    rates_outages_per_day: Annotated[int, Field(ge=0, le=24)] = 1
    rates_outage_minutes: Annotated[int, Field(ge=1, le=600)] = 30
    node_outages_per_day: Annotated[int, Field(ge=0, le=24)] = 1
    node_outage_minutes: Annotated[int, Field(ge=1, le=600)] = 20


class SimulationConfig(_Section):
    """The city simulation (`cryptocity simulate`, docs/simulation.md); figures from context/kazakhstan.md."""

    residents: Annotated[int, Field(ge=10, le=1_000_000)] = 2000
    days: Annotated[int, Field(ge=1, le=31)] = 1
    seed: int = 2026
    payments_per_resident_day: Annotated[Decimal, Field(gt=0, le=20)] = Decimal("0.29")
    qr_sample_rate: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.02")
    step_seconds: Annotated[int, Field(ge=10, le=3600)] = 300
    btc_block_seconds: Annotated[int, Field(ge=10)] = 600
    eth_block_seconds: Annotated[int, Field(ge=1)] = 60
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32
    tier_mix: dict[str, Annotated[Decimal, Field(ge=0)]] = Field(
        default_factory=lambda: {
            "anonymous": Decimal("0.25"),
            "basic": Decimal("0.65"),
            "verified": Decimal("0.10"),
        }
    )
    asset_mix: dict[Asset, Annotated[Decimal, Field(ge=0)]] = Field(
        default_factory=lambda: {
            Asset.BTC: Decimal("0.35"),
            Asset.ETH: Decimal("0.15"),
            Asset.USDT: Decimal("0.50"),
        }
    )
    categories: dict[str, SimulationCategoryConfig] = Field(default_factory=_default_categories)
    hourly_curve: list[Annotated[Decimal, Field(ge=0)]] = Field(default_factory=_default_hourly_curve)
    behaviours: SimulationBehavioursConfig = Field(default_factory=SimulationBehavioursConfig)

    @field_validator("hourly_curve")
    @classmethod
    def _day(cls, value: list[Decimal]) -> list[Decimal]:
        if len(value) != 24 or not any(value):
            raise ValueError("give 24 hourly weights, not all zero")
        return value

    @field_validator("tier_mix")
    @classmethod
    def _tiers(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        unknown = set(value) - {"anonymous", "basic", "verified"}
        if unknown or not any(value.values()):
            raise ValueError("tiers are anonymous, basic and verified, with at least one share above zero")
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: dict[str, SimulationCategoryConfig]) -> dict[str, SimulationCategoryConfig]:
        unknown = set(value) - {"grocery", "cafe", "transport", "pharmacy", "utilities", "other"}
        if unknown or not value:
            raise ValueError(f"unknown merchant categories: {sorted(unknown)}")
        return value


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    invoices: InvoicesConfig = Field(default_factory=InvoicesConfig)
    assets: AssetsConfig = Field(default_factory=AssetsConfig)
    bitcoin: BitcoinConfig = Field(default_factory=BitcoinConfig)
    ethereum: EthereumConfig = Field(default_factory=EthereumConfig)
    rates: RatesConfig = Field(default_factory=RatesConfig)
    confirmations: ConfirmationsConfig = Field(default_factory=ConfirmationsConfig)
    merchants: MerchantsConfig = Field(default_factory=MerchantsConfig)
    addresses: AddressesConfig = Field(default_factory=AddressesConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @property
    def public_url(self) -> str:
        return self.server.public_url.rstrip("/") or f"http://{self.server.host}:{self.server.port}"


def _parse_env_value(raw: str) -> Any:
    """Interpret an environment value as a TOML literal when it is one (integers, booleans, arrays)."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    # A float would lose the exact text of amounts and rates; the models parse decimal strings themselves.
    # Hex, octal and binary literals stay text: "0x5FbD…" is a contract address, not a number.
    if isinstance(value, float) or raw.strip().lower().startswith(("0x", "0o", "0b")):
        return raw
    return value


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    tree: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _parse_env_value(raw)
            origin[path] = name
    return tree, origin


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _one_line(error: ValidationError, origin: Mapping[tuple[str, ...], str], source: str) -> str:
    first = error.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    key = ".".join(loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    where = source
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in origin:
            where = f"environment variable {origin[loc[:depth]]}"
            break
    else:
        below = sorted(name for path, name in origin.items() if path[: len(loc)] == loc)
        if below:
            where = "environment variable " + ", ".join(below)
    got = "" if first["type"] in {"missing", "value_error"} else f", got {first.get('input')!r}"
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"config error: {key}: {message}{got} [from {where}]{more}"


def default_config_path() -> Path | None:
    """``$CRYPTOCITY_CONFIG`` if set, else ./config.toml if present, else none (built-in defaults)."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    local = Path("config.toml")
    return local if local.is_file() else None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then the TOML file (if any), then environment overrides; validate everything."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config error: file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from None
        source = str(path)
    overrides, origin = _env_overrides(environ)
    data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origin, source)) from None
