"""The sandbox's registry: pseudonymous residents with a KYC tier and their wallets, and merchants' category
and licence status.

Residents are identified by an opaque id (``res_…``); who they are stays with the KYC provider, and the
sandbox keeps only the tier and whether the travel rule's originator data is on file there. A wallet is
what the chain shows of a payer: for Bitcoin the output script its coins were locked to (the watcher
recovers P2WPKH scripts from the witnesses of a payment's inputs), for Ethereum the sender address. Every
change writes a ``sandbox.*`` outbox event in its transaction, so the audit log has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from embit import script as btc_script

from gateway.clock import Clock, isoformat
from gateway.ids import new_id
from gateway.outbox import insert_event, prepare_event
from gateway.store import Row, Store, Tx
from sandbox.limits import Tier


class Category(StrEnum):
    GROCERY = "grocery"
    CAFE = "cafe"
    TRANSPORT = "transport"
    PHARMACY = "pharmacy"
    UTILITIES = "utilities"
    OTHER = "other"


class RegistryError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotRegistered(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Resident:
    id: str
    tier: Tier
    originator_data: bool
    status: str
    created_at: str
    updated_at: str

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tier": self.tier.value,
            "originator_data_on_file": self.originator_data,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def resident_from_row(row: Row) -> Resident:
    return Resident(
        row["id"],
        Tier(row["tier"]),
        bool(row["originator_data"]),
        row["status"],
        row["created_at"],
        row["updated_at"],
    )


@dataclass(frozen=True, slots=True)
class MerchantProfile:
    merchant_id: str
    category: Category
    licence_status: str
    licence_reason: str | None

    @property
    def suspended(self) -> bool:
        return self.licence_status == "suspended"


def normalise_owner(chain: str, owner: str) -> str:
    """A wallet as stored: Bitcoin as the output script in hex (an address is turned into its script),
    Ethereum as the lower-case 0x address."""
    text = owner.strip()
    if chain == "ethereum":
        body = text.lower().removeprefix("0x")
        if len(body) != 40 or any(c not in "0123456789abcdef" for c in body):
            raise RegistryError("owner", "an Ethereum wallet is a 0x address of 40 hex digits")
        return "0x" + body
    if chain != "bitcoin":
        raise RegistryError("chain", "must be bitcoin or ethereum")
    lowered = text.lower()
    if all(c in "0123456789abcdef" for c in lowered) and len(lowered) % 2 == 0 and lowered:
        return lowered
    try:
        return str(btc_script.address_to_scriptpubkey(text).data.hex())
    except Exception:
        raise RegistryError("owner", "not a Bitcoin address or output script in hex") from None


class Registry:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    # -- residents -------------------------------------------------------------------------------------

    async def add_resident(self, tier: Tier, *, originator_data: bool = False) -> Resident:
        stamp = isoformat(self._clock.now())
        resident = Resident(new_id("res"), Tier(tier), originator_data, "active", stamp, stamp)

        async def unit(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO residents (id, tier, originator_data, status, created_at, updated_at)"
                " VALUES (?, ?, ?, 'active', ?, ?)",
                (resident.id, resident.tier.value, int(originator_data), stamp, stamp),
            )
            await self._event(tx, "sandbox.resident_registered", {"resident": resident.view()})

        await self._store.transaction(unit)
        return resident

    async def update_resident(
        self,
        resident_id: str,
        *,
        tier: Tier | None = None,
        originator_data: bool | None = None,
        status: str | None = None,
    ) -> Resident:
        if status is not None and status not in ("active", "suspended"):
            raise RegistryError("status", "must be active or suspended")
        stamp = isoformat(self._clock.now())

        async def unit(tx: Tx) -> Row:
            row = await self._resident_row(tx, resident_id)
            new_tier = Tier(tier).value if tier is not None else row["tier"]
            new_data = int(originator_data) if originator_data is not None else row["originator_data"]
            new_status = status or row["status"]
            await tx.execute(
                "UPDATE residents SET tier = ?, originator_data = ?, status = ?, updated_at = ? WHERE id = ?",
                (new_tier, new_data, new_status, stamp, resident_id),
            )
            updated = await self._resident_row(tx, resident_id)
            await self._event(tx, "sandbox.resident_updated", {"resident": resident_from_row(updated).view()})
            return updated

        return resident_from_row(await self._store.transaction(unit))

    async def resident(self, resident_id: str) -> Resident:
        return resident_from_row(await self._store.read(lambda tx: self._resident_row(tx, resident_id)))

    async def _resident_row(self, tx: Tx, resident_id: str) -> Row:
        row = await tx.fetchone("SELECT * FROM residents WHERE id = ?", (resident_id,))
        if row is None:
            raise NotRegistered(f"no resident {resident_id!r}")
        return row

    async def register_wallet(
        self, resident_id: str, chain: str, owner: str, label: str | None = None
    ) -> str:
        """Register a payer wallet for a resident; returns it normalised. One wallet, one resident."""
        normalised = normalise_owner(chain, owner)
        stamp = isoformat(self._clock.now())

        async def unit(tx: Tx) -> None:
            await self._resident_row(tx, resident_id)
            taken = await tx.fetchone(
                "SELECT resident_id FROM resident_wallets WHERE chain = ? AND owner = ?", (chain, normalised)
            )
            if taken is not None:
                if taken["resident_id"] == resident_id:
                    return
                raise RegistryError("owner", "this wallet is registered to another resident")
            await tx.execute(
                "INSERT INTO resident_wallets (chain, owner, resident_id, label, registered_at) VALUES (?, ?, ?, ?, ?)",
                (chain, normalised, resident_id, label, stamp),
            )
            await self._event(
                tx,
                "sandbox.wallet_registered",
                {"resident_id": resident_id, "chain": chain, "owner": normalised},
            )

        await self._store.transaction(unit)
        return normalised

    # -- merchants -------------------------------------------------------------------------------------

    async def set_merchant_profile(
        self,
        merchant_id: str,
        *,
        category: Category | None = None,
        licence_status: str | None = None,
        reason: str | None = None,
        actor: str = "operator",
    ) -> MerchantProfile:
        if licence_status is not None and licence_status not in ("active", "suspended"):
            raise RegistryError("licence_status", "must be active or suspended")
        stamp = isoformat(self._clock.now())

        async def unit(tx: Tx) -> MerchantProfile:
            if await tx.fetchone("SELECT id FROM merchants WHERE id = ?", (merchant_id,)) is None:
                raise NotRegistered(f"no merchant {merchant_id!r}")
            current = await merchant_profile(tx, merchant_id)
            profile = MerchantProfile(
                merchant_id,
                Category(category) if category is not None else current.category,
                licence_status or current.licence_status,
                reason if licence_status is not None else current.licence_reason,
            )
            await tx.execute(
                "INSERT INTO merchant_profiles (merchant_id, category, licence_status, licence_reason, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (merchant_id) DO UPDATE SET category = excluded.category,"
                " licence_status = excluded.licence_status, licence_reason = excluded.licence_reason,"
                " updated_at = excluded.updated_at",
                (merchant_id, profile.category.value, profile.licence_status, profile.licence_reason, stamp),
            )
            kind = "sandbox.merchant_profile_set"
            if licence_status == "suspended" and not current.suspended:
                kind = "sandbox.merchant_suspended"
            elif licence_status == "active" and current.suspended:
                kind = "sandbox.merchant_reinstated"
            await self._event(
                tx,
                kind,
                {
                    "merchant_id": merchant_id,
                    "category": profile.category.value,
                    "licence_status": profile.licence_status,
                    "reason": profile.licence_reason,
                    "actor": actor,
                },
            )
            return profile

        return await self._store.transaction(unit)

    async def _event(self, tx: Tx, kind: str, data: dict[str, Any]) -> None:
        await insert_event(tx, prepare_event(event_type=kind, now=self._clock.now(), data=data))


async def merchant_profile(tx: Tx, merchant_id: str) -> MerchantProfile:
    """The merchant's sandbox profile; a merchant never profiled is an active licence in category other."""
    row = await tx.fetchone("SELECT * FROM merchant_profiles WHERE merchant_id = ?", (merchant_id,))
    if row is None:
        return MerchantProfile(merchant_id, Category.OTHER, "active", None)
    return MerchantProfile(
        merchant_id, Category(row["category"]), row["licence_status"], row["licence_reason"]
    )


async def residents_of(tx: Tx, chain: str, owners: list[str]) -> dict[str, str]:
    """owner -> resident id for the registered ones among ``owners``."""
    found: dict[str, str] = {}
    for owner in owners:
        row = await tx.fetchone(
            "SELECT resident_id FROM resident_wallets WHERE chain = ? AND owner = ?", (chain, owner)
        )
        if row is not None:
            found[owner] = row["resident_id"]
    return found
