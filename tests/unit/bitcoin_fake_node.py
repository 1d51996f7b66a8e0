"""A scripted Bitcoin node for watcher unit tests: real serialised blocks and transactions, no consensus.

Tests arrange exactly the mempool and chain snapshots they need (a replacement, an eviction, a reorg, a block
arriving between two calls) — things the real bcoin node cannot be made to do on demand. It answers the same
JSON-RPC calls, with the same shapes and error codes, as the watcher uses against a real node; the real-node
behaviour is covered by tests/integration/test_bitcoin_settlement.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from bitcoin.core import (
    CBlock,
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    CTransaction,
    CTxInWitness,
    CTxWitness,
    b2lx,
    lx,
)

from gateway.chains.bitcoin_rpc import RpcError, RpcUnavailable

_counter = itertools.count(1)


def fake_outpoint() -> COutPoint:
    """An outpoint of some earlier transaction (the fake node does not check that inputs exist)."""
    return COutPoint(next(_counter).to_bytes(32, "little"), 0)


def payment_tx(
    outputs: Sequence[tuple[bytes, int]],
    *,
    inputs: Sequence[COutPoint] | None = None,
    rbf: bool = False,
    payer_pubkey: bytes | None = None,
) -> CTransaction:
    """A transaction paying ``(scriptPubKey, sat)`` outputs; with a payer key, its inputs carry P2WPKH witnesses."""
    vin = [
        CMutableTxIn(o, nSequence=0xFFFFFFFD if rbf else 0xFFFFFFFF) for o in (inputs or [fake_outpoint()])
    ]
    vout = [CMutableTxOut(amount, CScript(script)) for script, amount in outputs]
    tx = CMutableTransaction(vin, vout)
    if payer_pubkey is not None:
        tx.wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x30" * 71, payer_pubkey])) for _ in vin])
    return CTransaction.from_tx(tx)


class FakeNode:
    def __init__(self, chain: str = "regtest") -> None:
        self.chain_name = chain
        self.blocks: dict[str, CBlock] = {}
        self.main: list[str] = []
        self.mempool: dict[str, CTransaction] = {}
        self.down = False
        self.calls: list[str] = []
        self.block_between_calls: list[CTransaction] | None = None  # mined right after getrawmempool
        self._nonce = itertools.count()
        self.mine([])  # genesis

    # -- arranging snapshots -------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.main) - 1

    def broadcast(self, tx: CTransaction) -> str:
        txid = b2lx(tx.GetTxid())
        self.mempool[txid] = tx
        return txid

    def _block(self, parent: str | None, txs: Sequence[CTransaction]) -> CBlock:
        height = 0 if parent is None else self.main.index(parent) + 1 if parent in self.main else 0
        coinbase = CMutableTransaction(
            [CMutableTxIn(COutPoint(), CScript([height, next(self._nonce)]))],
            [CMutableTxOut(50 * 10**8, CScript(b"\x00\x14" + b"\x11" * 20))],
        )
        vtx = [CTransaction.from_tx(coinbase), *txs]
        draft = CBlock(hashPrevBlock=lx(parent) if parent else b"\x00" * 32, vtx=vtx)
        return CBlock(
            nVersion=0x20000000,
            hashPrevBlock=draft.hashPrevBlock,
            hashMerkleRoot=draft.calc_merkle_root(),
            nTime=1_700_000_000 + len(self.blocks),
            nBits=0x207FFFFF,
            nNonce=next(self._nonce),
            vtx=vtx,
        )

    def mine(self, txs: Sequence[CTransaction] | None = None) -> str:
        """Mine a block on the tip; ``None`` takes the whole mempool, a list exactly those transactions."""
        chosen = list(self.mempool.values()) if txs is None else list(txs)
        block = self._block(self.main[-1] if self.main else None, chosen)
        block_hash = b2lx(block.GetHash())
        self.blocks[block_hash] = block
        self.main.append(block_hash)
        mined = {b2lx(t.GetTxid()) for t in chosen}
        spent = {(bytes(i.prevout.hash), i.prevout.n) for t in chosen for i in t.vin}
        for txid, tx in list(self.mempool.items()):
            if txid in mined or any((bytes(i.prevout.hash), i.prevout.n) in spent for i in tx.vin):
                del self.mempool[txid]
        return block_hash

    def reorg(self, depth: int, branch: Sequence[Sequence[CTransaction]]) -> list[str]:
        """Replace the last ``depth`` blocks with ``branch`` (one list of transactions per new block)."""
        assert len(branch) > depth, "a competing branch must be longer to win"
        self.main = self.main[: len(self.main) - depth]
        return [self.mine(list(txs)) for txs in branch]

    # -- JSON-RPC ------------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        if self.down:
            raise RpcUnavailable("bitcoin node at fake unavailable after 1 attempts: connection refused")
        self.calls.append(method)
        answer = self._answer(method, list(params))
        if method == "getrawmempool" and self.block_between_calls is not None:
            txs, self.block_between_calls = self.block_between_calls, None
            self.mine(txs)
        return answer

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        results: list[Any] = []
        for method, params in calls:
            try:
                results.append(await self.call(method, *params))
            except RpcError as exc:
                results.append(exc)
        return results

    def _answer(self, method: str, params: list[Any]) -> Any:
        if method == "getblockchaininfo":
            return {"chain": self.chain_name, "blocks": self.height, "bestblockhash": self.main[-1]}
        if method == "getblockcount":
            return self.height
        if method == "getbestblockhash":
            return self.main[-1]
        if method == "getblockhash":
            height = int(params[0])
            if not 0 <= height <= self.height:
                raise RpcError(method, -8, "Block height out of range")
            return self.main[height]
        if method == "getblock":
            block = self.blocks.get(params[0])
            if block is None:
                raise RpcError(method, -5, "Block not found")
            return block.serialize().hex()
        if method == "getrawmempool":
            return list(self.mempool)
        if method == "getrawtransaction":
            tx = self.mempool.get(params[0])
            if tx is None:
                raise RpcError(method, -5, "No such mempool or blockchain transaction")
            return tx.serialize().hex()
        raise RpcError(method, -32601, "Method not found")
