"""The load the crash harness runs while it kills the gateway: invoices and merchant actions over the API,
payments on the chains, blocks (what each invoice gets is crash_plan.py's).

Creation goes through ``POST /v1/invoices`` with an Idempotency-Key. A request whose connection dies with
the gateway has an unknown fate, so it is sent again with the same key once a gateway is back, until it is
answered: the gateway must then answer with the invoice it created (a replay) or create it now, never two.
That is also why every invoice in the store must end up answered. Cancels and accept-lates cut by a kill
are sent again too; a 409 then is fine if the invoice already is where the first one took it.

Payments go to the nodes, not to the gateway, so they go on while it is down, exactly as residents'
wallets would; the miner keeps adding blocks throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from embit import bip39

from gateway.addresses import btc_script_for_address
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from tests.cluster.test_failover_chains import Chains, mine_round
from tests.reliability.crash_gateway import KillableGateway
from tests.reliability.crash_plan import LATE_KINDS, AnsweredInvoice, Plan, SentPayment, plan_for
from wallets.bitcoin import BitcoinWallet
from wallets.bitcoin import WalletError as BitcoinWalletError
from wallets.ethereum import EthereumWallet, EthereumWalletError

MINE_EVERY_SECONDS = 1.0
CREATORS = 3
CREATE_PAUSE_SECONDS = (0.05, 0.5)
PAY_PAUSE_SECONDS = (0.02, 0.2)
CANCEL_AFTER_SECONDS = (0.0, 2.0)
LATE_MARGIN_SECONDS = 2.0  # a late payment is sent this long after its invoice's deadline
RESCAN_SECONDS = 3.0
GIVE_UP_SECONDS = 120.0  # one request unanswered this long is a finding, not a wait


@contextlib.asynccontextmanager
async def open_chains(workdir: Path, seed: int | None, *, usdt_units: int = 10**13) -> AsyncIterator[Chains]:
    """bcoin and anvil (automine off: blocks come from the miner), funded wallets; stopped by PID.

    The Bitcoin wallet's mnemonic comes from the seed (None: a random one); its 432 funding coinbases give 333 mature coins, and
    it rescans as it goes so its mined change is spent too (it prefers confirmed coins, so payments never
    chain unconfirmed transactions past bcoin's limit).
    """
    bitcoin = BitcoinDevnet(log_path=workdir / "bcoin.log")
    ethereum = EthereumDevnet(automine=False, log_path=workdir / "anvil.log")
    try:
        started = await asyncio.gather(bitcoin.start(), ethereum.start(), return_exceptions=True)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        entropy = os.urandom(16) if seed is None else random.Random(f"{seed}:wallet").randbytes(16)
        btc_wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(entropy), REGTEST_HRP)
        eth_payer = EthereumWallet.from_private_key(ethereum.accounts[1].private_key)
        usdt_payer = EthereumWallet.from_private_key(ethereum.accounts[2].private_key)
        mint = await ethereum.mint(usdt_payer.address, usdt_units, wait=False)  # default: ten million tUSDT
        await ethereum.mine()
        await asyncio.gather(bitcoin.fund(btc_wallet), ethereum.wait_for_receipt(mint))
        yield Chains(bitcoin, ethereum, btc_wallet, eth_payer, usdt_payer)
    finally:
        await asyncio.gather(bitcoin.stop(), ethereum.stop())


async def send_payment(chains: Chains, invoice: AnsweredInvoice, asset: str, amount: int) -> SentPayment:
    """Pay ``amount`` of ``asset`` to the invoice's address from that asset's wallet (nothing waited for)."""
    address = invoice.address(asset)
    if asset == "BTC":
        assert chains.bitcoin.rpc is not None
        paid = await chains.btc_wallet.pay(chains.bitcoin.rpc, address, amount)
        script = btc_script_for_address(address, REGTEST_HRP)
        vout = next(n for n, (s, v) in enumerate(paid.outputs) if s == script and v == amount)
        return SentPayment(invoice.id, asset, address, paid.txid, vout, amount)
    w3 = chains.ethereum.w3
    if asset == "ETH":
        sent = await chains.eth_payer.send_eth(w3, address, amount, wait=False)
    else:
        sent = await chains.usdt_payer.transfer_token(
            w3, chains.ethereum.token_address, address, amount, wait=False
        )
    return SentPayment(invoice.id, asset, address, str(sent.tx_hash), None, amount)


def _unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Load:
    """Invoice creators, a payer per asset, the merchant's actions and a miner, against whichever gateway
    process is up."""

    gateway: KillableGateway
    chains: Chains
    api_key: str
    seed: int
    creators: int = CREATORS
    answered: dict[str, AnsweredInvoice] = field(default_factory=dict)
    sent: list[SentPayment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    interrupted_requests: int = 0  # requests whose connection failed (the gateway was killed or down)
    repeated_actions: int = 0  # a cancel or accept-late retried after a kill had already done it
    blocks_mined: int = 0
    # Set whenever an invoice request goes out, and after every mining round: a kill can be aimed at the
    # moment a request is in flight, or at the watchers' work on fresh blocks.
    request_sent: asyncio.Event = field(default_factory=asyncio.Event)
    blocks_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _queues: dict[str, asyncio.Queue[tuple[AnsweredInvoice, list[int]]]] = field(default_factory=dict)
    _later: set[asyncio.Task[None]] = field(default_factory=set)  # late payments and merchant actions
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:pacing")
        self._queues = {asset: asyncio.Queue() for asset in ("BTC", "ETH", "USDT")}

    # -- talking to the gateway ----------------------------------------------------------------------

    async def _call(
        self, session: aiohttp.ClientSession, verb: str, path: str, **kwargs: Any
    ) -> tuple[int, bytes, bool]:
        """One request to whichever gateway is up, sent again while its connection fails; (status, body,
        replayed). Raises TimeoutError after GIVE_UP_SECONDS without an answer."""
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            await self.gateway.up.wait()
            try:
                url = self.gateway.base_url + path
                if verb == "POST" and path == "/v1/invoices":
                    self.request_sent.set()
                async with session.request(verb, url, headers=headers, **kwargs) as response:
                    return (
                        response.status,
                        await response.read(),
                        response.headers.get("Idempotent-Replayed") == "true",
                    )
            except (aiohttp.ClientError, TimeoutError, RuntimeError):
                self.interrupted_requests += 1  # RuntimeError: no gateway between our check and the call
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{verb} {path} not answered within {GIVE_UP_SECONDS:g} s")

    # -- invoices ------------------------------------------------------------------------------------

    async def create_invoices(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """``creators`` workers creating invoices until ``stop`` is set; each finishes its request first."""

        async def worker() -> None:
            while not stop.is_set():
                plan = plan_for(self.seed, next(self._numbers))
                invoice = await self._create(session, plan)
                if invoice is not None:
                    self.answered[invoice.id] = invoice
                    self._follow_up(session, invoice)
                await asyncio.sleep(self._rng.uniform(*CREATE_PAUSE_SECONDS))

        await asyncio.gather(*(worker() for _ in range(self.creators)))

    async def _create(self, session: aiohttp.ClientSession, plan: Plan) -> AnsweredInvoice | None:
        """POST until answered, with one Idempotency-Key; None (and a problem noted) if refused."""
        key = f"crash-{self.seed}-{plan.index}"
        for attempt in range(1, 4):
            try:
                status, raw, replayed = await self._call(
                    session, "POST", "/v1/invoices", json=plan.request(), headers={"Idempotency-Key": key}
                )
            except TimeoutError as exc:
                self.problems.append(f"invoice request {key}: {exc}")
                return None
            if status == 201:
                return AnsweredInvoice(plan, json.loads(raw), replayed, attempt)
            self.problems.append(f"POST /v1/invoices (key {key}) answered {status}: {raw[:300]!r}")
            if status < 500 and status != 409:
                return None  # a refusal that asking again cannot change
            await asyncio.sleep(0.5)
        return None

    def _follow_up(self, session: aiohttp.ClientSession, invoice: AnsweredInvoice) -> None:
        """Queue the invoice's payments (a late one only after its deadline) and its merchant action."""
        plan = invoice.plan
        if plan.kind == "cancel":
            self._spawn(self._cancel(session, invoice))
        if plan.pay_asset is None:
            return
        amounts = plan.amounts(invoice.due_minor(plan.pay_asset))
        queue = self._queues[plan.pay_asset]
        if plan.kind in LATE_KINDS:
            self._spawn(self._pay_late(invoice, amounts, queue))
            if plan.kind == "late_accepted":
                self._spawn(self._accept_late(session, invoice))
        else:
            queue.put_nowait((invoice, amounts))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _pay_late(
        self,
        invoice: AnsweredInvoice,
        amounts: list[int],
        queue: asyncio.Queue[tuple[AnsweredInvoice, list[int]]],
    ) -> None:
        await asyncio.sleep(max(0.0, _unix(invoice.body["expires_at"]) - time.time() + LATE_MARGIN_SECONDS))
        queue.put_nowait((invoice, amounts))

    async def _cancel(self, session: aiohttp.ClientSession, invoice: AnsweredInvoice) -> None:
        await asyncio.sleep(self._rng.uniform(*CANCEL_AFTER_SECONDS))
        await self._act(session, invoice, "cancel", lambda body: body["status"] == "cancelled")

    async def _accept_late(self, session: aiohttp.ClientSession, invoice: AnsweredInvoice) -> None:
        """Once the late payment shows (paid_late), the merchant accepts it."""
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            status, raw, _ = await self._call(session, "GET", f"/v1/invoices/{invoice.id}")
            if status == 200 and "paid_late" in json.loads(raw)["flags"]:
                break
            await asyncio.sleep(0.5)
        else:
            self.problems.append(f"{invoice.id}: its late payment never showed as paid_late")
            return
        await self._act(
            session,
            invoice,
            "accept-late",
            lambda body: body["status"] in ("processing", "settled") and "paid_late" in body["flags"],
        )

    async def _act(
        self, session: aiohttp.ClientSession, invoice: AnsweredInvoice, action: str, done: Any
    ) -> None:
        """POST a merchant action; a 409 is fine when the invoice already shows it done (a retry after a
        kill that came after the first request's commit)."""
        try:
            status, raw, _ = await self._call(session, "POST", f"/v1/invoices/{invoice.id}/{action}")
            if status == 409:
                now_status, now, _ = await self._call(session, "GET", f"/v1/invoices/{invoice.id}")
                if now_status == 200 and done(json.loads(now)):
                    self.repeated_actions += 1
                    return
            if status != 200:
                self.problems.append(f"{action} {invoice.id} answered {status}: {raw[:300]!r}")
        except TimeoutError as exc:
            self.problems.append(f"{action} {invoice.id}: {exc}")

    async def finish_follow_ups(self) -> None:
        """Wait for the scheduled late payments and merchant actions."""
        while self._later:
            await asyncio.gather(*self._later)

    async def cancel_follow_ups(self) -> None:
        """Stop whatever is still scheduled (a harness that failed halfway)."""
        for task in list(self._later):
            task.cancel()
        await asyncio.gather(*self._later, return_exceptions=True)

    # -- payments ------------------------------------------------------------------------------------

    async def pay_invoices(self, creators_done: asyncio.Event) -> None:
        """One payer per asset (each its own wallet), until the creators are done and every planned payment
        is made. A split's second part goes to the back of its queue, so other payments (and perhaps a
        kill) come between the two parts."""
        await asyncio.gather(*(self._pay(asset, creators_done) for asset in self._queues))

    async def _pay(self, asset: str, creators_done: asyncio.Event) -> None:
        queue = self._queues[asset]
        rescanned = time.monotonic()
        while not (creators_done.is_set() and queue.empty() and not self._later):
            try:
                invoice, amounts = await asyncio.wait_for(queue.get(), 0.2)
            except TimeoutError:
                continue
            sent = await self._send(invoice, asset, amounts[0])
            if sent is not None:
                self.sent.append(sent)
            if amounts[1:]:
                queue.put_nowait((invoice, amounts[1:]))
            if asset == "BTC" and time.monotonic() - rescanned > RESCAN_SECONDS:
                # The wallet learns which of its change outputs are mined, so coins never run out. Only
                # this task touches the Bitcoin wallet: a scan never interleaves with a payment.
                assert self.chains.bitcoin.rpc is not None
                await self.chains.btc_wallet.scan(self.chains.bitcoin.rpc)
                rescanned = time.monotonic()
            await asyncio.sleep(self._rng.uniform(*PAY_PAUSE_SECONDS))

    async def _send(self, invoice: AnsweredInvoice, asset: str, amount: int) -> SentPayment | None:
        for attempt in range(3):
            try:
                return await send_payment(self.chains, invoice, asset, amount)
            except (BitcoinWalletError, EthereumWalletError) as exc:  # the harness's wallets, not the gateway
                if attempt == 2:
                    self.problems.append(f"harness could not pay {invoice.id} {amount} {asset}: {exc}")
                await asyncio.sleep(0.5)
        return None

    # -- blocks --------------------------------------------------------------------------------------

    async def mine(self, stop: asyncio.Event) -> None:
        """A Bitcoin block and two Ethereum blocks every second until ``stop`` is set."""
        while not stop.is_set():
            await mine_round(self.chains)
            self.blocks_mined += 1
            self.blocks_arrived.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MINE_EVERY_SECONDS)
