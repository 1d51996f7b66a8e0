"""The Ethereum side of ``wallet history``: the account's ether and token transfers, read from the node.

Token transfers come from ``eth_getLogs`` (Transfer logs with the address as sender or recipient, one
request each way per span of blocks), which any node answers cheaply over the whole chain. Ether transfers
are not indexed by nodes, so they are found the way the gateway's watcher finds them: by reading blocks
with their transactions, at most ``MAX_NATIVE_SCAN_BLOCKS`` back from the tip (older history needs an
indexer, which a resident's wallet does not have). Outgoing transactions are completed with their receipt
(status and the fee actually paid).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.types import BlockData, FilterParams, LogReceipt

from gateway.addresses import checksum_eth_address
from wallets.ethereum import _REFUSALS, _UNREACHABLE, TRANSFER_TOPIC, EthereumWalletError, NodeUnavailable

__all__ = ["MAX_NATIVE_SCAN_BLOCKS", "EthereumTransfer", "ethereum_history"]

MAX_NATIVE_SCAN_BLOCKS: Final = 10_000
_LOG_SPAN: Final = 10_000  # blocks per eth_getLogs request (public nodes cap the range)
_BLOCKS_AT_ONCE: Final = 50
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class EthereumTransfer:
    """One movement of ether or of a token from or to the account, in base units (wei, token units)."""

    tx_hash: str
    block: int
    asset: str  # "ETH", or the token's contract address
    direction: str  # "in", "out" or "self"
    amount_units: int
    counterparty: str
    fee_wei: int | None = None  # outgoing only: gas used × effective gas price
    failed: bool = False  # outgoing transaction mined with status 0 (nothing moved)

    def confirmations(self, tip: int) -> int:
        return max(0, tip - self.block + 1)


async def _ask(call: Awaitable[_T], what: str) -> _T:
    try:
        return await call
    except _REFUSALS as exc:
        raise EthereumWalletError(f"{what} failed: {exc}") from exc
    except _UNREACHABLE as exc:
        raise NodeUnavailable(f"the Ethereum node cannot be reached ({what}): {exc}") from exc


def _topic(address: str) -> HexStr:
    return HexStr("0x" + "0" * 24 + address[2:].lower())


async def ethereum_history(
    w3: AsyncWeb3[Any],
    address: str,
    *,
    tokens: tuple[str, ...] = (),
    from_block: int = 0,
) -> tuple[list[EthereumTransfer], int, int]:
    """(transfers oldest first, the tip block, the first block scanned for ether transfers)."""
    me = checksum_eth_address(address)
    tip = int(await _ask(w3.eth.block_number, "eth_blockNumber"))
    start = max(0, from_block)
    found: list[EthereumTransfer] = []
    token_txs: set[str] = set()
    for token in tokens:
        contract = checksum_eth_address(token)
        for logs, direction in await _token_logs(w3, contract, me, start, tip):
            for log in logs:
                topics = [HexBytes(t) for t in log["topics"]]
                data = HexBytes(log["data"])
                if len(topics) != 3 or len(data) != 32:
                    continue
                sender = checksum_eth_address("0x" + topics[1][-20:].hex())
                recipient = checksum_eth_address("0x" + topics[2][-20:].hex())
                if direction == "in" and sender == me:
                    continue  # a transfer to oneself is listed once, from the "out" side
                tx_hash = HexBytes(log["transactionHash"]).to_0x_hex()
                token_txs.add(tx_hash)
                kind = "self" if sender == recipient else direction
                found.append(
                    EthereumTransfer(
                        tx_hash,
                        int(log["blockNumber"]),
                        contract,
                        kind,
                        int.from_bytes(data, "big"),
                        recipient if direction == "out" else sender,
                    )
                )
    native_start = max(start, tip - MAX_NATIVE_SCAN_BLOCKS + 1)
    for number in range(native_start, tip + 1, _BLOCKS_AT_ONCE):
        batch = range(number, min(tip, number + _BLOCKS_AT_ONCE - 1) + 1)
        blocks = await asyncio.gather(
            *(_ask(w3.eth.get_block(n, full_transactions=True), "eth_getBlockByNumber") for n in batch)
        )
        for block in blocks:
            found.extend(_native_transfers(block, me, token_txs))
    outgoing = {t.tx_hash for t in found if t.direction != "in"}
    receipts = await asyncio.gather(
        *(_ask(w3.eth.get_transaction_receipt(HexStr(h)), "eth_getTransactionReceipt") for h in outgoing)
    )
    fees = {
        HexBytes(r["transactionHash"]).to_0x_hex(): (
            int(r["gasUsed"]) * int(r["effectiveGasPrice"]),
            int(r["status"]) != 1,
        )
        for r in receipts
    }
    completed = []
    for transfer in found:
        if transfer.tx_hash in fees:
            fee, failed = fees[transfer.tx_hash]
            transfer = EthereumTransfer(
                transfer.tx_hash,
                transfer.block,
                transfer.asset,
                transfer.direction,
                transfer.amount_units,
                transfer.counterparty,
                fee,
                failed,
            )
        completed.append(transfer)
    completed.sort(key=lambda t: (t.block, t.tx_hash, t.asset))
    return completed, tip, native_start


async def _token_logs(
    w3: AsyncWeb3[Any], token: str, me: str, start: int, tip: int
) -> list[tuple[list[LogReceipt], str]]:
    answers: list[tuple[list[LogReceipt], str]] = []
    for span_start in range(start, tip + 1, _LOG_SPAN):
        span_end = min(tip, span_start + _LOG_SPAN - 1)
        for direction, topics in (
            ("out", [HexStr(TRANSFER_TOPIC), _topic(me)]),
            ("in", [HexStr(TRANSFER_TOPIC), None, _topic(me)]),
        ):
            params: FilterParams = {
                "fromBlock": span_start,
                "toBlock": span_end,
                "address": checksum_eth_address(token),  # type: ignore[typeddict-item]
                "topics": topics,
            }
            logs = await _ask(w3.eth.get_logs(params), "eth_getLogs")
            answers.append((list(logs), direction))
    return answers


def _native_transfers(block: BlockData, me: str, token_txs: set[str]) -> list[EthereumTransfer]:
    transfers = []
    for tx in block.get("transactions", []):
        if isinstance(tx, bytes | str):
            continue  # a hash only: the node ignored full_transactions
        sender = checksum_eth_address(str(tx["from"]))
        to = tx.get("to")
        recipient = checksum_eth_address(str(to)) if to else None
        value = int(tx.get("value", 0))
        tx_hash = HexBytes(tx["hash"]).to_0x_hex()
        if sender != me and recipient != me:
            continue
        if value == 0 and (tx_hash in token_txs or sender != me):
            continue  # a token transfer (listed as such) or someone else's call naming us
        direction = "self" if sender == recipient else "out" if sender == me else "in"
        counterparty = (recipient or "contract creation") if sender == me else sender
        transfers.append(
            EthereumTransfer(tx_hash, int(block["number"]), "ETH", direction, value, counterparty)
        )
    return transfers
