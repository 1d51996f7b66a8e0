"""A resident's BIP84 (native SegWit, P2WPKH) bitcoin wallet: derive, scan, select coins, sign, broadcast.

The city simulation and the end-to-end tests need payers that behave like real wallets against a real node
(bcoin regtest): coins that mature, change that comes back, payments the mempool may refuse, double spends
and reorgs. So this wallet keeps its own UTXO set from raw blocks, the same way the gateway's watcher reads
the chain (``getblockhash`` + ``getblock <hash> false``, parsed by python-bitcoinlib in
:mod:`gateway.chains.bitcoin_blocks`), and relies on the node only to relay and mine.

Design choices, and why:

- Keys: BIP39 mnemonic → BIP32 ``m/84'/coin'/account'`` with embit; receive chain ``/0/i``, change chain
  ``/1/i``. ``coin_type=1`` (every test network) is the default so a mainnet key is never derived by
  accident. The first ``gap`` scripts of both chains are watched, and the window is extended whenever an
  index within ``gap`` of its end is used, so a wallet restored from its mnemonic finds all its coins.
- Scanning keeps a checkpoint (height and hash of the last block applied) and an undo record for each of
  the last 100 blocks. If the checkpoint is no longer on the node's main chain, blocks are undone newest
  first until one still is, then scanning resumes from there; a deeper reorg resets the wallet and rescans
  from its birth height. Nothing is guessed from confirmations: bcoin reports positive confirmations even
  for stale blocks (devnets.md), so only ``getblockhash(height) == hash`` proves a block is still current.
- A coinbase is spendable only with 100 confirmations (``tip + 1 - height >= 100``, what the node checks
  for the next block); the regtest chain mined to 432 for segwit leaves 333 mature coinbases.
- Payments mark their coins as spent locally and add their change as an unconfirmed coin at once, so
  consecutive payments never reuse a coin. A payment the node refuses is released again. When a block
  spends one of our coins with a *different* transaction (a double spend won), the losing payment's change
  and its other coins are released too (undoably: a later reorg may bring the payment back), and after a
  reorg a pending payment whose coins vanished with a stale block is forgotten. Coin selection prefers
  confirmed coins (fewer unconfirmed ancestors: bcoin refuses a 26th), falling back to our own unconfirmed
  change.
- bcoin's ``sendrawtransaction`` answers the txid at once and hands the transaction to the mempool without
  waiting for its verdict (``node.relay`` is not awaited), so it answers the same for a rejected
  transaction, and even an accepted one may not be in the mempool yet when the answer arrives. Acceptance is
  therefore confirmed by polling ``getmempoolentry`` for up to ``acceptance_wait_seconds`` (and
  ``getrawtransaction``, in case it was mined meanwhile); a refusal raises :class:`PaymentRejected`. Bitcoin
  Core answers synchronously, so there the first poll decides.
- History: every transaction of the main chain that pays or spends the wallet is kept as a
  :class:`HistoryEntry` (undone with its block on a reorg). :meth:`BitcoinWallet.scan_mempool` adds what
  the node's mempool holds for the wallet: a spend of one of its coins (its own earlier payment, perhaps
  made by another process restored from the same mnemonic) is adopted like a payment built here, so a
  wallet restored while its last payment is unconfirmed neither double-spends it nor reuses its change
  address; unconfirmed coins from others are reported but never spent.
- Amounts are integer satoshi and fee rates integer sat/vB throughout; no float is ever involved.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from bitcoin.core import CBlock, CTransaction, b2lx
from embit import bech32 as _bech32
from embit import bip39
from embit.bip32 import HDKey
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin_blocks import BlockParseError, parse_block, parse_transaction
from gateway.chains.bitcoin_rpc import RpcError
from gateway.payment_uri import parse_bip21

__all__ = [
    "CHANGE",
    "COINBASE_MATURITY",
    "EXTERNAL",
    "P2WPKH_DUST_SAT",
    "SEQUENCE_FINAL",
    "SEQUENCE_RBF",
    "UNDO_DEPTH",
    "BitcoinWallet",
    "HistoryEntry",
    "InsufficientFunds",
    "MempoolRpc",
    "Outpoint",
    "Payment",
    "PaymentRejected",
    "ScanReport",
    "Utxo",
    "WalletError",
    "WalletRpc",
    "dust_threshold",
    "estimate_vsize",
]

EXTERNAL: Final = 0  # receive chain …/0/i
CHANGE: Final = 1  # change chain …/1/i
COINBASE_MATURITY: Final = 100
P2WPKH_DUST_SAT: Final = 294  # bcoin and Bitcoin Core: 3 x the cost of spending the output at 1 sat/vB
SEQUENCE_FINAL: Final = 0xFFFFFFFF
SEQUENCE_RBF: Final = 0xFFFFFFFD  # BIP125 signal (bcoin does not replace, but the watcher must see it)
UNDO_DEPTH: Final = 100  # blocks whose undo records are kept: the deepest reorg handled without a rescan
_SCAN_BATCH: Final = 100  # blocks fetched per round trip
_MAX_RELINK_ATTEMPTS: Final = 10
_FIRST_POLL_SECONDS: Final = 0.005
_MAX_POLL_SECONDS: Final = 0.1
_HARDENED: Final = 0x80000000
_HRP: Final = re.compile(r"[a-z0-9]{1,40}")
_P2WPKH_PREFIX: Final = b"\x00\x14"
# vsize parts of a P2WPKH spend: outpoint 36 + empty scriptSig length 1 + nSequence 4 = 41 bytes, and a
# witness of [<=72-byte signature incl. sighash byte, 33-byte key] = 1 + 1 + 72 + 1 + 33 = 108 weight units.
_INPUT_BYTES: Final = 41
_INPUT_WITNESS_WU: Final = 108
_TX_FIXED_BYTES: Final = 8  # nVersion + nLockTime
_SEGWIT_MARKER_WU: Final = 2


class WalletError(Exception):
    """The wallet cannot do what was asked (bad mnemonic or address, dust output, inconsistent chain)."""


class InsufficientFunds(WalletError):
    """The spendable coins do not cover the amount plus the fee."""


class PaymentRejected(WalletError):
    """The node did not accept the transaction into its mempool (its coins are released again)."""

    def __init__(self, payment: Payment, reason: str) -> None:
        super().__init__(f"transaction {payment.txid} was not accepted by the node: {reason}")
        self.payment = payment
        self.txid = payment.txid
        self.reason = reason


class WalletRpc(Protocol):
    """The node calls the wallet makes; :class:`gateway.chains.bitcoin_rpc.BitcoinRpc` provides them."""

    async def block_count(self) -> int: ...

    async def block_hash(self, height: int) -> str: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...

    async def send_raw_transaction(self, raw: bytes) -> str: ...

    async def mempool_entry(self, txid: str) -> dict[str, Any] | None: ...

    async def raw_transaction(self, txid: str) -> bytes: ...


class MempoolRpc(WalletRpc, Protocol):
    """What :meth:`BitcoinWallet.scan_mempool` needs besides :class:`WalletRpc`."""

    async def mempool_txids(self) -> list[str]: ...


@dataclass(frozen=True, slots=True, order=True)
class Outpoint:
    txid: str  # display (big-endian) hex, as RPCs and explorers show it
    vout: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class Utxo:
    """A coin paying one of the wallet's scripts.

    ``height`` is None for an output of one of our own payments not yet seen in a block; ``spent_by`` is the
    txid of our own payment spending the coin that no block has confirmed yet (the coin is then not
    available for new payments).
    """

    outpoint: Outpoint
    amount_sat: int
    script_pubkey: bytes
    chain: int
    index: int
    height: int | None
    coinbase: bool = False
    spent_by: str | None = None

    def confirmations(self, tip_height: int) -> int:
        return 0 if self.height is None else max(0, tip_height - self.height + 1)

    def is_mature(self, tip_height: int) -> bool:
        """A coinbase may be spent in a block at ``height + 100`` or later, i.e. with 100 confirmations."""
        return not self.coinbase or self.confirmations(tip_height) >= COINBASE_MATURITY


@dataclass(frozen=True, slots=True)
class Payment:
    """A signed transaction built by the wallet; ``own_outputs`` are its outputs paying the wallet."""

    raw: bytes
    txid: str
    inputs: tuple[Utxo, ...]
    outputs: tuple[tuple[bytes, int], ...]  # (scriptPubKey, satoshi) in transaction order
    fee_sat: int
    vsize: int  # the estimate the fee was computed from (an upper bound of the signed size)
    change: Utxo | None
    own_outputs: tuple[Utxo, ...]
    rbf: bool

    @property
    def spent_outpoints(self) -> tuple[Outpoint, ...]:
        return tuple(coin.outpoint for coin in self.inputs)

    @property
    def amount_sat(self) -> int:
        """What the payment sends, change excluded."""
        change = self.change.amount_sat if self.change is not None else 0
        return sum(value for _, value in self.outputs) - change


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A transaction that pays or spends the wallet, as the chain (or the mempool) shows it.

    ``received_sat`` is what its outputs pay the wallet (change included), ``sent_sat`` the value of the
    wallet's coins it spends, ``external_sat`` what its outputs pay others. ``fee_sat`` is known when every
    input is the wallet's own coin. ``height`` and ``block_hash`` are None while it is in the mempool.
    """

    txid: str
    height: int | None
    block_hash: str | None
    received_sat: int
    sent_sat: int
    external_sat: int
    fee_sat: int | None
    coinbase: bool = False

    @property
    def direction(self) -> str:
        """``in`` (only receives), ``out`` (spends and pays others) or ``self`` (spends back to itself)."""
        if self.sent_sat == 0:
            return "in"
        return "out" if self.external_sat else "self"

    @property
    def net_sat(self) -> int:
        """What the transaction changed the wallet's balance by (negative when it paid out)."""
        return self.received_sat - self.sent_sat

    def confirmations(self, tip_height: int) -> int:
        return 0 if self.height is None else max(0, tip_height - self.height + 1)


@dataclass(frozen=True, slots=True)
class ScanReport:
    connected: int  # blocks applied
    disconnected: int  # blocks undone because they left the main chain
    tip_height: int
    tip_hash: str | None
    rescanned: bool = False  # the reorg was deeper than the undo records: the wallet rescanned from birth


@dataclass(slots=True)
class _AppliedBlock:
    height: int
    hash: str
    undo: list[Callable[[], None]] = field(default_factory=list)  # run in reverse order to undo the block


_Undo = list[Callable[[], None]] | None  # where a state change records how to revert it (None: nowhere)


def estimate_vsize(inputs: int, output_scripts: Sequence[bytes]) -> int:
    """Virtual size of a transaction spending ``inputs`` P2WPKH coins to ``output_scripts``.

    Counts the largest low-S signature (72 bytes with its sighash byte), so the result is never below the
    signed transaction's vsize and the fee rate actually paid is at least the one asked for.
    """
    if inputs < 1 or not output_scripts:
        raise ValueError("a transaction needs at least one input and one output")
    outputs_bytes = sum(8 + _varint_size(len(script)) + len(script) for script in output_scripts)
    base = (
        _TX_FIXED_BYTES
        + _varint_size(inputs)
        + inputs * _INPUT_BYTES
        + _varint_size(len(output_scripts))
        + outputs_bytes
    )
    weight = 4 * base + _SEGWIT_MARKER_WU + inputs * _INPUT_WITNESS_WU
    return (weight + 3) // 4


def dust_threshold(script_pubkey: bytes) -> int:
    """The smallest output nodes relay (bcoin's and Core's rule: 3 x the cost of creating and spending it
    at 1 sat/vB): 294 sat for P2WPKH, 330 for P2WSH and P2TR, 0 for OP_RETURN."""
    if script_pubkey[:1] == b"\x6a":
        return 0
    size = 8 + _varint_size(len(script_pubkey)) + len(script_pubkey)
    size += 32 + 4 + 1 + (107 // 4 if _is_witness_program(script_pubkey) else 107) + 4
    return 3 * size


def _is_witness_program(script: bytes) -> bool:
    return (
        4 <= len(script) <= 42
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
    )


def _varint_size(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9


def _hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


class BitcoinWallet:
    """A BIP84 account with its own UTXO set; one asyncio task at a time should use it."""

    def __init__(
        self, account_key: HDKey, hrp: str, *, gap: int = 20, acceptance_wait_seconds: float = 1.0
    ) -> None:
        if not account_key.is_private:
            raise WalletError("the wallet needs the account's private key to sign")
        if gap < 1:
            raise WalletError(f"gap must be at least 1, got {gap}")
        if not _HRP.fullmatch(hrp):
            raise WalletError(f"{hrp!r} is not a bech32 prefix such as 'rb' (bcoin regtest), 'tb' or 'bc'")
        self.hrp = hrp
        self.gap = gap
        # how long a transaction may take to show up in bcoin's mempool before it counts as rejected
        self.acceptance_wait_seconds = acceptance_wait_seconds
        self._chains = (account_key.child(EXTERNAL), account_key.child(CHANGE))
        self._keys: dict[tuple[int, int], tuple[HDKey, bytes]] = {}  # (private key, compressed public key)
        self._scripts: dict[bytes, tuple[int, int]] = {}
        self._derived = [0, 0]
        self._next_change = 0
        self._utxos: dict[Outpoint, Utxo] = {}
        self._pending: dict[str, tuple[Outpoint, ...]] = {}  # our unconfirmed payments → the coins they spend
        self._applied: deque[_AppliedBlock] = deque(maxlen=UNDO_DEPTH)
        self._history: list[HistoryEntry] = []  # main-chain transactions touching the wallet, oldest first
        self._birth: int | None = None
        self._tip_height = -1
        for chain in (EXTERNAL, CHANGE):
            self._ensure_derived(chain, gap)

    @classmethod
    def from_mnemonic(
        cls,
        mnemonic: str,
        hrp: str,
        *,
        account: int = 0,
        coin_type: int = 1,
        gap: int = 20,
        passphrase: str = "",
        acceptance_wait_seconds: float = 1.0,
    ) -> BitcoinWallet:
        """The wallet of ``m/84'/coin_type'/account'`` for a BIP39 mnemonic (checksum verified)."""
        words = " ".join(mnemonic.split())
        if not bip39.mnemonic_is_valid(words):
            raise WalletError("not a valid BIP39 mnemonic (unknown word or bad checksum)")
        for name, value in (("account", account), ("coin_type", coin_type)):
            if not 0 <= value < _HARDENED:
                raise WalletError(f"{name} {value} is out of range (0 to 2**31 - 1)")
        root = HDKey.from_seed(bip39.mnemonic_to_seed(words, passphrase))
        key = root.derive([84 + _HARDENED, coin_type + _HARDENED, account + _HARDENED])
        return cls(key, hrp, gap=gap, acceptance_wait_seconds=acceptance_wait_seconds)

    # -- keys and scripts ----------------------------------------------------------------------------

    def _ensure_derived(self, chain: int, count: int) -> None:
        while self._derived[chain] < count:
            index = self._derived[chain]
            key = self._chains[chain].child(index)
            public = bytes(key.sec())
            self._keys[(chain, index)] = (key, public)
            self._scripts[_P2WPKH_PREFIX + _hash160(public)] = (chain, index)
            self._derived[chain] = index + 1

    def _note_used(self, chain: int, index: int) -> None:
        """Keep ``gap`` unused scripts watched beyond every used one (BIP44's gap limit)."""
        self._ensure_derived(chain, index + 1 + self.gap)
        if chain == CHANGE and index >= self._next_change:
            self._next_change = index + 1

    def _key(self, chain: int, index: int) -> tuple[HDKey, bytes]:
        if chain not in (EXTERNAL, CHANGE):
            raise WalletError(f"chain {chain} is neither receive (0) nor change (1)")
        if not 0 <= index < _HARDENED:
            raise WalletError(f"address index {index} is out of range (0 to 2**31 - 1)")
        self._ensure_derived(chain, index + 1)
        return self._keys[(chain, index)]

    def public_key(self, index: int, *, chain: int = EXTERNAL) -> bytes:
        """The compressed public key of ``…/chain/index``."""
        return self._key(chain, index)[1]

    def script_pubkey(self, index: int, *, chain: int = EXTERNAL) -> bytes:
        """``OP_0 <hash160(pubkey)>`` of ``…/chain/index``; asking for it also starts watching it."""
        return _P2WPKH_PREFIX + _hash160(self.public_key(index, chain=chain))

    def address(self, index: int, *, chain: int = EXTERNAL) -> str:
        """The bech32 address of ``…/chain/index`` (``rb1…`` on bcoin regtest)."""
        return str(_bech32.encode(self.hrp, 0, self.script_pubkey(index, chain=chain)[2:]))

    def next_change_address(self) -> str:
        """A change address never handed out before (it is watched from now on)."""
        return self.address(self._take_change_index(), chain=CHANGE)

    def _take_change_index(self) -> int:
        index = self._next_change
        self._note_used(CHANGE, index)
        return index

    @property
    def scripts(self) -> Mapping[bytes, tuple[int, int]]:
        """Every watched scriptPubKey → (chain, index)."""
        return self._scripts

    def _script_for(self, address_or_script: str | bytes) -> bytes:
        if isinstance(address_or_script, bytes | bytearray):
            return bytes(address_or_script)
        try:
            return btc_script_for_address(address_or_script, self.hrp)
        except ValueError as exc:
            raise WalletError(f"cannot pay {address_or_script!r}: {exc}") from None

    # -- the UTXO set --------------------------------------------------------------------------------

    @property
    def tip_height(self) -> int:
        """Height of the last block scanned (-1 before the first scan)."""
        return self._tip_height

    @property
    def tip_hash(self) -> str | None:
        return self._applied[-1].hash if self._applied else None

    def utxos(self) -> list[Utxo]:
        """Every coin the wallet holds, including those its own unconfirmed payments spend."""
        return sorted(self._utxos.values(), key=lambda coin: coin.outpoint)

    def utxo(self, outpoint: Outpoint) -> Utxo | None:
        return self._utxos.get(outpoint)

    def credit(self, outpoint: Outpoint, amount_sat: int, script_pubkey: bytes, height: int | None) -> Utxo:
        """Add a coin the caller knows pays this wallet (a funding it made itself), without a chain scan.

        For callers that fund many wallets at once (the city simulation): scanning the chain once per
        wallet would cost a block walk each. The script must be one of the wallet's.
        """
        owner = self._scripts.get(script_pubkey)
        if owner is None:
            raise WalletError("that coin does not pay one of this wallet's scripts")
        _check_amount(amount_sat)
        coin = Utxo(outpoint, amount_sat, script_pubkey, owner[0], owner[1], height)
        self._utxos[outpoint] = coin
        self._note_used(*owner)
        return coin

    def spendable(self, *, include_unconfirmed: bool = True) -> list[Utxo]:
        """Coins a new payment may use: not spent by us, mature, and confirmed unless allowed otherwise."""
        tip = self._tip_height
        return [
            coin
            for coin in self._utxos.values()
            if coin.spent_by is None
            and coin.is_mature(tip)
            and (include_unconfirmed or coin.height is not None)
        ]

    def balance(self) -> int:
        """Confirmed, mature satoshi not spent by any of our own payments."""
        return sum(coin.amount_sat for coin in self.spendable(include_unconfirmed=False))

    def history(self) -> list[HistoryEntry]:
        """The main-chain transactions that paid or spent the wallet since its birth height, oldest first."""
        return list(self._history)

    def _pop_history(self) -> None:
        self._history.pop()

    def _set(self, outpoint: Outpoint, coin: Utxo | None, undo: _Undo) -> None:
        previous = self._utxos.get(outpoint)
        if undo is not None:
            undo.append(lambda: self._put(outpoint, previous))
        self._put(outpoint, coin)

    def _put(self, outpoint: Outpoint, coin: Utxo | None) -> None:
        if coin is None:
            self._utxos.pop(outpoint, None)
        else:
            self._utxos[outpoint] = coin

    def _drop_pending(self, txid: str, undo: _Undo) -> None:
        inputs = self._pending.pop(txid, None)
        if inputs is not None and undo is not None:
            undo.append(lambda: self._pending.__setitem__(txid, inputs))

    # -- scanning ------------------------------------------------------------------------------------

    async def scan(self, rpc: WalletRpc, from_height: int | None = None) -> ScanReport:
        """Bring the UTXO set up to the node's tip, undoing blocks that left the main chain first.

        ``from_height`` is the wallet's birth height, used by the first scan only (default 0): blocks below
        it are never read.
        """
        if self._birth is None:
            self._birth = from_height or 0
            self._tip_height = self._birth - 1
        connected = disconnected = 0
        rescanned = False
        relinks = 0
        while True:
            undone, reset = await self._rewind(rpc)
            disconnected += undone
            rescanned = rescanned or reset
            if undone:
                self._forget_unconfirmable()
            tip = await rpc.block_count()
            start = self._tip_height + 1
            if start > tip:
                break
            heights = list(range(start, min(tip, start + _SCAN_BATCH - 1) + 1))
            hashes = _prefix_of_results(await rpc.batch([("getblockhash", [h]) for h in heights]))
            raws = _prefix_of_results(await rpc.batch([("getblock", [h, False]) for h in hashes]))
            linked = len(raws) == len(heights)
            for height, block_hash, raw in zip(heights, hashes, raws, strict=False):
                block = _parse_hex_block(raw)
                if b2lx(block.GetHash()) != block_hash or (
                    self._applied and b2lx(block.hashPrevBlock) != self._applied[-1].hash
                ):
                    linked = False  # the chain changed while we read it: check the checkpoint again
                    break
                self._connect(height, str(block_hash), block)
                connected += 1
            if not linked:
                relinks += 1
                if relinks > _MAX_RELINK_ATTEMPTS:
                    raise WalletError(
                        f"the node's chain keeps changing under the scan (at height {self._tip_height + 1})"
                    )
        return ScanReport(connected, disconnected, self._tip_height, self.tip_hash, rescanned)

    async def scan_mempool(self, rpc: MempoolRpc) -> list[HistoryEntry]:
        """The node's unconfirmed transactions that pay or spend the wallet; call it after :meth:`scan`.

        A transaction spending one of the wallet's coins is adopted like a payment built here: its coins
        are marked spent, its outputs to the wallet become unconfirmed coins (so they may be spent next and
        their change index is not handed out again), and the next :meth:`scan` confirms or forgets it. A
        transaction that only pays the wallet is reported, but its outputs are not added: coins of others
        are spent only once a block confirms them. Transactions that leave the mempool between the two
        calls made here are skipped.
        """
        txids = await rpc.mempool_txids()
        answers = await rpc.batch([("getrawtransaction", [txid, False]) for txid in txids])
        waiting: dict[str, CTransaction] = {}
        for txid, raw in zip(txids, answers, strict=True):
            if isinstance(raw, Exception):
                continue  # mined or evicted since getrawmempool
            try:
                waiting[txid] = parse_transaction(bytes.fromhex(str(raw)))
            except (ValueError, BlockParseError) as exc:
                raise WalletError(f"getrawtransaction {txid} answered something unreadable: {exc}") from None
        found: list[HistoryEntry] = []
        progress = True
        while progress:  # parents may come after their children in getrawmempool's order
            progress = False
            for txid, tx in list(waiting.items()):
                spends = [
                    coin
                    for txin in tx.vin
                    if (coin := self._utxos.get(Outpoint(b2lx(txin.prevout.hash), int(txin.prevout.n))))
                    is not None
                ]
                if not spends:
                    continue
                del waiting[txid]
                progress = True
                found.append(self._adopt(tx, txid, spends))
        for txid, tx in waiting.items():
            received = sum(int(out.nValue) for out in tx.vout if bytes(out.scriptPubKey) in self._scripts)
            if received:
                found.append(_history_entry(tx, txid, None, None, received, 0, 0, False))
        return found

    def _adopt(self, tx: CTransaction, txid: str, spends: Sequence[Utxo]) -> HistoryEntry:
        """Treat an unconfirmed transaction spending ``spends`` as one of our pending payments."""
        if txid not in self._pending:
            self._pending[txid] = tuple(coin.outpoint for coin in spends)
            for coin in spends:
                if coin.spent_by is None:
                    self._set(coin.outpoint, replace(coin, spent_by=txid), None)
            outputs = [(bytes(out.scriptPubKey), int(out.nValue)) for out in tx.vout]
            for coin in self._own_outputs(txid, outputs):
                if coin.outpoint not in self._utxos:
                    self._set(coin.outpoint, coin, None)
                self._note_used(coin.chain, coin.index)
        received = sum(int(out.nValue) for out in tx.vout if bytes(out.scriptPubKey) in self._scripts)
        sent = sum(coin.amount_sat for coin in spends)
        return _history_entry(tx, txid, None, None, received, sent, len(spends), False)

    async def _rewind(self, rpc: WalletRpc) -> tuple[int, bool]:
        """Undo applied blocks no longer on the main chain: (blocks undone, whether the wallet was reset)."""
        undone = 0
        while self._applied:
            last = self._applied[-1]
            try:
                current: str | None = await rpc.block_hash(last.height)
            except RpcError:  # the node's chain is now shorter than our checkpoint
                current = None
            if current == last.hash:
                return undone, False
            for revert in reversed(last.undo):
                revert()
            self._applied.pop()
            self._tip_height = last.height - 1
            undone += 1
        if not undone:
            return 0, False
        # Every block we kept an undo record for is stale, so older ones may be too: start again from birth.
        # Coins of our own unconfirmed payments are forgotten with the rest; a later scan finds what
        # the chain confirmed.
        assert self._birth is not None
        self._utxos.clear()
        self._pending.clear()
        self._history.clear()
        self._tip_height = self._birth - 1
        return undone, True

    def _connect(self, height: int, block_hash: str, block: CBlock) -> None:
        """Apply one block: remove coins it spends, add outputs paying our scripts, resolve conflicts."""
        self._widen_window_for(block)
        record = _AppliedBlock(height, block_hash)
        undo = record.undo
        for position, tx in enumerate(block.vtx):
            txid: str | None = None
            sent = received = own_inputs = 0
            if position > 0:  # a coinbase's single input spends nothing
                for txin in tx.vin:
                    outpoint = Outpoint(b2lx(txin.prevout.hash), int(txin.prevout.n))
                    coin = self._utxos.get(outpoint)
                    if coin is None:
                        continue
                    txid = txid or b2lx(tx.GetTxid())
                    sent += coin.amount_sat
                    own_inputs += 1
                    self._set(outpoint, None, undo)
                    if coin.spent_by is not None and coin.spent_by != txid:
                        self._forget(coin.spent_by, undo)  # a double spend won: ours can never confirm
                if txid is not None and txid in self._pending:
                    self._drop_pending(txid, undo)  # our payment confirmed
            for vout, output in enumerate(tx.vout):
                owner = self._scripts.get(bytes(output.scriptPubKey))
                if owner is None:
                    continue
                received += int(output.nValue)
                txid = txid or b2lx(tx.GetTxid())
                outpoint = Outpoint(txid, vout)
                known = self._utxos.get(outpoint)
                coin = Utxo(
                    outpoint,
                    int(output.nValue),
                    bytes(output.scriptPubKey),
                    owner[0],
                    owner[1],
                    height,
                    coinbase=position == 0,
                    # our change may already be spent by a later payment of ours: keep that mark
                    spent_by=known.spent_by if known is not None else None,
                )
                self._set(outpoint, coin, undo)
                self._note_used(*owner)
            if txid is not None:
                entry = _history_entry(
                    tx, txid, height, block_hash, received, sent, own_inputs, position == 0
                )
                self._history.append(entry)
                undo.append(self._pop_history)
        self._applied.append(record)
        self._tip_height = height

    def _widen_window_for(self, block: CBlock) -> None:
        """Derive further until no output of ``block`` pays a script within ``gap`` of the window's end.

        One block can use many indexes in any order (a burst of payments, each with its own change), so a
        single in-order pass would miss an output whose index lies beyond the window when it is reached.
        """
        while True:
            derived = tuple(self._derived)
            for tx in block.vtx:
                for output in tx.vout:
                    owner = self._scripts.get(bytes(output.scriptPubKey))
                    if owner is not None:
                        self._note_used(*owner)
            if tuple(self._derived) == derived:
                return

    def _forget(self, txid: str, undo: _Undo) -> None:
        """Our payment ``txid`` can never confirm: release the coins it reserved and forget its unconfirmed
        outputs, and with them any payment of ours that spends one of those outputs."""
        losers = [txid]
        while losers:
            loser = losers.pop()
            self._drop_pending(loser, undo)
            for outpoint, coin in list(self._utxos.items()):
                if coin.spent_by == loser:
                    self._set(outpoint, replace(coin, spent_by=None), undo)
                elif coin.height is None and outpoint.txid == loser:
                    self._set(outpoint, None, undo)
                    if coin.spent_by is not None:
                        losers.append(coin.spent_by)

    def _forget_unconfirmable(self) -> None:
        """After a reorg, forget pending payments some of whose coins no longer exist (the block that
        created them left the main chain and the new branch did not recreate them)."""
        for txid, inputs in list(self._pending.items()):
            if txid not in self._pending:
                continue  # forgotten with a parent meanwhile
            coins = [self._utxos.get(outpoint) for outpoint in inputs]
            if not all(coin is not None and coin.spent_by == txid for coin in coins):
                self._forget(txid, None)

    # -- building transactions -----------------------------------------------------------------------

    def build_payment(
        self,
        address_or_script: str | bytes,
        amount_sat: int,
        *,
        fee_rate_sat_vb: int = 2,
        rbf: bool = False,
        exclude: Iterable[Outpoint] = (),
    ) -> Payment:
        """Sign a payment of ``amount_sat`` and reserve its coins locally (see :meth:`build_transaction`)."""
        return self.build_transaction(
            [(self._script_for(address_or_script), amount_sat)],
            fee_rate_sat_vb=fee_rate_sat_vb,
            rbf=rbf,
            exclude=exclude,
        )

    def build_transaction(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        fee_rate_sat_vb: int = 2,
        rbf: bool = False,
        exclude: Iterable[Outpoint] = (),
    ) -> Payment:
        """Select coins, add change unless it would be dust, sign (BIP143, SIGHASH_ALL) and reserve.

        Coin selection: the single smallest coin that covers amount plus fee; otherwise the largest coins
        first until they do. Confirmed coins are tried before our own unconfirmed change. Change below the
        dust limit (294 sat) is left to the fee. The chosen coins are marked spent by this payment and its
        outputs to the wallet (change included) become unconfirmed coins, so the next payment does not reuse
        them; :meth:`release` undoes this if the payment is never broadcast.
        """
        if not outputs:
            raise WalletError("a payment needs at least one output")
        _check_fee_rate(fee_rate_sat_vb)
        for script, value in outputs:
            _check_amount(value)
            if value < dust_threshold(script):
                raise WalletError(
                    f"{value} sat is below the dust limit of {dust_threshold(script)} sat for this output; "
                    "nodes would not relay it"
                )
        excluded = set(exclude)
        amount = sum(value for _, value in outputs)
        scripts = [script for script, _ in outputs]
        change_index = self._next_change
        change_script = self.script_pubkey(change_index, chain=CHANGE)
        plan = None
        for include_unconfirmed in (False, True):
            coins = [
                c
                for c in self.spendable(include_unconfirmed=include_unconfirmed)
                if c.outpoint not in excluded
            ]
            plan = _select(coins, amount, scripts, change_script, fee_rate_sat_vb)
            if plan is not None:
                break
        if plan is None:
            available = sum(c.amount_sat for c in self.spendable() if c.outpoint not in excluded)
            raise InsufficientFunds(
                f"{amount} sat plus fee at {fee_rate_sat_vb} sat/vB is more than the {available} sat "
                "this wallet can spend now"
            )
        inputs, fee, change_value = plan
        tx_outputs = list(outputs)
        if change_value:
            self._take_change_index()
            tx_outputs.append((change_script, change_value))
        sequence = SEQUENCE_RBF if rbf else SEQUENCE_FINAL
        raw, txid = self._sign(inputs, tx_outputs, sequence)
        own = self._own_outputs(txid, tx_outputs)
        change = own[-1] if change_value else None
        payment = Payment(
            raw,
            txid,
            tuple(inputs),
            tuple(tx_outputs),
            fee,
            estimate_vsize(len(inputs), [script for script, _ in tx_outputs]),
            change,
            own,
            rbf,
        )
        self._reserve(payment)
        return payment

    def build_conflicting(self, payment: Payment, *, fee_rate_sat_vb: int = 5) -> Payment:
        """A double spend of ``payment``: the same coins, everything minus the fee to a fresh change address.

        Nothing is reserved or added locally: which of the two transactions wins is for the chain to say,
        and the next :meth:`scan` follows it either way.
        """
        _check_fee_rate(fee_rate_sat_vb)
        total = sum(coin.amount_sat for coin in payment.inputs)
        script = self.script_pubkey(self._take_change_index(), chain=CHANGE)
        vsize = estimate_vsize(len(payment.inputs), [script])
        fee = vsize * fee_rate_sat_vb
        value = total - fee
        if value < dust_threshold(script):
            raise InsufficientFunds(f"the coins of {payment.txid} ({total} sat) do not cover a {fee} sat fee")
        outputs = [(script, value)]
        raw, txid = self._sign(list(payment.inputs), outputs, SEQUENCE_FINAL)
        own = self._own_outputs(txid, outputs)
        return Payment(raw, txid, payment.inputs, tuple(outputs), fee, vsize, own[0], own, False)

    def _own_outputs(self, txid: str, outputs: Sequence[tuple[bytes, int]]) -> tuple[Utxo, ...]:
        own = []
        for vout, (script, value) in enumerate(outputs):
            owner = self._scripts.get(script)
            if owner is not None:
                own.append(Utxo(Outpoint(txid, vout), value, script, owner[0], owner[1], None))
        return tuple(own)

    def _sign(
        self, inputs: Sequence[Utxo], outputs: Sequence[tuple[bytes, int]], sequence: int
    ) -> tuple[bytes, str]:
        tx = Transaction(
            version=2,
            vin=[
                TransactionInput(bytes.fromhex(c.outpoint.txid), c.outpoint.vout, sequence=sequence)
                for c in inputs
            ],
            vout=[TransactionOutput(value, Script(script)) for script, value in outputs],
            locktime=0,
        )
        for position, coin in enumerate(inputs):
            key, public = self._key(coin.chain, coin.index)
            # BIP143: the scriptCode of a P2WPKH spend is the P2PKH script of the same key hash
            script_code = Script(b"\x76\xa9\x14" + coin.script_pubkey[2:] + b"\x88\xac")
            digest = tx.sighash_segwit(position, script_code, coin.amount_sat, SIGHASH.ALL)
            signature = key.sign(digest).serialize() + bytes([SIGHASH.ALL])
            tx.vin[position].witness = Witness([signature, public])
        return bytes(tx.serialize()), bytes(tx.txid()).hex()

    def _reserve(self, payment: Payment) -> None:
        # local decisions, not undone by reorgs (the coins a reorg removes are forgotten by the scan)
        self._pending[payment.txid] = payment.spent_outpoints
        for coin in payment.inputs:
            self._set(coin.outpoint, replace(coin, spent_by=payment.txid), None)
        for coin in payment.own_outputs:
            self._set(coin.outpoint, coin, None)
            self._note_used(coin.chain, coin.index)

    def pending(self) -> list[str]:
        """Txids of our payments that no block has confirmed yet (built or broadcast, not released)."""
        return list(self._pending)

    def release(self, payment: Payment) -> None:
        """Forget a payment that will never be broadcast or was refused: its coins become spendable again
        and its still unconfirmed outputs disappear (and so does any payment of ours spending them)."""
        self._forget(payment.txid, None)

    # -- talking to the node -------------------------------------------------------------------------

    async def broadcast(self, rpc: WalletRpc, payment: Payment) -> Payment:
        """Send ``payment`` and make sure the node took it; else release it and raise PaymentRejected.

        If the node cannot be reached (:class:`gateway.chains.bitcoin_rpc.RpcUnavailable`), the payment stays reserved: it may have been
        relayed, and spending its coins again could double-spend ourselves. Release it explicitly if not.
        """
        try:
            answered = await rpc.send_raw_transaction(payment.raw)
        except RpcError as exc:
            self.release(payment)
            raise PaymentRejected(payment, exc.message) from exc
        if answered != payment.txid:
            self.release(payment)
            raise PaymentRejected(payment, f"sendrawtransaction answered another txid, {answered}")
        if not await self._accepted(rpc, payment.txid):
            self.release(payment)
            raise PaymentRejected(
                payment,
                f"not in the mempool {self.acceptance_wait_seconds:g} s after sendrawtransaction (bcoin "
                "answers the txid even when it rejects a transaction: double spend, missing or immature "
                "inputs, fee too low; the reason is in the node's log)",
            )
        return payment

    async def _accepted(self, rpc: WalletRpc, txid: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.acceptance_wait_seconds
        delay = _FIRST_POLL_SECONDS
        while await rpc.mempool_entry(txid) is None:
            if loop.time() >= deadline:
                return await _known_to_node(rpc, txid)  # mined already (or never accepted)
            await asyncio.sleep(delay)
            delay = min(2 * delay, _MAX_POLL_SECONDS)
        return True

    async def pay(
        self,
        rpc: WalletRpc,
        address_or_script: str | bytes,
        amount_sat: int,
        *,
        fee_rate_sat_vb: int = 2,
        rbf: bool = False,
        exclude: Iterable[Outpoint] = (),
    ) -> Payment:
        """Build, broadcast and confirm acceptance of a payment; raises PaymentRejected if refused."""
        payment = self.build_payment(
            address_or_script, amount_sat, fee_rate_sat_vb=fee_rate_sat_vb, rbf=rbf, exclude=exclude
        )
        return await self.broadcast(rpc, payment)

    async def pay_uri(
        self, rpc: WalletRpc, bip21_uri: str, *, fee_rate_sat_vb: int = 2, rbf: bool = False
    ) -> Payment:
        """Pay a ``bitcoin:`` request (parsed by :func:`gateway.payment_uri.parse_bip21`); it must name an
        amount, as the gateway's checkout requests do."""
        request = parse_bip21(bip21_uri)
        if request.amount_sat is None:
            raise WalletError("the payment request has no amount; use pay() with the amount to send")
        return await self.pay(
            rpc, request.address, request.amount_sat, fee_rate_sat_vb=fee_rate_sat_vb, rbf=rbf
        )

    async def fan_out(
        self, rpc: WalletRpc, outputs: int, amount_sat: int, *, fee_rate_sat_vb: int = 2
    ) -> Payment:
        """Split coins into ``outputs`` coins of ``amount_sat`` on fresh change addresses, in one transaction.

        Once mined they are independent confirmed coins, so a burst of payments does not chain unconfirmed
        transactions (bcoin refuses more than 25 unconfirmed ancestors).
        """
        if outputs < 1:
            raise WalletError(f"fan_out needs at least one output, got {outputs}")
        targets = [
            (self.script_pubkey(self._take_change_index(), chain=CHANGE), amount_sat) for _ in range(outputs)
        ]
        payment = self.build_transaction(targets, fee_rate_sat_vb=fee_rate_sat_vb)
        return await self.broadcast(rpc, payment)


def _select(
    coins: Sequence[Utxo], amount: int, scripts: Sequence[bytes], change_script: bytes, fee_rate: int
) -> tuple[list[Utxo], int, int] | None:
    """(inputs, fee, change value or 0), or None if ``coins`` do not cover ``amount`` plus the fee."""

    def fee_without_change(n: int) -> int:
        return estimate_vsize(n, scripts) * fee_rate

    chosen: list[Utxo] | None = None
    by_size = sorted(coins, key=lambda c: (c.amount_sat, c.outpoint))
    single = amount + fee_without_change(1)
    for coin in by_size:
        if coin.amount_sat >= single:
            chosen = [coin]
            break
    if chosen is None:
        total = 0
        picked: list[Utxo] = []
        for coin in reversed(by_size):
            picked.append(coin)
            total += coin.amount_sat
            if total >= amount + fee_without_change(len(picked)):
                chosen = picked
                break
    if chosen is None:
        return None
    total = sum(c.amount_sat for c in chosen)
    fee_with_change = estimate_vsize(len(chosen), [*scripts, change_script]) * fee_rate
    change = total - amount - fee_with_change
    if change >= dust_threshold(change_script):
        return chosen, fee_with_change, change
    return chosen, total - amount, 0  # change would be dust (or negative): it goes to the fee


def _check_fee_rate(rate: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise WalletError(f"fee rate must be a whole number of sat/vB, not {rate!r}")


def _check_amount(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WalletError(f"an amount must be a positive whole number of satoshi, not {value!r}")


def _history_entry(
    tx: CTransaction,
    txid: str,
    height: int | None,
    block_hash: str | None,
    received: int,
    sent: int,
    own_inputs: int,
    coinbase: bool,
) -> HistoryEntry:
    total_out = sum(int(out.nValue) for out in tx.vout)
    fee = sent - total_out if own_inputs and own_inputs == len(tx.vin) else None
    return HistoryEntry(txid, height, block_hash, received, sent, total_out - received, fee, coinbase)


def _prefix_of_results(results: Sequence[Any]) -> list[Any]:
    """The answers of a batch up to its first error (a height past the tip, a block pruned meanwhile)."""
    prefix = []
    for result in results:
        if isinstance(result, Exception):
            break
        prefix.append(result)
    return prefix


def _parse_hex_block(raw: Any) -> CBlock:
    try:
        data = bytes.fromhex(str(raw))
    except ValueError:
        raise WalletError("getblock answered something that is not hex") from None
    try:
        return parse_block(data)
    except BlockParseError as exc:
        raise WalletError(str(exc)) from None


async def _known_to_node(rpc: WalletRpc, txid: str) -> bool:
    """Whether the node knows ``txid`` although it is not in the mempool (mined meanwhile)."""
    try:
        raw = await rpc.raw_transaction(txid)
    except RpcError:
        return False
    return bool(b2lx(CTransaction.deserialize(raw).GetTxid()) == txid)
