"""A resident's Ethereum wallet: BIP44 keys, EIP-681 payments in ether and ERC-20 tokens, local signing.

The city simulation and the end-to-end tests need payers that behave like real wallets against a real node
(anvil, or eth-tester in process): fees that follow the base fee, nonces that stay consecutive when many
payments leave one wallet at once, transactions the node refuses, transfers that revert, and same-nonce
replacements for reorg and double-spend scenarios. The node only relays and mines; keys never leave this
process (transactions are signed locally and sent with ``eth_sendRawTransaction``).

Design choices, and why:

- Keys: BIP39 mnemonic → BIP32 ``m/44'/60'/account'/0/index`` with embit (the same derivation MetaMask and
  anvil use, so anvil's test mnemonic gives anvil's funded accounts), or a raw 32-byte private key.
- Chain: a payment request names its chain id and the wallet compares it with the node's ``eth_chainId``
  before it signs anything, so a request for one network is never paid on another. EIP-681 requests
  without a chain id mean mainnet (``chain_id=1``) and are refused the same way unless the node is mainnet.
- Fees (EIP-1559, type-2 transactions only): ``maxPriorityFeePerGas`` from ``eth_maxPriorityFeePerGas``
  (1 gwei if the node does not answer it) and ``maxFeePerGas = 2 × baseFee(latest) + priority``, which
  stays valid through six consecutive full blocks (the base fee rises by at most 12.5 % a block).
- Gas: ``eth_estimateGas`` for every transaction; a contract call (anything above a plain 21,000-gas
  transfer) gets 20 % headroom because the state it was estimated on may change before it is mined.
  Unused gas is refunded, so the headroom only raises the balance the node requires up front.
- Balances are checked before signing: ether for ``value + gas × maxFeePerGas`` (exactly what a node
  demands before it accepts the transaction), tokens with ``balanceOf``. The node's own checks still
  apply and a refusal raises :class:`PaymentRejected`.
- Nonces: one :class:`asyncio.Lock` per wallet and a local next-nonce counter initialised from
  ``eth_getTransactionCount(address, "pending")``. Nonce assignment, signing and ``eth_sendRawTransaction``
  happen under the lock, so concurrent payments reach the node in nonce order; waiting for the receipt
  happens outside it. A failed send (refused, or the node unreachable) makes the next payment re-read the
  counter from the node, so one refusal cannot leave a gap that blocks every later payment.
- ``build_*`` methods sign without sending (for reorg tests that feed raw transactions to ``anvil_reorg``
  and for same-nonce replacements); without an explicit ``nonce`` they reserve the next one, so send what
  you build, in order, or call :meth:`EthereumWallet.resync_nonce` to give unsent reservations back.
- Amounts are integer wei and integer token base units throughout; no float is ever involved.

Errors (all raised before anything is sent, except the last three)::

    EthereumWalletError        bad key, address, amount or answer
    ├── WrongChain             the request's chain id is not the node's
    ├── InsufficientFunds      ether for value + gas, or the token, does not cover the payment
    ├── WouldRevert            eth_estimateGas failed
    ├── NodeUnavailable        the node could not be asked (a send may or may not have left)
    ├── PaymentRejected        eth_sendRawTransaction refused the signed transaction
    ├── ReceiptTimeout         sent, but not mined in time
    └── PaymentReverted        mined with status 0 (gas spent, nothing paid)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final, cast

import aiohttp
from embit import bip39
from embit.bip32 import HDKey
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils.exceptions import ValidationError as EthValidationError
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import TimeExhausted, Web3Exception, Web3RPCError
from web3.types import RPCEndpoint, TxReceipt, Wei

from gateway.addresses import AddressError, checksum_eth_address
from gateway.money import format_minor_units
from gateway.payment_uri import (
    MAX_UINT256,
    Eip681Native,
    Eip681TokenTransfer,
    parse_eip681,
)

__all__ = [
    "DEFAULT_PRIORITY_FEE_WEI",
    "DEFAULT_RECEIPT_TIMEOUT_SECONDS",
    "DEFAULT_REPLACEMENT_BUMP_PERCENT",
    "ETH_DECIMALS",
    "PLAIN_TRANSFER_GAS",
    "TRANSFER_SELECTOR",
    "TRANSFER_TOPIC",
    "EthereumWallet",
    "EthereumWalletError",
    "Fees",
    "InsufficientFunds",
    "NodeUnavailable",
    "Payment",
    "PaymentRejected",
    "PaymentReverted",
    "ReceiptTimeout",
    "SignedTx",
    "TokenTransferLog",
    "WouldRevert",
    "WrongChain",
    "encode_balance_of",
    "encode_transfer",
    "token_transfer_logs",
]

ETH_DECIMALS: Final = 18
PLAIN_TRANSFER_GAS: Final = 21_000
DEFAULT_PRIORITY_FEE_WEI: Final = 10**9  # 1 gwei, when the node does not answer eth_maxPriorityFeePerGas
DEFAULT_RECEIPT_TIMEOUT_SECONDS: Final = 120.0
TRANSFER_SELECTOR: Final = bytes.fromhex("a9059cbb")  # transfer(address,uint256)
BALANCE_OF_SELECTOR: Final = bytes.fromhex("70a08231")  # balanceOf(address)
DECIMALS_SELECTOR: Final = bytes.fromhex("313ce567")  # decimals()
SYMBOL_SELECTOR: Final = bytes.fromhex("95d89b41")  # symbol()
# keccak256("Transfer(address,address,uint256)"), topic 0 of every ERC-20 transfer log
TRANSFER_TOPIC: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# geth, anvil and most pools want at least +10 % on both fee fields to replace a pending transaction
DEFAULT_REPLACEMENT_BUMP_PERCENT: Final = 25
_CONTRACT_CALL_HEADROOM_PERCENT: Final = 20
_RECEIPT_POLL_SECONDS: Final = 0.05
_HARDENED: Final = 0x80000000
# What a node (or eth-tester in process) raises when it refuses a call; connection failures are separate.
_REFUSALS: Final = (Web3RPCError, EthValidationError)
_UNREACHABLE: Final = (aiohttp.ClientError, OSError, TimeoutError, Web3Exception)


class EthereumWalletError(Exception):
    """The wallet cannot do what was asked (bad key, address or amount, or the payment failed)."""


class WrongChain(EthereumWalletError):
    """The payment request is for another chain than the node's; nothing was signed or sent."""

    def __init__(self, requested_chain_id: int, node_chain_id: int) -> None:
        super().__init__(
            f"the payment request is for chain id {requested_chain_id} but the node is on chain id "
            f"{node_chain_id}; refusing to pay on another chain (nothing was sent)"
        )
        self.requested_chain_id = requested_chain_id
        self.node_chain_id = node_chain_id


class InsufficientFunds(EthereumWalletError):
    """The balance (ether for value and gas, or the token) does not cover the payment; nothing was sent."""


class WouldRevert(EthereumWalletError):
    """``eth_estimateGas`` failed: the node says the transaction would revert; nothing was sent."""


class NodeUnavailable(EthereumWalletError):
    """The node could not be asked (unreachable, timed out); a transaction may or may not have left."""


class PaymentRejected(EthereumWalletError):
    """The node refused the signed transaction (``eth_sendRawTransaction`` answered an error)."""

    def __init__(self, tx: SignedTx, reason: str) -> None:
        super().__init__(f"transaction {tx.tx_hash} (nonce {tx.nonce}) was refused by the node: {reason}")
        self.tx = tx
        self.tx_hash = tx.tx_hash
        self.reason = reason


class PaymentReverted(EthereumWalletError):
    """The transaction was mined with status 0: its gas is spent, but nothing was paid."""

    def __init__(self, tx_hash: str, receipt: TxReceipt) -> None:
        super().__init__(
            f"transaction {tx_hash} reverted in block {receipt['blockNumber']} (status 0): the gas is "
            "spent but nothing was paid"
        )
        self.tx_hash = tx_hash
        self.receipt = receipt


class ReceiptTimeout(EthereumWalletError):
    """The node took the transaction but no block included it in time (it may still be mined)."""

    def __init__(self, tx_hash: str, timeout_seconds: float) -> None:
        super().__init__(f"transaction {tx_hash} was sent but not mined within {timeout_seconds:g} s")
        self.tx_hash = tx_hash


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fee caps in wei per gas."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def __post_init__(self) -> None:
        _check_wei(self.max_fee_per_gas, "max_fee_per_gas", allow_zero=True)
        _check_wei(self.max_priority_fee_per_gas, "max_priority_fee_per_gas", allow_zero=True)
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise EthereumWalletError(
                f"max_priority_fee_per_gas ({self.max_priority_fee_per_gas}) exceeds max_fee_per_gas "
                f"({self.max_fee_per_gas}); nodes refuse such a transaction"
            )

    def bumped(self, percent: int) -> Fees:
        """Both caps raised by ``percent`` (at least by 1 wei), as a same-nonce replacement needs."""
        if isinstance(percent, bool) or not isinstance(percent, int) or percent < 1:
            raise EthereumWalletError(f"a fee bump must be a positive whole percentage, not {percent!r}")

        def bump(value: int) -> int:
            return max(value + 1, value * (100 + percent) // 100)

        return Fees(bump(self.max_fee_per_gas), bump(self.max_priority_fee_per_gas))


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed type-2 transaction, ready for ``eth_sendRawTransaction``, and what it pays.

    ``to`` is the transaction's recipient (the token contract for a token transfer); ``recipient`` and
    ``amount_units`` say who is paid how much: wei for ether, token base units when ``token`` is set.
    """

    raw: bytes
    tx_hash: HexStr  # 0x-prefixed
    sender: str
    chain_id: int
    nonce: int
    to: str
    value_wei: int
    data: bytes
    gas: int
    fees: Fees
    recipient: str
    amount_units: int
    token: str | None = None

    @property
    def raw_hex(self) -> str:
        """The raw transaction as 0x hex (what ``anvil_reorg`` and JSON-RPC take)."""
        return "0x" + self.raw.hex()

    @property
    def max_cost_wei(self) -> int:
        """The most ether this transaction can take from the sender: value + gas × maxFeePerGas."""
        return self.value_wei + self.gas * self.fees.max_fee_per_gas


@dataclass(frozen=True, slots=True)
class Payment:
    """A transaction the node accepted, and its receipt if the caller waited for one."""

    tx: SignedTx
    receipt: TxReceipt | None = None

    @property
    def tx_hash(self) -> HexStr:
        return self.tx.tx_hash

    @property
    def fee_wei(self) -> int | None:
        """What the sender paid for gas (gas used × effective gas price), once mined."""
        if self.receipt is None:
            return None
        return int(self.receipt["gasUsed"]) * int(self.receipt["effectiveGasPrice"])


@dataclass(frozen=True, slots=True)
class TokenTransferLog:
    """An ERC-20 ``Transfer(from, to, value)`` log of a receipt."""

    token: str
    sender: str
    recipient: str
    amount_units: int
    log_index: int


@dataclass(frozen=True, slots=True)
class _Call:
    """A transaction before its nonce: what to call, with how much gas, and what it pays."""

    to: str
    value_wei: int
    data: bytes
    gas: int
    fees: Fees
    recipient: str
    amount_units: int
    token: str | None


def _check_wei(value: object, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EthereumWalletError(f"{what} must be a whole number (int), not {type(value).__name__}")
    if not (0 if allow_zero else 1) <= value <= MAX_UINT256:
        raise EthereumWalletError(
            f"{what} must be {'non-negative' if allow_zero else 'positive'} and fit in uint256, got {value}"
        )
    return value


def _address(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise EthereumWalletError(f"{what} must be an address string, not {type(text).__name__}")
    try:
        return checksum_eth_address(text)
    except AddressError as exc:
        raise EthereumWalletError(f"{what}: {exc}") from None


def encode_transfer(to: str, amount_units: int) -> bytes:
    """ABI calldata of ERC-20 ``transfer(address to, uint256 amount)``: selector 0xa9059cbb + two words."""
    target = _address(to, "transfer recipient")
    _check_wei(amount_units, "amount_units")
    return TRANSFER_SELECTOR + bytes(12) + bytes.fromhex(target[2:]) + amount_units.to_bytes(32, "big")


def encode_balance_of(owner: str) -> bytes:
    """ABI calldata of ERC-20 ``balanceOf(address owner)``."""
    return BALANCE_OF_SELECTOR + bytes(12) + bytes.fromhex(_address(owner, "owner")[2:])


def token_transfer_logs(receipt: TxReceipt, token: str | None = None) -> list[TokenTransferLog]:
    """The ERC-20 ``Transfer`` logs of ``receipt`` (of one token contract if ``token`` is given)."""
    wanted = None if token is None else _address(token, "token")
    found = []
    for log in receipt["logs"]:
        topics = [HexBytes(topic) for topic in log["topics"]]
        if len(topics) != 3 or topics[0].to_0x_hex() != TRANSFER_TOPIC:
            continue
        contract = checksum_eth_address(str(log["address"]))
        if wanted is not None and contract != wanted:
            continue
        data = HexBytes(log["data"])
        if len(data) != 32:
            continue  # ERC-721 transfers share the signature but index the third argument
        found.append(
            TokenTransferLog(
                contract,
                checksum_eth_address("0x" + topics[1][-20:].hex()),
                checksum_eth_address("0x" + topics[2][-20:].hex()),
                int.from_bytes(data, "big"),
                int(log["logIndex"]),
            )
        )
    return found


def _typed(address: str) -> ChecksumAddress:
    """web3's type for an address already in EIP-55 form."""
    return cast(ChecksumAddress, address)


def _quantity(value: Any, what: str) -> int:
    """A JSON-RPC quantity: a 0x hex string over HTTP, already an int from eth-tester."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise NodeUnavailable(f"the node answered {what} with {value!r}, which is not a quantity")


def _reason(exc: BaseException) -> str:
    """The node's own words for a refusal (web3 puts the JSON-RPC error message in ``message``)."""
    message = getattr(exc, "message", None)
    return str(message if isinstance(message, str) and message else exc)


class EthereumWallet:
    """One externally owned account that signs locally; safe to share between concurrent tasks."""

    def __init__(
        self,
        private_key: bytes | str,
        *,
        derivation_path: str | None = None,
        receipt_timeout_seconds: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS,
    ) -> None:
        try:
            key = (
                bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
            )
            self._account: LocalAccount = Account.from_key(key)
        except (ValueError, TypeError, EthValidationError):
            # never echo the key: it is the one secret this object holds
            raise EthereumWalletError("not a valid secp256k1 private key (expected 32 bytes)") from None
        self.derivation_path = derivation_path
        self.receipt_timeout_seconds = receipt_timeout_seconds
        self._next_nonce: int | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_mnemonic(
        cls,
        mnemonic: str,
        *,
        index: int = 0,
        account: int = 0,
        passphrase: str = "",
        receipt_timeout_seconds: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS,
    ) -> EthereumWallet:
        """The key of ``m/44'/60'/account'/0/index`` for a BIP39 mnemonic (checksum verified)."""
        words = " ".join(mnemonic.split())
        if not bip39.mnemonic_is_valid(words):
            raise EthereumWalletError("not a valid BIP39 mnemonic (unknown word or bad checksum)")
        for name, value in (("account", account), ("index", index)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _HARDENED:
                raise EthereumWalletError(f"{name} {value!r} is out of range (0 to 2**31 - 1)")
        path = f"m/44'/60'/{account}'/0/{index}"
        key = HDKey.from_seed(bip39.mnemonic_to_seed(words, passphrase)).derive(path)
        return cls(bytes(key.secret), derivation_path=path, receipt_timeout_seconds=receipt_timeout_seconds)

    @classmethod
    def from_private_key(
        cls, private_key: bytes | str, *, receipt_timeout_seconds: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS
    ) -> EthereumWallet:
        """A wallet for a raw 32-byte private key (bytes, or hex with or without 0x)."""
        return cls(private_key, receipt_timeout_seconds=receipt_timeout_seconds)

    @property
    def address(self) -> ChecksumAddress:
        """The EIP-55 checksummed address (a ``str``, typed as web3 expects it)."""
        return self._account.address

    def __repr__(self) -> str:
        return f"EthereumWallet({self.address})"

    # -- reading the chain ---------------------------------------------------------------------------

    async def chain_id(self, w3: AsyncWeb3[Any]) -> int:
        """The node's ``eth_chainId``, asked every time (the node behind a URL can change)."""
        try:
            return int(await w3.eth.chain_id)
        except _REFUSALS as exc:
            raise NodeUnavailable(f"eth_chainId failed: {_reason(exc)}") from exc
        except _UNREACHABLE as exc:
            raise NodeUnavailable(f"the Ethereum node cannot be reached: {exc}") from exc

    async def balance(self, w3: AsyncWeb3[Any], address: str | None = None) -> int:
        """Ether balance in wei at the latest block (of this wallet unless ``address`` is given)."""
        owner = self.address if address is None else _address(address, "address")
        return int(await self._ask(w3.eth.get_balance(_typed(owner), "latest"), "eth_getBalance"))

    async def token_balance(self, w3: AsyncWeb3[Any], token: str, address: str | None = None) -> int:
        """``token.balanceOf(address)`` in base units, by ``eth_call`` at the latest block."""
        owner = self.address if address is None else _address(address, "address")
        contract = _address(token, "token")
        answer = await self._ask(
            w3.eth.call({"to": contract, "data": encode_balance_of(owner)}, "latest"), "balanceOf"
        )
        data = bytes(answer)
        if len(data) != 32:
            raise EthereumWalletError(
                f"{contract} answered balanceOf with {len(data)} bytes: is it an ERC-20 token contract?"
            )
        return int.from_bytes(data, "big")

    async def token_metadata(self, w3: AsyncWeb3[Any], token: str) -> tuple[str | None, int | None]:
        """The token's ``symbol()`` and ``decimals()`` (optional in ERC-20: None where it has none)."""
        contract = _address(token, "token")
        symbol: str | None = None
        decimals: int | None = None
        raw = await self._optional_call(w3, contract, SYMBOL_SELECTOR)
        if raw is not None:
            try:
                symbol = str(abi_decode(["string"], raw)[0]) or None
            except (DecodingError, ValueError, OverflowError):
                symbol = None
        raw = await self._optional_call(w3, contract, DECIMALS_SELECTOR)
        if raw is not None and len(raw) == 32 and int.from_bytes(raw, "big") <= 77:
            decimals = int.from_bytes(raw, "big")  # 10**77 is the largest power of ten within uint256
        return symbol, decimals

    async def _optional_call(self, w3: AsyncWeb3[Any], contract: str, data: bytes) -> bytes | None:
        try:
            return bytes(await w3.eth.call({"to": contract, "data": data}, "latest"))
        except _REFUSALS:
            return None
        except _UNREACHABLE as exc:
            raise NodeUnavailable(f"the Ethereum node cannot be reached (eth_call): {exc}") from exc

    async def suggest_fees(self, w3: AsyncWeb3[Any]) -> Fees:
        """Priority fee from ``eth_maxPriorityFeePerGas`` (1 gwei if unanswered), max fee 2 × base + tip."""
        try:
            priority = _quantity(
                await w3.manager.coro_request(RPCEndpoint("eth_maxPriorityFeePerGas"), []),
                "eth_maxPriorityFeePerGas",
            )
        except (*_REFUSALS, NodeUnavailable):
            priority = DEFAULT_PRIORITY_FEE_WEI
        except _UNREACHABLE as exc:
            raise NodeUnavailable(f"the Ethereum node cannot be reached: {exc}") from exc
        block = await self._ask(w3.eth.get_block("latest"), "eth_getBlockByNumber")
        base = block.get("baseFeePerGas")
        if base is None:
            raise EthereumWalletError("the latest block has no baseFeePerGas: the chain predates EIP-1559")
        return Fees(2 * int(base) + priority, priority)

    async def _ask(self, call: Any, what: str) -> Any:
        """Await a read; a refusal or an unreachable node becomes one clear error."""
        try:
            return await call
        except _REFUSALS as exc:
            raise EthereumWalletError(f"{what} failed: {_reason(exc)}") from exc
        except _UNREACHABLE as exc:
            raise NodeUnavailable(f"the Ethereum node cannot be reached ({what}): {exc}") from exc

    # -- nonces --------------------------------------------------------------------------------------

    def _nonce_lock(self) -> asyncio.Lock:
        """The wallet's lock for the running event loop (an asyncio.Lock must not cross loops)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _take_nonce(self, w3: AsyncWeb3[Any]) -> int:
        """The next nonce, reserved (call with the lock held)."""
        if self._next_nonce is None:
            self._next_nonce = await self._pending_count(w3)
        nonce = self._next_nonce
        self._next_nonce = nonce + 1
        return nonce

    async def _pending_count(self, w3: AsyncWeb3[Any]) -> int:
        pending = w3.eth.get_transaction_count(_typed(self.address), "pending")
        return int(await self._ask(pending, "eth_getTransactionCount"))

    async def next_nonce(self, w3: AsyncWeb3[Any]) -> int:
        """The nonce the next transaction will use (without reserving it)."""
        async with self._nonce_lock():
            if self._next_nonce is None:
                self._next_nonce = await self._pending_count(w3)
            return self._next_nonce

    async def resync_nonce(self, w3: AsyncWeb3[Any]) -> int:
        """Forget the local counter and read it from the node (``pending``); returns the next nonce.

        Needed after transactions of this account were sent by someone else, or to give back nonces that
        ``build_*`` reserved for transactions that will never be sent.
        """
        async with self._nonce_lock():
            self._next_nonce = await self._pending_count(w3)
            return self._next_nonce

    # -- preparing calls -----------------------------------------------------------------------------

    async def _estimate(self, w3: AsyncWeb3[Any], to: str, value_wei: int, data: bytes) -> int:
        try:
            estimate = int(
                await w3.eth.estimate_gas(
                    {
                        "from": _typed(self.address),
                        "to": _typed(to),
                        "value": Wei(value_wei),
                        "data": data,
                    },
                    "latest",
                )
            )
        except _REFUSALS as exc:
            raise WouldRevert(
                f"the node's gas estimate failed, so the transaction would fail: {_reason(exc)}"
            ) from exc
        except _UNREACHABLE as exc:
            raise NodeUnavailable(f"the Ethereum node cannot be reached (eth_estimateGas): {exc}") from exc
        if estimate <= PLAIN_TRANSFER_GAS:
            return estimate
        return estimate * (100 + _CONTRACT_CALL_HEADROOM_PERCENT) // 100

    def _check_ether(self, held: int, value_wei: int, gas: int, fees: Fees, *, estimated: bool) -> None:
        """Refuse before sending when the balance cannot cover ``value + gas × maxFeePerGas``.

        Checked twice: with the 21,000 gas every transaction needs at least (before ``eth_estimateGas``,
        which nodes refuse with their own wording when the balance is short), then with the estimate.
        """
        gas_wei = gas * fees.max_fee_per_gas
        if held < value_wei + gas_wei:
            raise InsufficientFunds(
                f"{self.address} holds {format_minor_units(held, ETH_DECIMALS)} ETH ({held} wei), not enough "
                f"for {format_minor_units(value_wei, ETH_DECIMALS)} ETH plus {'up to' if estimated else 'at least'} "
                f"{format_minor_units(gas_wei, ETH_DECIMALS)} ETH of gas ({gas} gas at up to "
                f"{fees.max_fee_per_gas} wei); nothing was sent"
            )

    async def _ether_call(
        self, w3: AsyncWeb3[Any], to: str, value_wei: int, fees: Fees | None, gas: int | None
    ) -> _Call:
        recipient = _address(to, "to")
        _check_wei(value_wei, "value_wei")
        if gas is not None:
            _check_wei(gas, "gas")
        fees = fees or await self.suggest_fees(w3)
        held = await self.balance(w3)
        self._check_ether(held, value_wei, gas or PLAIN_TRANSFER_GAS, fees, estimated=gas is not None)
        gas = gas or await self._estimate(w3, recipient, value_wei, b"")
        self._check_ether(held, value_wei, gas, fees, estimated=True)
        return _Call(recipient, value_wei, b"", gas, fees, recipient, value_wei, None)

    async def _token_call(
        self, w3: AsyncWeb3[Any], token: str, to: str, amount_units: int, fees: Fees | None, gas: int | None
    ) -> _Call:
        contract = _address(token, "token")
        data = encode_transfer(to, amount_units)
        recipient = _address(to, "to")
        if gas is not None:
            _check_wei(gas, "gas")
        held = await self.token_balance(w3, contract)
        if held < amount_units:
            raise InsufficientFunds(
                f"{self.address} holds {held} base units of token {contract}, not enough for a transfer of "
                f"{amount_units}; nothing was sent"
            )
        fees = fees or await self.suggest_fees(w3)
        held_wei = await self.balance(w3)
        self._check_ether(held_wei, 0, gas or PLAIN_TRANSFER_GAS, fees, estimated=gas is not None)
        gas = gas or await self._estimate(w3, contract, 0, data)
        self._check_ether(held_wei, 0, gas, fees, estimated=True)
        return _Call(contract, 0, data, gas, fees, recipient, amount_units, contract)

    async def _request_call(
        self, w3: AsyncWeb3[Any], request: Eip681Native | Eip681TokenTransfer, fees: Fees | None
    ) -> tuple[int, _Call]:
        node_chain_id = await self.chain_id(w3)
        if request.chain_id != node_chain_id:
            raise WrongChain(request.chain_id, node_chain_id)
        if isinstance(request, Eip681Native):
            return node_chain_id, await self._ether_call(w3, request.address, request.value_wei, fees, None)
        if isinstance(request, Eip681TokenTransfer):
            call = await self._token_call(w3, request.token, request.to, request.amount_units, fees, None)
            return node_chain_id, call
        raise EthereumWalletError(f"not an Ethereum payment request: {type(request).__name__}")

    def _sign(self, chain_id: int, nonce: int, call: _Call) -> SignedTx:
        fields: dict[str, Any] = {
            "type": 2,
            "chainId": chain_id,
            "nonce": nonce,
            "to": call.to,
            "value": call.value_wei,
            "data": call.data,
            "gas": call.gas,
            "maxFeePerGas": call.fees.max_fee_per_gas,
            "maxPriorityFeePerGas": call.fees.max_priority_fee_per_gas,
            "accessList": [],
        }
        signed = self._account.sign_transaction(fields)
        return SignedTx(
            raw=bytes(signed.raw_transaction),
            tx_hash=HexStr(HexBytes(signed.hash).to_0x_hex()),
            sender=self.address,
            chain_id=chain_id,
            nonce=nonce,
            to=call.to,
            value_wei=call.value_wei,
            data=call.data,
            gas=call.gas,
            fees=call.fees,
            recipient=call.recipient,
            amount_units=call.amount_units,
            token=call.token,
        )

    async def _sign_reserving(
        self, w3: AsyncWeb3[Any], chain_id: int, call: _Call, nonce: int | None
    ) -> SignedTx:
        if nonce is not None:
            _check_wei(nonce, "nonce", allow_zero=True)
            return self._sign(chain_id, nonce, call)
        async with self._nonce_lock():
            return self._sign(chain_id, await self._take_nonce(w3), call)

    # -- building without sending --------------------------------------------------------------------

    async def build_eth_transfer(
        self,
        w3: AsyncWeb3[Any],
        to: str,
        value_wei: int,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        """Sign (not send) a payment of ``value_wei`` to ``to``; without ``nonce`` the next one is reserved."""
        chain_id = await self.chain_id(w3)
        call = await self._ether_call(w3, to, value_wei, fees, gas)
        return await self._sign_reserving(w3, chain_id, call, nonce)

    async def build_token_transfer(
        self,
        w3: AsyncWeb3[Any],
        token: str,
        to: str,
        amount_units: int,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        """Sign (not send) ``token.transfer(to, amount_units)``; without ``nonce`` the next one is reserved."""
        chain_id = await self.chain_id(w3)
        call = await self._token_call(w3, token, to, amount_units, fees, gas)
        return await self._sign_reserving(w3, chain_id, call, nonce)

    async def build_uri(
        self, w3: AsyncWeb3[Any], uri: str, *, nonce: int | None = None, fees: Fees | None = None
    ) -> SignedTx:
        """Sign (not send) the payment an EIP-681 URI asks for, after the same checks as :meth:`pay_uri`."""
        chain_id, call = await self._request_call(w3, parse_eip681(uri), fees)
        return await self._sign_reserving(w3, chain_id, call, nonce)

    def build_replacement(
        self,
        prev: SignedTx,
        *,
        to: str | None = None,
        amount_units: int | None = None,
        bump_percent: int = DEFAULT_REPLACEMENT_BUMP_PERCENT,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        """Re-sign ``prev``'s nonce with higher fees and, optionally, another recipient or amount.

        This is the double spend of Ethereum: whichever of the two a block includes, the other becomes
        invalid. Both fee caps rise by ``bump_percent`` (default 25 %; pools want at least 10 %) unless
        ``fees`` are given. The gas limit is ``prev``'s (pass ``gas`` when a token transfer goes to an
        address that holds none of the token yet: a first balance costs ~17,000 more gas). No node is
        asked and no nonce is reserved.
        """
        if prev.sender != self.address:
            raise EthereumWalletError(f"{prev.tx_hash} was signed by {prev.sender}, not by {self.address}")
        recipient = prev.recipient if to is None else _address(to, "to")
        amount = prev.amount_units if amount_units is None else _check_wei(amount_units, "amount_units")
        new_fees = fees or prev.fees.bumped(bump_percent)
        gas = prev.gas if gas is None else _check_wei(gas, "gas")
        if prev.token is None:
            call = _Call(recipient, amount, prev.data, gas, new_fees, recipient, amount, None)
        else:
            data = encode_transfer(recipient, amount)
            call = _Call(prev.to, 0, data, gas, new_fees, recipient, amount, prev.token)
        return self._sign(prev.chain_id, prev.nonce, call)

    # -- sending -------------------------------------------------------------------------------------

    async def _send_locked(self, w3: AsyncWeb3[Any], tx: SignedTx) -> None:
        """``eth_sendRawTransaction`` (call with the lock held); any failure resyncs the nonce counter."""
        try:
            answered = HexBytes(await w3.eth.send_raw_transaction(tx.raw)).to_0x_hex()
        except _REFUSALS as exc:
            self._next_nonce = None
            raise PaymentRejected(tx, _reason(exc)) from exc
        except _UNREACHABLE as exc:
            self._next_nonce = None
            raise NodeUnavailable(
                f"the Ethereum node could not be reached while sending {tx.tx_hash} (it may or may not have "
                f"been relayed): {exc}"
            ) from exc
        if answered.lower() != tx.tx_hash.lower():
            self._next_nonce = None
            raise PaymentRejected(tx, f"eth_sendRawTransaction answered another hash, {answered}")

    async def send_raw_prepared(
        self, w3: AsyncWeb3[Any], tx: SignedTx, *, wait: bool = False, timeout: float | None = None
    ) -> Payment:
        """Send a transaction from ``build_*``; with ``wait``, also wait for its receipt (see :meth:`wait`)."""
        async with self._nonce_lock():
            await self._send_locked(w3, tx)
        return await self._finish(w3, tx, wait, timeout)

    async def _send_call(
        self, w3: AsyncWeb3[Any], chain_id: int, call: _Call, wait: bool, timeout: float | None
    ) -> Payment:
        async with self._nonce_lock():
            tx = self._sign(chain_id, await self._take_nonce(w3), call)
            await self._send_locked(w3, tx)
        return await self._finish(w3, tx, wait, timeout)

    async def _finish(self, w3: AsyncWeb3[Any], tx: SignedTx, wait: bool, timeout: float | None) -> Payment:
        if not wait:
            return Payment(tx)
        return Payment(tx, await self.wait(w3, tx.tx_hash, timeout=timeout))

    async def wait(self, w3: AsyncWeb3[Any], tx_hash: str, *, timeout: float | None = None) -> TxReceipt:
        """The receipt of ``tx_hash`` once mined; :class:`PaymentReverted` if its status is 0.

        Under anvil's automine a burst larger than one block stays pending until something mines again
        (devnets.md): mine from elsewhere while waiting, or :class:`ReceiptTimeout` follows.
        """
        limit = self.receipt_timeout_seconds if timeout is None else timeout
        try:
            receipt = await w3.eth.wait_for_transaction_receipt(
                HexBytes(tx_hash), timeout=limit, poll_latency=_RECEIPT_POLL_SECONDS
            )
        except TimeExhausted:
            raise ReceiptTimeout(tx_hash, limit) from None
        except _REFUSALS as exc:
            raise EthereumWalletError(f"eth_getTransactionReceipt failed: {_reason(exc)}") from exc
        except _UNREACHABLE as exc:
            raise NodeUnavailable(
                f"the Ethereum node cannot be reached (receipt of {tx_hash}): {exc}"
            ) from exc
        if int(receipt["status"]) != 1:
            raise PaymentReverted(tx_hash, receipt)
        return receipt

    async def send_eth(
        self,
        w3: AsyncWeb3[Any],
        to: str,
        value_wei: int,
        *,
        wait: bool = True,
        timeout: float | None = None,
        fees: Fees | None = None,
    ) -> Payment:
        """Pay ``value_wei`` to ``to`` on whatever chain the node is (use :meth:`pay_uri` for requests)."""
        chain_id = await self.chain_id(w3)
        call = await self._ether_call(w3, to, value_wei, fees, None)
        return await self._send_call(w3, chain_id, call, wait, timeout)

    async def transfer_token(
        self,
        w3: AsyncWeb3[Any],
        token: str,
        to: str,
        amount_units: int,
        *,
        wait: bool = True,
        timeout: float | None = None,
        fees: Fees | None = None,
    ) -> Payment:
        """Call ``token.transfer(to, amount_units)``, checking the token balance first."""
        chain_id = await self.chain_id(w3)
        call = await self._token_call(w3, token, to, amount_units, fees, None)
        return await self._send_call(w3, chain_id, call, wait, timeout)

    async def pay_request(
        self,
        w3: AsyncWeb3[Any],
        request: Eip681Native | Eip681TokenTransfer,
        *,
        wait: bool = True,
        timeout: float | None = None,
        fees: Fees | None = None,
    ) -> Payment:
        """Pay a parsed EIP-681 request after checking that its chain id is the node's."""
        chain_id, call = await self._request_call(w3, request, fees)
        return await self._send_call(w3, chain_id, call, wait, timeout)

    async def pay_uri(
        self,
        w3: AsyncWeb3[Any],
        uri: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        fees: Fees | None = None,
    ) -> Payment:
        """Pay an ``ethereum:`` request (parsed by :func:`gateway.payment_uri.parse_eip681`): ether with
        ``?value=`` or an ERC-20 ``/transfer?address=…&uint256=…``. Raises
        :class:`gateway.payment_uri.PaymentUriError` for a malformed URI and :class:`WrongChain` when the
        node is on another chain, before anything is signed."""
        return await self.pay_request(w3, parse_eip681(uri), wait=wait, timeout=timeout, fees=fees)
