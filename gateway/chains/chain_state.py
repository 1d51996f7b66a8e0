"""What a chain watcher keeps in the store: its recent chain (the checkpoint) and read views of payments.

Watchers never write invoices or payments themselves; those go through the invoice service. What they own is
the chain they have processed: one row per height (hash and parent hash) for the last ``keep`` heights. The
highest row is the checkpoint a restarted watcher resumes from; the rows below it let the watcher find the
fork point of a reorg by comparing them with the node's ``getblockhash(height)``, and let it tell which stored
payments sit in blocks that are no longer in the main chain.

The payment views are read-only queries on the payments table, indexed by (chain, block_height), so their
cost depends on how many payments sit in the recent heights, never on how many invoices are open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.money import Asset, Chain
from gateway.store import Row, Store, Tx

# Payments in these statuses still count (or may count) for their invoice, so the watcher follows them.
_FOLLOWED = ("accepted", "held")


@dataclass(frozen=True, slots=True)
class StoredBlock:
    height: int
    hash: str
    prev_hash: str


@dataclass(frozen=True, slots=True)
class AddressSpend:
    """Coins leaving an invoice address in a block: what the exposure view subtracts from what was paid."""

    spend_key: str  # unique per chain: bitcoin txid:input; ethereum tx hash:native|gas or tx hash:log index
    asset: Asset
    address: str
    amount_minor: int
    tx_id: str
    payment_key: str | None = None  # bitcoin: the payment output this input spends


@dataclass(frozen=True, slots=True)
class PaidAddress:
    """A payment the watcher follows for spends: its address and, on bitcoin, the output it created."""

    payment_key: str
    asset: Asset
    address: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class TrackedPayment:
    """A stored payment as a watcher sees it: where it is on the chain and what it paid."""

    invoice_id: str
    payment_key: str
    asset: Asset
    address: str
    amount_minor: int
    confirmations: int
    rbf_signalling: bool
    payer: str | None
    block_hash: str | None
    block_height: int | None

    @property
    def txid(self) -> str:
        return self.payment_key.split(":", 1)[0]


def _tracked(row: Row) -> TrackedPayment:
    return TrackedPayment(
        invoice_id=row["invoice_id"],
        payment_key=row["payment_key"],
        asset=Asset(row["asset"]),
        address=row["address"],
        amount_minor=int(row["amount_minor"]),
        confirmations=int(row["confirmations"]),
        rbf_signalling=bool(row["rbf_signalling"]),
        payer=row["payer"],
        block_hash=row["block_hash"],
        block_height=None if row["block_height"] is None else int(row["block_height"]),
    )


_PAYMENT_COLUMNS = (
    "p.invoice_id, p.payment_key, p.asset, p.address, p.amount_minor, p.confirmations, p.rbf_signalling,"
    " p.payer, p.block_hash, p.block_height"
)


class ChainState:
    """The store-backed recent chain of one chain, and the payment queries its watcher needs."""

    def __init__(self, store: Store, chain: Chain, *, keep: int = 100) -> None:
        if keep < 2:
            raise ValueError("keep at least two recent blocks, or no fork point can ever be found")
        self._store = store
        self.chain = chain
        self.keep = keep

    async def recent_blocks(self) -> list[StoredBlock]:
        """The stored recent chain, lowest height first; empty before the watcher's first block."""
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                "SELECT height, hash, prev_hash FROM chain_blocks WHERE chain = ? ORDER BY height",
                (self.chain.value,),
            )
        )
        return [StoredBlock(int(r["height"]), r["hash"], r["prev_hash"]) for r in rows]

    async def connect(self, block: StoredBlock, spends: Sequence[AddressSpend] = ()) -> None:
        """Record ``block`` as the new tip (after its payments were recorded) with the spends from invoice
        addresses it contains, in one transaction, and forget old heights."""
        await self.connect_many([(block, spends)])

    async def connect_many(self, blocks: Sequence[tuple[StoredBlock, Sequence[AddressSpend]]]) -> None:
        """:meth:`connect` for consecutive blocks (lowest first) in one transaction: a catch-up over many
        blocks pays one commit, not one per block."""
        if not blocks:
            return

        async def unit(tx: Tx) -> None:
            for block, spends in blocks:
                await self._connect_in(tx, block, spends)
            top = blocks[-1][0].height
            await tx.execute(
                "DELETE FROM chain_blocks WHERE chain = ? AND (height <= ? OR height > ?)",
                (self.chain.value, top - self.keep, top),
            )

        await self._store.transaction(unit)

    async def _connect_in(self, tx: Tx, block: StoredBlock, spends: Sequence[AddressSpend]) -> None:
        for spend in spends:
            await tx.execute(
                "INSERT INTO address_spends (chain, spend_key, asset, address, amount_minor, payment_key,"
                " tx_id, block_hash, block_height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (chain, spend_key) DO UPDATE SET block_hash = excluded.block_hash,"
                " block_height = excluded.block_height",
                (
                    self.chain.value,
                    spend.spend_key,
                    spend.asset.value,
                    spend.address,
                    str(spend.amount_minor),
                    spend.payment_key,
                    spend.tx_id,
                    block.hash,
                    block.height,
                ),
            )
        await tx.execute(
            "INSERT INTO chain_blocks (chain, height, hash, prev_hash) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (chain, height) DO UPDATE SET hash = excluded.hash, prev_hash = excluded.prev_hash",
            (self.chain.value, block.height, block.hash, block.prev_hash),
        )

    async def disconnect_above(self, height: int) -> None:
        """Forget the stored blocks above ``height`` and the spends in them (they left the main chain)."""

        async def unit(tx: Tx) -> None:
            for table, column in (("chain_blocks", "height"), ("address_spends", "block_height")):
                await tx.execute(
                    f"DELETE FROM {table} WHERE chain = ? AND {column} > ?",  # noqa: S608 - fixed names
                    (self.chain.value, height),
                )

        await self._store.transaction(unit)

    async def paid_addresses(self) -> list[PaidAddress]:
        """Every payment still on this chain (not dropped), whose address the watcher follows for spends."""
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                "SELECT payment_key, asset, address, amount_minor FROM payments"
                " WHERE chain = ? AND status != 'dropped'",
                (self.chain.value,),
            )
        )
        return [
            PaidAddress(r["payment_key"], Asset(r["asset"]), r["address"], int(r["amount_minor"]))
            for r in rows
        ]

    async def unconfirmed_payments(self) -> list[TrackedPayment]:
        """Followed payments seen only in the mempool (no block yet)."""
        return await self._payments("p.block_height IS NULL", ())

    async def payments_to_count(self, lowest: int, recent: int, depth: int) -> list[TrackedPayment]:
        """Followed payments mined at ``lowest`` or above whose stored confirmations may be out of date:
        every one from ``recent`` up, and deeper ones whose count is still below ``depth``.

        The deeper ones are those the tip passed faster than they were counted: a watcher that was away
        for several blocks (another process took over, a restart, a node or store outage) first syncs to a
        tip more than ``depth`` above them. The index on (chain, block_height) bounds the scan by ``lowest``.
        """
        return await self._payments(
            "p.block_height >= ? AND (p.block_height >= ? OR p.confirmations < ?)", (lowest, recent, depth)
        )

    async def stale_payments(self, lowest: int, highest: int | None) -> list[TrackedPayment]:
        """Followed payments mined from ``lowest`` (to ``highest``) whose block is not the stored one there.

        Call it only when the stored chain reaches the node's tip: a payment recorded for a block whose own
        row was not written yet (the process died in between) would look stale before its block is applied
        again.
        """
        bound = "" if highest is None else " AND p.block_height <= ?"
        return await self._payments(
            f"p.block_height >= ?{bound} AND (b.hash IS NULL OR b.hash <> p.block_hash)",
            (lowest,) if highest is None else (lowest, highest),
            join_blocks=True,
        )

    async def _payments(
        self,
        condition: str,
        params: Sequence[object],
        *,
        join_blocks: bool = False,
    ) -> list[TrackedPayment]:
        join = (
            " LEFT JOIN chain_blocks b ON b.chain = p.chain AND b.height = p.block_height"
            if join_blocks
            else ""
        )
        sql = (
            f"SELECT {_PAYMENT_COLUMNS} FROM payments p{join}"  # noqa: S608 - fixed fragments
            f" WHERE p.chain = ? AND p.status IN (?, ?) AND {condition} ORDER BY p.detected_at, p.id"
        )
        rows = await self._store.read(lambda tx: tx.fetchall(sql, (self.chain.value, *_FOLLOWED, *params)))
        return [_tracked(r) for r in rows]

    async def addresses_since(self, invoice_id_floor: str) -> list[tuple[str, str]]:
        """(address, invoice id) of this chain's invoice addresses whose invoice id sorts at or after the floor.

        Invoice ids begin with their creation millisecond, so a floor built from a time a little before the
        last refresh finds every address committed since, by any process, through the invoice-id index.
        """
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                # "(chain || '')" keeps the planner on the invoice-id index: left to itself, SQLite picks the
                # (chain, account_key, index) key and reads every address of the chain at every poll.
                "SELECT address, invoice_id FROM invoice_addresses WHERE invoice_id >= ? AND (chain || '') = ?",
                (invoice_id_floor, self.chain.value),
            )
        )
        return [(r["address"], r["invoice_id"]) for r in rows]
