"""Raw Bitcoin blocks and transactions, parsed locally and matched against watched scripts.

The watcher asks the node for raw bytes (`getblock <hash> false`, `getrawtransaction`), which Bitcoin Core
and bcoin answer identically, and parses them here with python-bitcoinlib instead of relying on either
node's verbose JSON. Matching is a dict lookup per output, so the cost of a block does not depend on how
many invoices are open.

What the rest of the gateway needs from a transaction is extracted once:
- the outputs paying watched scripts (payment id ``txid:vout``),
- whether it signals replaceability (BIP125: any input with nSequence < 0xfffffffe), because such a payment
  never counts at 0 confirmations,
- the payer's scripts, recovered from P2WPKH inputs' witness public keys (the sandbox attributes payments
  to registered residents with them; a transaction funded by several owners is visible as several).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from bitcoin.core import CBlock, CTransaction, b2lx

W = TypeVar("W")

_RBF_THRESHOLD = 0xFFFFFFFE
_P2WPKH_PREFIX = b"\x00\x14"


class BlockParseError(ValueError):
    """The node sent bytes that are not a valid serialised block or transaction."""


@dataclass(frozen=True, slots=True)
class OutputMatch(Generic[W]):
    """One output of a transaction that pays a watched script; ``watch`` is what the caller attached."""

    txid: str
    vout: int
    script_pubkey: bytes
    amount_sat: int
    watch: W

    @property
    def payment_key(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class TransactionFacts(Generic[W]):
    txid: str
    rbf_signalling: bool
    payer_scripts: tuple[bytes, ...]  # distinct, in input order; empty when no input is P2WPKH
    matches: tuple[OutputMatch[W], ...]


def parse_block(raw: bytes) -> CBlock:
    try:
        block = CBlock.deserialize(raw)
    except Exception as exc:  # python-bitcoinlib raises several types on truncated or garbled input
        raise BlockParseError(f"not a serialised block: {exc}") from None
    return block


def parse_transaction(raw: bytes) -> CTransaction:
    try:
        return CTransaction.deserialize(raw)
    except Exception as exc:
        raise BlockParseError(f"not a serialised transaction: {exc}") from None


def signals_rbf(tx: CTransaction) -> bool:
    return any(txin.nSequence < _RBF_THRESHOLD for txin in tx.vin)


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def payer_scripts(tx: CTransaction) -> tuple[bytes, ...]:
    """The P2WPKH scripts that funded ``tx``, from each input's witness ``[signature, public key]``."""
    scripts: dict[bytes, None] = {}
    if tx.wit is None or tx.wit.is_null():
        return ()
    for witness in tx.wit.vtxinwit:
        stack = list(witness.scriptWitness.stack)
        if len(stack) == 2 and len(stack[1]) == 33 and stack[1][0] in (2, 3):
            scripts[_P2WPKH_PREFIX + hash160(bytes(stack[1]))] = None
    return tuple(scripts)


def transaction_facts(tx: CTransaction, watched: Mapping[bytes, W]) -> TransactionFacts[W] | None:
    """Facts about ``tx`` if any output pays a watched script, else None (the common case, kept cheap)."""
    matches: list[OutputMatch[W]] = []
    txid: str | None = None
    for vout, output in enumerate(tx.vout):
        watch = watched.get(bytes(output.scriptPubKey))
        if watch is None:
            continue
        txid = txid or b2lx(tx.GetTxid())
        matches.append(OutputMatch(txid, vout, bytes(output.scriptPubKey), int(output.nValue), watch))
    if not matches:
        return None
    assert txid is not None
    return TransactionFacts(txid, signals_rbf(tx), payer_scripts(tx), tuple(matches))


def block_facts(block: CBlock, watched: Mapping[bytes, W]) -> Iterator[TransactionFacts[W]]:
    """Every transaction of ``block`` that pays a watched script, in block order."""
    for tx in block.vtx:
        facts = transaction_facts(tx, watched)
        if facts is not None:
            yield facts
