"""Merchant records: onboarding, keys, disabling, and authenticating API calls.

A merchant registers watch-only account keys (BIP84 account key for BTC, BIP44 m/44'/60'/0' key for ETH
and tokens); the gateway derives one fresh address per invoice from them and never holds a private key.
Every change is written with an outbox event, so the audit log and the regulator see merchant changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.accounts.api_keys import AuthCache, IssuedKey, issue_key, key_matches, split_key
from gateway.addresses import AccountKeyError, BitcoinAccount, EthereumAccount
from gateway.clock import Clock, isoformat
from gateway.ids import new_id
from gateway.money import ASSETS, Asset, Chain
from gateway.outbox import insert_event, prepare_event
from gateway.store import Row, Store, Tx


class MerchantError(ValueError):
    """Invalid merchant data; the message names the field and what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MerchantNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    name: str
    btc_account_key: str | None
    eth_account_key: str | None
    accepted_assets: tuple[Asset, ...]
    default_expiry_seconds: int | None
    status: str
    created_at: str
    updated_at: str
    spread_bps: int = 0

    @property
    def active(self) -> bool:
        return self.status == "active"

    def account_key(self, chain: Chain) -> str | None:
        return self.btc_account_key if chain is Chain.BITCOIN else self.eth_account_key

    def public_view(self) -> dict[str, object]:
        """What may be shown to operators: keys are watch-only but still private business data."""
        return {
            "id": self.id,
            "name": self.name,
            "accepted_assets": [a.value for a in self.accepted_assets],
            "default_expiry_seconds": self.default_expiry_seconds,
            "spread_bps": self.spread_bps,
            "status": self.status,
            "has_btc_key": self.btc_account_key is not None,
            "has_eth_key": self.eth_account_key is not None,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    merchant_id: str
    lookup: str
    label: str
    created_at: str
    revoked_at: str | None


def merchant_from_row(row: Row) -> Merchant:
    return Merchant(
        id=row["id"],
        name=row["name"],
        btc_account_key=row["btc_account_key"],
        eth_account_key=row["eth_account_key"],
        accepted_assets=tuple(Asset(a) for a in json.loads(row["accepted_assets"])),
        default_expiry_seconds=row["default_expiry_seconds"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        spread_bps=int(row["spread_bps"]),
    )


MAX_SPREAD_BPS = 9999


def validate_spread(spread_bps: object) -> int:
    """A spread is whole basis points, 0 to 9999 (100 % would make the locked rate zero)."""
    if (
        isinstance(spread_bps, bool)
        or not isinstance(spread_bps, int)
        or not 0 <= spread_bps <= MAX_SPREAD_BPS
    ):
        raise MerchantError("spread_bps", f"must be an integer from 0 to {MAX_SPREAD_BPS} basis points")
    return spread_bps


def validate_merchant_keys(
    btc_account_key: str | None, eth_account_key: str | None, assets: Sequence[Asset]
) -> tuple[str | None, str | None]:
    """Parse the keys (so a bad key fails at onboarding, not at the first invoice) and check coverage."""
    btc = eth = None
    if btc_account_key:
        try:
            btc = BitcoinAccount(btc_account_key).normalised
        except AccountKeyError as exc:
            raise MerchantError("btc_account_key", str(exc)) from None
    if eth_account_key:
        try:
            eth = EthereumAccount(eth_account_key).normalised
        except AccountKeyError as exc:
            raise MerchantError("eth_account_key", str(exc)) from None
    if not assets:
        raise MerchantError("accepted_assets", "accept at least one asset")
    for asset in assets:
        chain = ASSETS[asset].chain
        if chain is Chain.BITCOIN and btc is None:
            raise MerchantError(
                "btc_account_key", f"{asset.value} is accepted but no BTC account key was given"
            )
        if chain is Chain.ETHEREUM and eth is None:
            raise MerchantError(
                "eth_account_key", f"{asset.value} is accepted but no ETH account key was given"
            )
    return btc, eth


class MerchantRegistry:
    def __init__(
        self, store: Store, clock: Clock, *, key_environment: str, auth_cache_seconds: float
    ) -> None:
        self._store = store
        self._clock = clock
        self._env = key_environment
        self.auth_cache = AuthCache(auth_cache_seconds)
        self._merchant_cache: dict[str, tuple[Merchant, float]] = {}
        self._merchant_ttl = auth_cache_seconds
        self.auth_cache.on_invalidate(self._merchant_cache.clear)

    async def create(
        self,
        name: str,
        *,
        btc_account_key: str | None,
        eth_account_key: str | None,
        accepted_assets: Sequence[Asset],
        default_expiry_seconds: int | None = None,
        spread_bps: int = 0,
        key_label: str = "default",
    ) -> tuple[Merchant, IssuedKey]:
        name = name.strip()
        if not name or len(name) > 200:
            raise MerchantError("name", "must be 1 to 200 characters")
        assets = tuple(dict.fromkeys(accepted_assets))
        btc, eth = validate_merchant_keys(btc_account_key, eth_account_key, assets)
        spread_bps = validate_spread(spread_bps)
        now = self._clock.now()
        merchant = Merchant(
            id=new_id("mer"),
            name=name,
            btc_account_key=btc,
            eth_account_key=eth,
            accepted_assets=assets,
            default_expiry_seconds=default_expiry_seconds,
            status="active",
            created_at=isoformat(now),
            updated_at=isoformat(now),
            spread_bps=spread_bps,
        )
        key = issue_key(self._env)

        async def unit(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO merchants (id, name, btc_account_key, eth_account_key, accepted_assets,"
                " default_expiry_seconds, status, created_at, updated_at, spread_bps)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    merchant.id,
                    merchant.name,
                    btc,
                    eth,
                    json.dumps([a.value for a in assets]),
                    default_expiry_seconds,
                    "active",
                    merchant.created_at,
                    merchant.updated_at,
                    spread_bps,
                ),
            )
            for chain, account_key in ((Chain.BITCOIN, btc), (Chain.ETHEREUM, eth)):
                if account_key:
                    await tx.execute(
                        "INSERT INTO address_counters (chain, account_key, next_index) VALUES (?, ?, 0)"
                        " ON CONFLICT (chain, account_key) DO NOTHING",
                        (chain.value, account_key),
                    )
            await self._insert_key(tx, merchant.id, key, key_label, now)
            await insert_event(
                tx,
                prepare_event(
                    event_type="merchant.created",
                    now=now,
                    merchant_id=merchant.id,
                    data={"merchant": merchant.public_view()},
                ),
            )

        await self._store.transaction(unit)
        return merchant, key

    async def _insert_key(self, tx: Tx, merchant_id: str, key: IssuedKey, label: str, now: datetime) -> str:
        key_id = new_id("key")
        await tx.execute(
            "INSERT INTO api_keys (id, merchant_id, lookup, secret_hash, label, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, merchant_id, key.lookup, key.secret_hash, label, isoformat(now)),
        )
        return key_id

    async def get(self, merchant_id: str) -> Merchant:
        row = await self._store.read(
            lambda tx: tx.fetchone("SELECT * FROM merchants WHERE id = ?", (merchant_id,))
        )
        if row is None:
            raise MerchantNotFound(merchant_id)
        return merchant_from_row(row)

    async def get_cached(self, merchant_id: str) -> Merchant:
        """Like :meth:`get`, remembered as long as an API-key lookup (merchant records change rarely)."""
        hit = self._merchant_cache.get(merchant_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        merchant = await self.get(merchant_id)
        if self._merchant_ttl > 0:
            self._merchant_cache[merchant_id] = (merchant, time.monotonic() + self._merchant_ttl)
        return merchant

    async def list_all(self) -> list[Merchant]:
        rows = await self._store.read(
            lambda tx: tx.fetchall("SELECT * FROM merchants ORDER BY created_at, id")
        )
        return [merchant_from_row(row) for row in rows]

    async def list_keys(self, merchant_id: str) -> list[ApiKeyInfo]:
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                "SELECT id, merchant_id, lookup, label, created_at, revoked_at FROM api_keys"
                " WHERE merchant_id = ? ORDER BY created_at, id",
                (merchant_id,),
            )
        )
        return [ApiKeyInfo(**row) for row in rows]

    async def add_key(self, merchant_id: str, label: str = "") -> IssuedKey:
        """Issue one more key; existing keys keep working (zero-downtime rotation starts here)."""
        return await self._change_keys(merchant_id, label=label, revoke_others=False)

    async def rotate_key(self, merchant_id: str, label: str = "rotated") -> IssuedKey:
        """Issue a new key and revoke every other key of the merchant, in one transaction."""
        return await self._change_keys(merchant_id, label=label, revoke_others=True)

    async def _change_keys(self, merchant_id: str, *, label: str, revoke_others: bool) -> IssuedKey:
        key = issue_key(self._env)
        now = self._clock.now()

        async def unit(tx: Tx) -> None:
            if await tx.fetchone("SELECT id FROM merchants WHERE id = ?", (merchant_id,)) is None:
                raise MerchantNotFound(merchant_id)
            revoked = 0
            if revoke_others:
                revoked = await tx.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE merchant_id = ? AND revoked_at IS NULL",
                    (isoformat(now), merchant_id),
                )
            key_id = await self._insert_key(tx, merchant_id, key, label, now)
            await insert_event(
                tx,
                prepare_event(
                    event_type="merchant.key_rotated" if revoke_others else "merchant.key_added",
                    now=now,
                    merchant_id=merchant_id,
                    data={"key_id": key_id, "lookup": key.lookup, "revoked_keys": revoked},
                ),
            )
            tx.after_commit(self.auth_cache.invalidate_all)

        await self._store.transaction(unit)
        return key

    async def revoke_key(self, merchant_id: str, lookup: str) -> None:
        now = self._clock.now()

        async def unit(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE merchant_id = ? AND lookup = ? AND revoked_at IS NULL",
                (isoformat(now), merchant_id, lookup),
            )
            if not changed:
                raise MerchantNotFound(f"no active key {lookup} for merchant {merchant_id}")
            await insert_event(
                tx,
                prepare_event(
                    event_type="merchant.key_revoked",
                    now=now,
                    merchant_id=merchant_id,
                    data={"lookup": lookup},
                ),
            )
            tx.after_commit(self.auth_cache.invalidate_all)

        await self._store.transaction(unit)

    async def disable(self, merchant_id: str) -> None:
        now = self._clock.now()

        async def unit(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE merchants SET status = 'disabled', updated_at = ? WHERE id = ?",
                (isoformat(now), merchant_id),
            )
            if not changed:
                raise MerchantNotFound(merchant_id)
            await insert_event(
                tx, prepare_event(event_type="merchant.disabled", now=now, merchant_id=merchant_id, data={})
            )
            tx.after_commit(self.auth_cache.invalidate_all)

        await self._store.transaction(unit)

    async def set_spread(self, merchant_id: str, spread_bps: int) -> Merchant:
        """Change the merchant's spread for invoices created from now on (locked quotes never change)."""
        spread_bps = validate_spread(spread_bps)
        now = self._clock.now()

        async def unit(tx: Tx) -> Row:
            previous = await tx.fetchone("SELECT spread_bps FROM merchants WHERE id = ?", (merchant_id,))
            if previous is None:
                raise MerchantNotFound(merchant_id)
            await tx.execute(
                "UPDATE merchants SET spread_bps = ?, updated_at = ? WHERE id = ?",
                (spread_bps, isoformat(now), merchant_id),
            )
            await insert_event(
                tx,
                prepare_event(
                    event_type="merchant.updated",
                    now=now,
                    merchant_id=merchant_id,
                    data={"changes": {"spread_bps": [int(previous["spread_bps"]), spread_bps]}},
                ),
            )
            tx.after_commit(self.auth_cache.invalidate_all)
            row = await tx.fetchone("SELECT * FROM merchants WHERE id = ?", (merchant_id,))
            assert row is not None
            return row

        return merchant_from_row(await self._store.transaction(unit))

    async def authenticate(self, plaintext: str) -> str | None:
        """The merchant id an API key belongs to, or None for unknown, revoked or disabled."""
        parts = split_key(plaintext)
        if parts is None or parts[0] != self._env:
            return None
        lookup = parts[1]
        cached = self.auth_cache.get(lookup)
        if cached is None:
            row = await self._store.read(
                lambda tx: tx.fetchone(
                    "SELECT k.merchant_id, k.secret_hash, k.revoked_at, m.status FROM api_keys k"
                    " JOIN merchants m ON m.id = k.merchant_id WHERE k.lookup = ?",
                    (lookup,),
                )
            )
            if row is None:
                self.auth_cache.put(lookup, None, "")
                return None
            usable = row["revoked_at"] is None and row["status"] == "active"
            self.auth_cache.put(lookup, row["merchant_id"] if usable else None, row["secret_hash"])
            cached = self.auth_cache.get(lookup)
            if cached is None:  # caching disabled
                return row["merchant_id"] if usable and key_matches(plaintext, row["secret_hash"]) else None
        if cached.merchant_id is None or not key_matches(plaintext, cached.secret_hash):
            return None
        return cached.merchant_id
