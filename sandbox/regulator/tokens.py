"""Regulator API tokens: ``crt_<lookup><secret>``, shown once, stored only as a SHA-256 hash.

They are a separate kind from merchant API keys (``cc_…``) on purpose: the regulator API refuses merchant
keys and the merchant API does not know regulator tokens, so neither can be used where the other belongs.
The same reasoning as for merchant keys applies to the hash: 190 random bits need no stretching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.accounts.api_keys import hash_key, key_matches
from gateway.clock import Clock, isoformat
from gateway.ids import new_id, random_base32
from gateway.outbox import insert_event, prepare_event
from gateway.store import Store, Tx

_TOKEN = re.compile(r"^crt_([0-9a-z]{12})([0-9a-z]{26})$")
MERCHANT_KEY = re.compile(r"^cc_(test|live)_")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    plaintext: str
    label: str


class RegulatorTokens:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def issue(self, label: str) -> IssuedToken:
        lookup = random_base32(12)
        plaintext = f"crt_{lookup}{random_base32(26)}"
        token_id = new_id("rtk")
        now = self._clock.now()

        async def unit(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO regulator_tokens (id, lookup, secret_hash, label, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_id, lookup, hash_key(plaintext), label, isoformat(now)),
            )
            await insert_event(
                tx,
                prepare_event(
                    event_type="sandbox.regulator_token_issued",
                    now=now,
                    data={"token_id": token_id, "label": label},
                ),
            )

        await self._store.transaction(unit)
        return IssuedToken(token_id, plaintext, label)

    async def authenticate(self, plaintext: str) -> str | None:
        """The token's id (who acted, for the audit log), or None for unknown or revoked tokens."""
        match = _TOKEN.match(plaintext)
        if match is None:
            return None
        row = await self._store.read(
            lambda tx: tx.fetchone(
                "SELECT id, secret_hash, revoked_at FROM regulator_tokens WHERE lookup = ?", (match.group(1),)
            )
        )
        if row is None or row["revoked_at"] is not None or not key_matches(plaintext, row["secret_hash"]):
            return None
        return str(row["id"])

    async def revoke(self, token_id: str) -> bool:
        now = self._clock.now()

        async def unit(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE regulator_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (isoformat(now), token_id),
            )
            if changed:
                await insert_event(
                    tx,
                    prepare_event(
                        event_type="sandbox.regulator_token_revoked", now=now, data={"token_id": token_id}
                    ),
                )
            return bool(changed)

        return await self._store.transaction(unit)
