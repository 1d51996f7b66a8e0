"""Competing regtest blocks, built locally, so tests can make the node reorganise for real.

bcoin's ``invalidateblock`` deletes blocks and empties the mempool, and ``reconsiderblock`` does nothing
(../shared/devnets.md), so the only faithful way to exercise reorg handling is what happens on a real
network: a longer branch appears. This module builds such blocks byte for byte; ``BitcoinDevnet.reorg``
submits them with ``submitblock``.

A block built here is what a miner would produce on regtest:

- a coinbase whose scriptSig starts with the BIP34 height push (plus a random tag, so a competing block
  never collides with the block it replaces even when everything else is equal), paying the subsidy
  (50 BTC halved every 150 blocks on regtest) plus whatever fees the caller says it may claim;
- once segwit is active, the BIP141 witness commitment (``OP_RETURN aa21a9ed <sha256d(witness root ||
  reserved)>``) and the coinbase's witness reserved value (32 zero bytes). Before activation a block must
  carry no witness data at all, so both are left out;
- the merkle root, version 0x20000000 (BIP9 top bits, no deployment signalled), bits 0x207fffff (the
  regtest proof-of-work limit), and a nonce ground until the header hash is at or below the target (about
  two tries on average).

Transactions are serialised by python-bitcoinlib, whose ``CBlock`` also computes both merkle trees, so no
merkle code is written here.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Final

from bitcoin.core import (
    WITNESS_COINBASE_SCRIPTPUBKEY_MAGIC,
    CBlock,
    CBlockHeader,
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    lx,
)
from bitcoin.core.script import CScript, CScriptWitness
from bitcoin.core.serialize import uint256_from_compact

__all__ = [
    "BLOCK_VERSION",
    "COIN",
    "HALVING_INTERVAL",
    "REGTEST_BITS",
    "WITNESS_RESERVED_VALUE",
    "BlockBuildError",
    "block_subsidy",
    "build_block",
    "coinbase_transaction",
    "median_time_past",
]

COIN: Final = 100_000_000
HALVING_INTERVAL: Final = 150  # regtest (mainnet: 210,000)
REGTEST_BITS: Final = 0x207FFFFF
BLOCK_VERSION: Final = 0x20000000
WITNESS_RESERVED_VALUE: Final = b"\x00" * 32
_MAX_NONCE: Final = 0xFFFFFFFF
_MEDIAN_SPAN: Final = 11


class BlockBuildError(ValueError):
    """The block cannot be built as asked (bad height, negative fees, an unparseable transaction)."""


def block_subsidy(height: int) -> int:
    """New coins a block at ``height`` may create, in satoshi: 50 BTC halved every 150 regtest blocks."""
    if height < 0:
        raise BlockBuildError(f"height {height} is negative")
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def median_time_past(times: Sequence[int]) -> int:
    """The median of the last 11 block times (BIP113): a new block's time must be strictly greater."""
    if not times:
        raise BlockBuildError("no block times given")
    last = sorted(times[-_MEDIAN_SPAN:])
    return last[len(last) // 2]


def coinbase_transaction(
    height: int, value_sat: int, coinbase_script: bytes, *, witness_root: bytes | None, tag: bytes
) -> CTransaction:
    """The coinbase: BIP34 height push and ``tag`` in the scriptSig, one payout, the witness commitment.

    ``witness_root`` is the block's witness merkle root (its coinbase counted as zero), or None before segwit
    activation, when the block must not commit to (or carry) witness data.
    """
    # CScript encodes an int as Bitcoin Core's `CScript() << height` does: OP_1..OP_16 for small heights,
    # else a minimal CScriptNum push. That is the form BIP34 (and bcoin's getCoinbaseHeight) expects.
    script_sig = CScript([height, tag])
    if not 2 <= len(script_sig) <= 100:
        raise BlockBuildError(f"coinbase scriptSig must be 2 to 100 bytes, got {len(script_sig)}")
    outputs = [CTxOut(value_sat, CScript(coinbase_script))]
    witness = CTxWitness()
    if witness_root is not None:
        commitment = _sha256d(witness_root + WITNESS_RESERVED_VALUE)
        outputs.append(CTxOut(0, CScript(WITNESS_COINBASE_SCRIPTPUBKEY_MAGIC + commitment)))
        witness = CTxWitness([CTxInWitness(CScriptWitness([WITNESS_RESERVED_VALUE]))])
    return CTransaction([CTxIn(COutPoint(), script_sig, 0xFFFFFFFF)], outputs, 0, 1, witness)


def build_block(
    prev_hash_hex: str,
    height: int,
    time: int,
    txs: Sequence[CTransaction | bytes],
    coinbase_script: bytes,
    *,
    fees_sat: int = 0,
    segwit: bool = True,
    bits: int = REGTEST_BITS,
    version: int = BLOCK_VERSION,
) -> bytes:
    """A serialised block on top of ``prev_hash_hex`` (display hex) at ``height``, with a valid nonce.

    ``txs`` (parsed or raw, in block order, parents before children) follow the coinbase. The coinbase pays
    the subsidy plus ``fees_sat``; the default of 0 claims no fees, which is valid (a coinbase may pay less
    than allowed; the difference is destroyed) and spares looking up every input's value. ``segwit`` must
    match the deployment state at ``height``: True from height 432 on bcoin regtest.
    """
    if height < 1:
        raise BlockBuildError(f"height {height}: only the genesis block has height 0")
    if fees_sat < 0:
        raise BlockBuildError(f"fees_sat {fees_sat} is negative")
    body = [_as_transaction(tx) for tx in txs]
    value = block_subsidy(height) + fees_sat
    tag = secrets.token_bytes(8)
    witness_root: bytes | None = None
    if segwit:
        # The witness tree counts the coinbase as 32 zero bytes, so a placeholder coinbase (it only has to
        # carry witness data for python-bitcoinlib to build the tree) gives the root of the final block.
        placeholder = coinbase_transaction(height, value, coinbase_script, witness_root=b"\x00" * 32, tag=tag)
        witness_root = CBlock.build_witness_merkle_tree_from_txs([placeholder, *body])[-1]
    coinbase = coinbase_transaction(height, value, coinbase_script, witness_root=witness_root, tag=tag)
    vtx = [coinbase, *body]
    merkle_root = CBlock.build_merkle_tree_from_txs(vtx)[-1]
    prev = lx(prev_hash_hex)
    target = uint256_from_compact(bits)
    for nonce in range(_MAX_NONCE + 1):
        header = CBlockHeader(version, prev, merkle_root, time, bits, nonce)
        if int.from_bytes(header.GetHash(), "little") <= target:
            break
    else:  # pragma: no cover - needs 2**32 failures at regtest difficulty
        raise BlockBuildError("no nonce satisfies the target; change the time or the coinbase tag")
    block = CBlock(version, prev, merkle_root, time, bits, nonce, vtx)
    return bytes(block.serialize())


def _as_transaction(tx: CTransaction | bytes) -> CTransaction:
    if isinstance(tx, bytes | bytearray):
        try:
            return CTransaction.deserialize(bytes(tx))
        except Exception as exc:  # python-bitcoinlib raises several types on garbled input
            raise BlockBuildError(f"not a serialised transaction: {exc}") from None
    return tx


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()
