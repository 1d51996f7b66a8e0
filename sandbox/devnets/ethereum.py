"""An anvil Ethereum devnet (foundry's node, from npm) on a free loopback port, with a test stablecoin.

Recipe and pitfalls: ../shared/devnets.md. The binary of the optional npm package
``@foundry-rs/anvil-linux-amd64`` is run directly (not the Node wrapper, whose death can leave anvil
holding the port) and stopped by the PID this module started, never by name. The node listens on
127.0.0.1 only, uses chain id 31337 and the well-known development mnemonic, and keeps its chain in
memory.

At start the devnet deploys TestUSDT (contracts/TestUSDT.sol, compiled into the committed TestUSDT.json)
from dev account 0 as the chain's very first transaction, so the token always lives at
:data:`TOKEN_ADDRESS`. Transactions are signed locally with eth-account; anvil's unlocked accounts are
never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import aiohttp
from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.types import Nonce, RPCEndpoint, TxParams, TxReceipt, Wei

from gateway.chains.web3_http import keep_alive_web3
from sandbox.devnets.process import PROJECT_ROOT, DevnetError, NodeProcess, free_port
from sandbox.devnets.solc import load_test_usdt

CHAIN_ID = 31337
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DERIVATION_PATH = "m/44'/60'/0'/0/{index}"  # anvil's default (and MetaMask's)
DEV_ACCOUNT_COUNT = 10
DEV_BALANCE_ETH = 10_000
# CREATE address of dev account 0 (0xf39F…2266) at nonce 0: where the first deployment on a fresh
# anvil lands.
TOKEN_ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # noqa: S105 - a contract address
TOKEN_DECIMALS = 6
PRIORITY_FEE_WEI = 10**9
ETH_TRANSFER_GAS = 21_000
# Gas limit of a signed token transfer: a transfer to a new holder uses ~52,000; the rest is refunded.
TOKEN_TRANSFER_GAS = 80_000


def anvil_binary(root: Path = PROJECT_ROOT) -> Path:
    """The anvil executable of the optional npm package for this platform (linux x86-64)."""
    modules = Path(os.environ.get("CRYPTOCITY_NODE_MODULES", root / "node_modules"))
    binary = modules / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if not binary.exists():
        raise DevnetError(
            f"anvil is not installed at {binary}; run `bash scripts/setup.sh` (npm ci, with optional "
            "dependencies)"
        )
    return binary


_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def parse_address(text: str) -> ChecksumAddress:
    """An address given as ``0x`` and 40 hex digits, in one case or with a valid EIP-55 checksum.

    Raises ValueError saying why otherwise: a mixed-case address whose checksum is wrong is a typo,
    not something to fix up silently (eth-utils 6 ``is_address`` no longer checks it).
    """
    if not isinstance(text, str) or not _HEX_ADDRESS.match(text):
        raise ValueError(f"{text!r} is not an Ethereum address (0x and 40 hex digits)")
    digits = text[2:]
    if digits not in (digits.lower(), digits.upper()) and not AsyncWeb3.is_checksum_address(text):
        raise ValueError(f"{text!r} is not an Ethereum address (its mixed-case EIP-55 checksum is wrong)")
    return AsyncWeb3.to_checksum_address(text)


@dataclass(frozen=True, slots=True)
class DevAccount:
    """One of anvil's funded development accounts (derived from the mnemonic; never use them for real)."""

    index: int
    address: ChecksumAddress
    private_key: HexStr  # 0x-hex, 32 bytes


def dev_accounts(mnemonic: str = DEFAULT_MNEMONIC, count: int = DEV_ACCOUNT_COUNT) -> list[DevAccount]:
    """The accounts anvil derives from ``mnemonic`` (BIP44 m/44'/60'/0'/0/i), with their private keys."""
    seed = seed_from_mnemonic(mnemonic, "")
    accounts = []
    for index in range(count):
        key = key_from_seed(seed, DERIVATION_PATH.format(index=index))
        address = Account.from_key(key).address
        accounts.append(DevAccount(index, address, HexStr(HexBytes(key).to_0x_hex())))
    return accounts


class EthereumDevnet:
    """anvil on loopback with TestUSDT deployed; an async context manager (``async with``).

    Mining: automine by default (each transaction is mined at once in its own block), interval mining
    with ``block_time`` seconds, or ``automine=False`` to mine only on :meth:`mine`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        block_time: float | None = None,
        automine: bool = True,
        log_path: Path | None = None,
        mnemonic: str = DEFAULT_MNEMONIC,
        hardfork: str | None = None,
        gas_limit: int | None = None,
        states_kept: int | None = None,
    ) -> None:
        if block_time is not None and block_time <= 0:
            raise DevnetError("block_time must be a positive number of seconds")
        if block_time is not None and not automine:
            raise DevnetError("choose interval mining (block_time) or no automine, not both")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.chain_id = CHAIN_ID
        self.token_address: ChecksumAddress = AsyncWeb3.to_checksum_address(TOKEN_ADDRESS)
        self.block_time = block_time
        self._automine = automine and block_time is None
        self._mnemonic = mnemonic
        self._hardfork = hardfork
        self._gas_limit = gas_limit
        self._states_kept = states_kept
        self._node = NodeProcess(log_path)
        self._w3: AsyncWeb3[AsyncHTTPProvider] | None = None
        self._token: AsyncContract | None = None
        self._token_block = 0  # the block holding TestUSDT's deployment
        self._artifact = load_test_usdt()
        self._owner_lock = asyncio.Lock()  # nonce read + send of the owner's transactions

    # -- what a client needs to know -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._node.pid

    @property
    def returncode(self) -> int | None:
        """anvil's exit code once it has exited (None while it runs or before start)."""
        return self._node.exit_code()

    @cached_property
    def accounts(self) -> list[DevAccount]:
        """The 10 funded development accounts (10,000 ETH each at start), with private keys."""
        return dev_accounts(self._mnemonic)

    @property
    def owner(self) -> DevAccount:
        """Dev account 0: it deployed TestUSDT and is the only one allowed to mint."""
        return self.accounts[0]

    @property
    def automine(self) -> bool:
        """Whether each transaction is mined as soon as it arrives (False under interval mining too)."""
        return self._automine

    @property
    def w3(self) -> AsyncWeb3[AsyncHTTPProvider]:
        if self._w3 is None:
            raise DevnetError("start the devnet first")
        return self._w3

    @property
    def token(self) -> AsyncContract:
        """TestUSDT at :attr:`token_address` (web3 contract object with the committed ABI)."""
        if self._token is None:
            raise DevnetError("start the devnet first")
        return self._token

    @property
    def token_abi(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._artifact["abi"])

    # -- life cycle ------------------------------------------------------------------------------------

    async def start(self, *, deadline_seconds: float = 30.0) -> EthereumDevnet:
        """Start anvil, wait until it answers ``eth_chainId``, deploy TestUSDT; raises DevnetError."""
        if self._node.started:
            raise DevnetError("this devnet was already started")
        args = [
            str(anvil_binary()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--mnemonic",
            self._mnemonic,
            "--accounts",
            str(DEV_ACCOUNT_COUNT),
            "--balance",
            str(DEV_BALANCE_ETH),
            "--color",
            "never",
        ]
        if self.block_time is not None:
            args += ["--block-time", f"{self.block_time:g}"]
        elif not self._automine:
            args.append("--no-mining")
        if self._hardfork is not None:
            args += ["--hardfork", self._hardfork]
        if self._gas_limit is not None:
            args += ["--gas-limit", str(self._gas_limit)]
        if self._states_kept is not None:
            # anvil keeps the world state of every block in memory by default: 1.5 GB after 600 blocks
            # of the full city's 4,500 funded accounts. Reads at "latest" and reorgs a few blocks deep
            # need only the recent ones.
            args += ["--prune-history", str(self._states_kept)]
        await self._node.spawn(args)
        self._w3 = await keep_alive_web3(self.url, timeout_seconds=30, connections=64, retry=False)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_seconds
        try:
            while True:
                if self._node.exit_code() is not None:
                    raise DevnetError(
                        f"anvil exited at start with code {self._node.exit_code()}"
                        + (f" (log: {self._node.log_path})" if self._node.log_path else "")
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    answered = int(await self.call("eth_chainId"), 16)
                    break
                if loop.time() > until:
                    raise DevnetError(f"anvil did not answer on {self.url} within {deadline_seconds} s")
                await asyncio.sleep(0.05)
            if self._node.exit_code() is not None:
                raise DevnetError(f"anvil exited at start with code {self._node.exit_code()}")
            if answered != self.chain_id:
                raise DevnetError(f"the node on {self.url} has chain id {answered}, not {self.chain_id}")
            await self._deploy_token()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _deploy_token(self) -> None:
        w3 = self.w3
        owner = self.owner
        nonce = await w3.eth.get_transaction_count(owner.address, "pending")
        if nonce != 0:
            raise DevnetError(
                f"dev account 0 already has nonce {nonce}: TestUSDT would not be the first deploy"
            )
        tx: TxParams = {"from": owner.address, "data": HexStr(self._artifact["bytecode"]), "nonce": Nonce(0)}
        tx["gas"] = await w3.eth.estimate_gas(tx)
        raw = self.sign(owner, await self._with_fees(tx))
        tx_hash = await self.send_raw(raw)
        if not self._automine:
            await self.mine()
        receipt = await self.wait_for_receipt(tx_hash)
        address = receipt["contractAddress"]
        self._token_block = int(receipt["blockNumber"])
        if address != self.token_address:
            raise DevnetError(f"TestUSDT was deployed at {address}, not at {self.token_address}")
        code = (await w3.eth.get_code(self.token_address)).to_0x_hex()
        if code != self._artifact["deployedBytecode"]:
            raise DevnetError("the code at the token address is not TestUSDT.json's deployedBytecode")
        self._token = w3.eth.contract(address=self.token_address, abi=self.token_abi)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the node we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self._w3 is not None:
            await self._w3.provider.disconnect()
        await self._node.stop(timeout)

    async def __aenter__(self) -> EthereumDevnet:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- raw JSON-RPC ----------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call with positional params; its ``result``. An RPC error raises DevnetError."""
        response = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if response.get("error"):
            raise DevnetError(f"{method} failed: {response['error']}")
        return response.get("result")

    # -- transactions ----------------------------------------------------------------------------------

    def sign(self, sender: DevAccount, tx: TxParams) -> HexStr:
        """Sign a complete transaction dict locally; the raw transaction as 0x-hex."""
        unsigned = {k: v for k, v in tx.items() if k != "from"}
        signed = Account.sign_transaction(unsigned, sender.private_key)
        return HexStr(signed.raw_transaction.to_0x_hex())

    async def _with_fees(self, tx: TxParams) -> TxParams:
        """Fill chain id, type 2 and fees that survive a few full blocks of base-fee increases."""
        if "maxFeePerGas" in tx or "gasPrice" in tx:
            return {"chainId": self.chain_id, **tx}
        base_fee = (await self.w3.eth.get_block("pending")).get("baseFeePerGas", 10**9)
        return {
            "chainId": self.chain_id,
            "type": 2,
            "maxPriorityFeePerGas": Wei(PRIORITY_FEE_WEI),
            "maxFeePerGas": Wei(3 * int(base_fee) + PRIORITY_FEE_WEI),
            **tx,
        }

    async def sign_eth_transfer(
        self,
        sender: DevAccount,
        to: str,
        wei: int,
        *,
        nonce: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> HexStr:
        """A signed ETH transfer (type 2, 21,000 gas); nonce defaults to the sender's pending count."""
        tx: TxParams = {"to": self._address(to), "value": Wei(wei), "gas": ETH_TRANSFER_GAS}
        return await self.sign_tx(sender, tx, nonce=nonce, max_fee_per_gas=max_fee_per_gas)

    async def sign_token_transfer(
        self,
        sender: DevAccount,
        to: str,
        amount_units: int,
        *,
        nonce: int | None = None,
        gas: int = TOKEN_TRANSFER_GAS,
        max_fee_per_gas: int | None = None,
    ) -> HexStr:
        """A signed TestUSDT ``transfer(to, amount_units)`` from ``sender`` (fixed gas, no estimate)."""
        data = self.token.encode_abi("transfer", args=[self._address(to), amount_units])
        tx: TxParams = {"to": self.token_address, "value": Wei(0), "gas": gas, "data": data}
        return await self.sign_tx(sender, tx, nonce=nonce, max_fee_per_gas=max_fee_per_gas)

    async def sign_tx(
        self,
        sender: DevAccount,
        tx: TxParams,
        *,
        nonce: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> HexStr:
        """Sign ``tx`` (``to``, ``value``, ``data``, ``gas``) from ``sender``, filling chain id, nonce
        (default: the sender's pending count) and type 2 fees; the raw transaction as 0x-hex."""
        tx = cast(TxParams, dict(tx))
        if nonce is None:
            nonce = await self.w3.eth.get_transaction_count(sender.address, "pending")
        tx["nonce"] = Nonce(nonce)
        if max_fee_per_gas is not None:
            tx["maxFeePerGas"] = Wei(max_fee_per_gas)
            tx["maxPriorityFeePerGas"] = Wei(min(PRIORITY_FEE_WEI, max_fee_per_gas))
            tx["type"] = 2
        return self.sign(sender, await self._with_fees(tx))

    async def send_raw(self, raw_tx: str) -> HexStr:
        """``eth_sendRawTransaction``; the transaction hash (0x-hex). A refusal raises DevnetError."""
        return HexStr(str(await self.call("eth_sendRawTransaction", raw_tx)))

    async def send_raw_batch(self, raw_txs: Sequence[str]) -> list[HexStr]:
        """Send many raw transactions in one JSON-RPC batch (much faster for bursts); their hashes.

        Raises DevnetError naming the first refused transaction (the others may have been accepted).
        """
        if not raw_txs:
            return []
        answers = await self.w3.provider.make_batch_request(
            [(RPCEndpoint("eth_sendRawTransaction"), [raw]) for raw in raw_txs]
        )
        if not isinstance(answers, list):
            raise DevnetError(f"eth_sendRawTransaction batch failed: {answers.get('error')}")
        hashes = []
        for index, answer in enumerate(answers):
            if answer.get("error"):
                raise DevnetError(f"transaction {index} of the batch was refused: {answer['error']}")
            hashes.append(HexStr(str(answer["result"])))
        return hashes

    async def wait_for_receipt(self, tx_hash: str, *, timeout: float = 30.0) -> TxReceipt:
        """The receipt of a mined transaction; raises DevnetError if it reverted or is not mined in time."""
        try:
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                HexStr(tx_hash), timeout=timeout, poll_latency=0.02
            )
        except Exception as exc:  # web3's TimeExhausted and transport errors
            raise DevnetError(f"no receipt for {tx_hash} within {timeout} s: {exc}") from exc
        if receipt["status"] != 1:
            raise DevnetError(f"transaction {tx_hash} reverted (block {receipt['blockNumber']})")
        return receipt

    async def _owner_send(self, tx: TxParams, *, wait: bool) -> HexStr:
        if wait and not self._automine and self.block_time is None:
            raise DevnetError("automine is off: pass wait=False and mine, or enable automine")
        async with self._owner_lock:
            tx["nonce"] = await self.w3.eth.get_transaction_count(self.owner.address, "pending")
            if "gas" not in tx:
                tx["gas"] = await self.w3.eth.estimate_gas({**tx, "from": self.owner.address})
            tx_hash = await self.send_raw(self.sign(self.owner, await self._with_fees(tx)))
        if wait:
            await self.wait_for_receipt(tx_hash, timeout=30.0 + 2 * (self.block_time or 0))
        return tx_hash

    async def mint(self, to: str, amount_units: int, *, wait: bool = True) -> HexStr:
        """Mint ``amount_units`` TestUSDT base units (6 decimals) to ``to`` from the owner; the tx hash.

        With ``wait`` (the default) returns once the transaction is mined and succeeded; with automine
        off pass ``wait=False`` and mine yourself.
        """
        if amount_units < 0:
            raise DevnetError("cannot mint a negative amount")
        data = self.token.encode_abi("mint", args=[self._address(to), amount_units])
        return await self._owner_send({"to": self.token_address, "value": Wei(0), "data": data}, wait=wait)

    async def fund_eth(
        self, to: str, wei: int, *, transfer: bool = False, wait: bool = True
    ) -> HexStr | None:
        """Give ``to`` ``wei`` more ether.

        By default with ``anvil_setBalance`` (instant, no transaction, works in every mining mode): None.
        With ``transfer=True`` as a real value transfer from the owner, which a chain watcher sees: its
        hash (``wait`` as in :meth:`mint`).
        """
        if wei < 0:
            raise DevnetError("cannot fund a negative amount")
        address = self._address(to)
        if transfer:
            tx: TxParams = {"to": address, "value": Wei(wei), "gas": ETH_TRANSFER_GAS}
            return await self._owner_send(tx, wait=wait)
        balance = await self.w3.eth.get_balance(address, "latest")
        await self.call("anvil_setBalance", address, hex(balance + wei))
        return None

    async def token_balance(self, address: str) -> int:
        """TestUSDT base units held by ``address`` at the latest block."""
        return int(await self.token.functions.balanceOf(self._address(address)).call())

    async def eth_balance(self, address: str) -> int:
        return int(await self.w3.eth.get_balance(self._address(address)))

    # -- mining and chain control ----------------------------------------------------------------------

    async def block_number(self) -> int:
        return int(await self.w3.eth.block_number)

    async def block_hash(self, number: int) -> HexStr:
        block = await self.w3.eth.get_block(number)
        return HexStr(HexBytes(block["hash"]).to_0x_hex())

    async def mine(self, blocks: int = 1) -> int:
        """Mine ``blocks`` blocks now (any mining mode); the new tip's number."""
        if blocks < 1:
            raise DevnetError("mine at least one block")
        if blocks == 1:
            await self.call("evm_mine")
        else:
            await self.call("anvil_mine", hex(blocks))
        return await self.block_number()

    async def set_automine(self, enabled: bool) -> None:
        """Switch automine on or off (``evm_setAutomine``)."""
        await self.call("evm_setAutomine", enabled)
        self._automine = enabled

    async def pending_count(self) -> int:
        """Transactions waiting in anvil's pool (``txpool_status.pending``)."""
        status = await self.call("txpool_status")
        return int(status["pending"], 16)

    async def mine_until_pool_empty(self, *, max_blocks: int = 10_000) -> int:
        """Mine block after block while the pool has pending transactions; how many blocks were mined.

        Only executable (``pending``) transactions count: ``queued`` ones, waiting behind a nonce gap,
        would never be mined by this.

        A burst bigger than one block's gas limit leaves transactions pending even under automine,
        until something mines again (devnets.md). Raises DevnetError after ``max_blocks`` blocks.
        """
        mined = 0
        while await self.pending_count() > 0:
            if mined >= max_blocks:
                raise DevnetError(f"the pool still has pending transactions after {mined} blocks")
            await self.call("evm_mine")
            mined += 1
        return mined

    async def reorg(self, depth: int, txs: Sequence[tuple[str, int]] = ()) -> list[HexStr]:
        """Replace the last ``depth`` blocks by new ones at the same heights (``anvil_reorg``).

        ``txs`` are ``(raw_tx_hex, block_offset)`` pairs: each signed transaction goes into the new block
        ``block_offset`` (0 = the first replaced height, ``tip - depth + 1``). Transactions of the
        orphaned blocks are dropped, not returned to the pool, and their blocks and logs can no longer be
        fetched. Returns the new block hashes at the replaced heights, oldest first.
        """
        tip = await self.block_number()
        if not 0 < depth <= tip - self._token_block:
            raise DevnetError(
                f"cannot reorganise {depth} blocks of a chain whose tip is at height {tip}: the token's "
                f"deployment (block {self._token_block}) must stay"
            )
        for _, offset in txs:
            if not 0 <= offset < depth:
                raise DevnetError(f"block offset {offset} is outside the {depth} replaced blocks")
        await self.call("anvil_reorg", depth, [[raw, offset] for raw, offset in txs])
        return [await self.block_hash(height) for height in range(tip - depth + 1, tip + 1)]

    async def snapshot(self) -> str:
        """``evm_snapshot``: an id to :meth:`revert` to (the chain and state as they are now)."""
        return str(await self.call("evm_snapshot"))

    async def revert(self, snapshot_id: str) -> None:
        """``evm_revert`` to a snapshot (which is used up); raises DevnetError if anvil refuses it."""
        if await self.call("evm_revert", snapshot_id) is not True:
            raise DevnetError(f"anvil could not revert to snapshot {snapshot_id}")

    async def set_next_block_timestamp(self, unix: int) -> None:
        """The next mined block carries this timestamp (must be later than the tip's)."""
        await self.call("evm_setNextBlockTimestamp", unix)

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _address(address: str) -> ChecksumAddress:
        try:
            return parse_address(address)
        except ValueError as exc:
            raise DevnetError(str(exc)) from None
