"""The Ethereum watcher: follows the head block by block and reports ETH and token payments.

It speaks to the node through web3's AsyncWeb3 (``AsyncHTTPProvider``), so the same code runs against
anvil, a public testnet provider and, in unit tests, eth-tester's in-process chain.

What counts as a payment:
- **native ETH**: a transaction in a block whose ``to`` is a watched invoice address, with a non-zero value
  and a successful receipt (status 1; a failed transaction never counts). Its payment id is the tx hash.
  ETH moved by contracts through internal calls is not a transaction to the address and is not seen (see
  docs/ethereum.md for what a merchant should do about it);
- **tokens**: ``Transfer(address,address,uint256)`` logs of the configured token contract whose recipient
  topic is a watched address; the payment id is ``tx_hash:log_index``. Reverted transfers emit no log. A
  Transfer of any other contract to a watched address is recorded as *unaccounted* (kept for support and
  refunds, never counted).

Transfer logs are fetched with one ``eth_getLogs`` per range of at most ``log_span`` blocks (catch-up after
downtime stays within what providers allow), filtered by the Transfer topic only, and matched locally: the
cost of a block is its transfers, whatever the number of open invoices (a dict lookup each).

Reorgs: every block's parent hash must be our stored tip's hash; when the head does not extend our chain,
the shared walk-back (watcher.py) finds the fork point by comparing stored hashes with the node's, forgets
the heights above it and applies the new branch. anvil never marks logs ``removed``, so this parent-hash
check is the mechanism, not a fallback. A payment whose block left the chain is dropped (``reorged_out``)
unless its transaction was mined again in the new branch; the invoice moves back, or a settled one to
``reversed``; if the transaction is mined later, the payment comes back.

With ``ws_url`` configured, a ``newHeads`` subscription wakes the watcher as soon as a block arrives. It is
only a wake-up: the work is done by the same polling code, which keeps running at the poll interval, so a
dropped socket (reconnected with backoff) costs latency, never a payment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import BlockNotFound

from gateway.addresses import checksum_eth_address as to_checksum_address
from gateway.aio import wait_for_event
from gateway.chains.chain_state import AddressSpend, ChainState, PaidAddress, StoredBlock, TrackedPayment
from gateway.chains.watcher import ChainWatcher, PaymentSink, WatcherRefused
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

__all__ = [
    "TRANSFER_TOPIC",
    "EthereumSettings",
    "EthereumWatcher",
    "WatcherRefused",
    "check_ethereum_node",
]


@dataclass(frozen=True, slots=True)
class EthereumSettings:
    chain_id: int
    tokens: Mapping[str, Asset]  # lower-case contract address → the asset its transfers pay
    mainnet_chain_ids: Sequence[int] = (1,)
    allow_mainnet: bool = False
    poll_interval_seconds: float = 1.0
    start_block: int = -1  # < 0: start at the node's head the first time
    confirmation_depth: int = 7
    log_span: int = 500
    ws_url: str = ""
    address_refresh_margin_seconds: float = 10.0
    error_backoff_max_seconds: float = 30.0


def _hex(value: Any) -> str:
    """web3 returns hashes as HexBytes (whose .hex() has no 0x) or str, depending on the provider."""
    if isinstance(value, bytes | bytearray):
        return HexBytes(value).to_0x_hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


def _topic_address(topic: Any) -> str:
    """The address in an indexed address topic (the last 20 of its 32 bytes), lower case."""
    raw = bytes(HexBytes(topic))
    return "0x" + raw[-20:].hex()


async def check_ethereum_node(w3: AsyncWeb3[Any], settings: EthereumSettings) -> None:
    """Raise WatcherRefused unless the node's chain id is the configured one (and not mainnet by accident)."""
    chain_id = int(await w3.eth.chain_id)
    if chain_id in settings.mainnet_chain_ids and not settings.allow_mainnet:
        raise WatcherRefused(
            f"the node is on mainnet chain id {chain_id} and ethereum.allow_mainnet is false"
        )
    if chain_id != settings.chain_id:
        raise WatcherRefused(
            f"the node is on chain id {chain_id}, but ethereum.chain_id is {settings.chain_id}"
        )


class EthereumWatcher(ChainWatcher[str]):
    chain = Chain.ETHEREUM

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        state: ChainState,
        sink: PaymentSink,
        settings: EthereumSettings,
        *,
        unaccounted: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            state,
            sink,
            poll_interval_seconds=settings.poll_interval_seconds,
            confirmation_depth=settings.confirmation_depth,
            address_refresh_margin_seconds=settings.address_refresh_margin_seconds,
            error_backoff_max_seconds=settings.error_backoff_max_seconds,
            **kwargs,
        )
        self._w3 = w3
        self._settings = settings
        self._tokens = {address.lower(): asset for address, asset in settings.tokens.items()}
        # record_unaccounted(fact, contract): the invoice service by default (it is the sink)
        self._unaccounted = (
            unaccounted if unaccounted is not None else getattr(sink, "record_unaccounted", None)
        )
        # Invoice addresses that received a payment (lower case → as stored): what leaves them in a block,
        # value, fees and token transfers, is recorded as spends for the exposure view.
        self._paid_addresses: dict[str, str] = {}
        self._head_seen = asyncio.Event()
        self.websocket_connected = False

    # -- one poll ------------------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """One round: the head, new addresses, then the chain up to the head (through reorgs)."""
        if not self._started:
            await self._start(self._first_height)
        head = await self._w3.eth.get_block("latest")
        await self._refresh_addresses()  # after reading the head: its payments' addresses are committed
        if _hex(head["hash"]) != self._tip.hash:
            await self._sync_chain()
        self._poll_succeeded()

    async def run(self) -> None:
        heads = None
        if self._settings.ws_url:
            heads = asyncio.create_task(self._follow_heads(), name="ethereum-new-heads")
        try:
            await super().run()
        finally:
            if heads is not None:
                heads.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heads

    async def _wait_for_next_poll(self) -> None:
        # Cleared after waking, before the poll: a head announced while a poll runs wakes the next one at
        # once, and the head that woke this one is the one the coming poll reads.
        await wait_for_event(self._head_seen, self._poll_interval)
        self._head_seen.clear()

    async def _follow_heads(self) -> None:
        """Set the wake-up event on every newHeads notification; reconnect with backoff when dropped."""
        from web3 import WebSocketProvider

        backoff = 1.0
        while True:
            try:
                async with AsyncWeb3(WebSocketProvider(self._settings.ws_url)) as ws:
                    await ws.eth.subscribe("newHeads")
                    self.websocket_connected = True
                    backoff = 1.0
                    self._log.info("ethereum.websocket_subscribed", url=self._settings.ws_url)
                    async for _message in ws.socket.process_subscriptions():
                        self._head_seen.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the socket dropped or never opened: polling carries on meanwhile
                self._log.warning(
                    "ethereum.websocket_down", error=f"{type(exc).__name__}: {exc}", retry_in=backoff
                )
            self.websocket_connected = False
            await self._sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    # -- the node ------------------------------------------------------------------------------------

    async def _check_network(self) -> None:
        await check_ethereum_node(self._w3, self._settings)

    async def _first_height(self) -> int:
        if self._settings.start_block < 0:
            return await self._node_height()
        return max(self._settings.start_block - 1, 0)

    async def _node_height(self) -> int:
        return int(await self._w3.eth.block_number)

    async def _hashes_at(self, heights: Sequence[int]) -> list[str | None]:
        """None only where the node says it has no block; any other failure is raised: a node that could
        not answer is no node without the block, and taking it for one reads as a reorg of every height."""
        blocks = await asyncio.gather(*(self._w3.eth.get_block(h) for h in heights), return_exceptions=True)
        hashes: list[str | None] = []
        for block in blocks:
            if isinstance(block, BlockNotFound):
                hashes.append(None)
            elif isinstance(block, BaseException):
                raise block
            else:
                hashes.append(_hex(block["hash"]))
        return hashes

    async def _block_at(self, height: int) -> StoredBlock:
        block = await self._w3.eth.get_block(height)
        return StoredBlock(height, _hex(block["hash"]), _hex(block["parentHash"]))

    def _watch_key(self, address: str) -> str:
        text = address.lower()
        if len(text) != 42 or not text.startswith("0x"):
            raise ValueError(f"not an Ethereum address: {address!r}")
        int(text[2:], 16)
        return text

    # -- blocks --------------------------------------------------------------------------------------

    async def _connect_range(self, first: int, last: int) -> bool:
        span = self._settings.log_span
        for start in range(first, last + 1, span):
            end = min(start + span - 1, last)
            logs = await self._w3.eth.get_logs(
                {"fromBlock": start, "toBlock": end, "topics": [TRANSFER_TOPIC]}
            )
            by_height: dict[int, list[Any]] = defaultdict(list)
            for entry in logs:
                by_height[int(entry["blockNumber"])].append(entry)
            # The span's blocks are asked for together (one round trip's latency, not one per block); they
            # are still applied in order, each checked against the tip before it.
            blocks = await asyncio.gather(
                *(self._w3.eth.get_block(h, full_transactions=True) for h in range(start, end + 1))
            )
            applied: list[tuple[StoredBlock, list[PaymentFact], list[AddressSpend]]] = []
            tip = self._tip.hash
            moved = False
            for height, block in zip(range(start, end + 1), blocks, strict=True):
                stored = StoredBlock(height, _hex(block["hash"]), _hex(block["parentHash"]))
                transfers = by_height.get(height, [])
                if stored.prev_hash != tip or any(_hex(t["blockHash"]) != stored.hash for t in transfers):
                    moved = True  # the node's chain moved under us, or logs and block disagree
                    break
                confirmations = last - height + 1
                facts = await self._native_payments(block, stored, confirmations)
                facts += await self._token_payments(transfers, stored, confirmations)
                self._note_facts(facts)  # before the spends: a block may pay an address and sweep it
                spends = await self._native_spends(block) + self._token_spends(transfers)
                applied.append((stored, facts, spends))
                tip = stored.hash
            if applied:
                await self._connected_span(applied)
            if moved:
                return False
        return True

    async def _native_payments(
        self, block: Any, stored: StoredBlock, confirmations: int
    ) -> list[PaymentFact]:
        candidates = []
        watched = self._watched
        for tx in block["transactions"]:
            to = tx.get("to")
            if to is None or int(tx["value"]) == 0:
                continue
            address = watched.get(str(to).lower())
            if address is not None:
                candidates.append((tx, address))
        if not candidates:
            return []
        receipts = await asyncio.gather(
            *(self._w3.eth.get_transaction_receipt(tx["hash"]) for tx, _ in candidates)
        )
        facts = []
        for (tx, address), receipt in zip(candidates, receipts, strict=True):
            tx_hash = _hex(tx["hash"])
            if int(receipt["status"]) != 1:
                self._log.info("ethereum.failed_payment_ignored", tx_hash=tx_hash, address=address)
                continue
            facts.append(
                self._fact(
                    address,
                    tx_hash,
                    Asset.ETH,
                    int(tx["value"]),
                    to_checksum_address(tx["from"]),
                    confirmations,
                    stored,
                )
            )
        return facts

    async def _token_payments(
        self, transfers: Sequence[Any], stored: StoredBlock, confirmations: int
    ) -> list[PaymentFact]:
        facts = []
        for entry in transfers:
            topics = entry["topics"]
            data = bytes(HexBytes(entry["data"]))
            if len(topics) != 3 or len(data) != 32:
                continue  # not an ERC-20 Transfer (ERC-721 indexes the token id as a fourth topic)
            address = self._watched.get(_topic_address(topics[2]))
            if address is None:
                continue
            key = f"{_hex(entry['transactionHash'])}:{int(entry['logIndex'])}"
            contract = str(entry["address"]).lower()
            payer = to_checksum_address(_topic_address(topics[1]))
            asset = self._tokens.get(contract)
            fact = self._fact(
                address, key, asset or Asset.USDT, int.from_bytes(data, "big"), payer, confirmations, stored
            )
            if asset is None:
                if self._unaccounted is not None and fact.amount_minor > 0:
                    await self._unaccounted(fact, to_checksum_address(contract))
                continue
            if fact.amount_minor > 0:
                facts.append(fact)
        return facts

    def _note_paid(self, paid: PaidAddress) -> None:
        self._paid_addresses[paid.address.lower()] = paid.address

    async def _native_spends(self, block: Any) -> list[AddressSpend]:
        """Value and fees leaving paid invoice addresses in ``block`` (a failed transaction still pays gas)."""
        paid = self._paid_addresses
        sent = [
            (tx, paid[str(tx["from"]).lower()])
            for tx in block["transactions"]
            if str(tx.get("from", "")).lower() in paid
        ]
        if not sent:
            return []
        receipts = await asyncio.gather(*(self._w3.eth.get_transaction_receipt(tx["hash"]) for tx, _ in sent))
        spends = []
        for (tx, address), receipt in zip(sent, receipts, strict=True):
            tx_hash = _hex(tx["hash"])
            value = int(tx["value"]) if int(receipt["status"]) == 1 else 0
            fee = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
            for part, amount in (("native", value), ("gas", fee)):
                if amount > 0:
                    spends.append(AddressSpend(f"{tx_hash}:{part}", Asset.ETH, address, amount, tx_hash))
        return spends

    def _token_spends(self, transfers: Sequence[Any]) -> list[AddressSpend]:
        """Transfers of the configured tokens out of paid invoice addresses."""
        spends = []
        for entry in transfers:
            topics = entry["topics"]
            data = bytes(HexBytes(entry["data"]))
            asset = self._tokens.get(str(entry["address"]).lower())
            if asset is None or len(topics) != 3 or len(data) != 32:
                continue
            address = self._paid_addresses.get(_topic_address(topics[1]))
            amount = int.from_bytes(data, "big")
            if address is None or amount == 0:
                continue
            tx_hash = _hex(entry["transactionHash"])
            key = f"{tx_hash}:{int(entry['logIndex'])}"
            spends.append(AddressSpend(key, asset, address, amount, tx_hash))
        return spends

    def _fact(
        self,
        address: str,
        payment_key: str,
        asset: Asset,
        amount: int,
        payer: str,
        confirmations: int,
        stored: StoredBlock,
    ) -> PaymentFact:
        return PaymentFact(
            chain=Chain.ETHEREUM,
            address=address,
            payment_key=payment_key,
            asset=asset,
            amount_minor=amount,
            confirmations=confirmations,
            payer=payer,
            payer_scripts=(payer,),
            block_hash=stored.hash,
            block_height=stored.height,
        )

    # -- reorged payments ----------------------------------------------------------------------------

    async def _pending_again(self, payments: Sequence[TrackedPayment]) -> set[str]:
        """Ethereum payments count only from blocks: one whose block left the chain is dropped (and comes
        back when its transaction is mined again), so nothing is reported as pending here."""
        return set()
