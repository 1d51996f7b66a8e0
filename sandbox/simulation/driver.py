"""`cryptocity simulate`: the Alatau pilot for a day on local chains, every payment the real way.

The run: a bcoin regtest node and an anvil node start on loopback; the gateway (with the sandbox, the
ledger and the audit log, on the embedded SQLite store) and the city's webhook receiver start in this
process on free loopback ports; merchants are onboarded through the registry, given a category and a
webhook endpoint; residents are registered with their wallets and funded. Then the plan (plan.py) is
played step by step on the gateway's injected clock:

1. each purchase of the step: the shop opens an order and creates the invoice through the merchant SDK;
   the resident's wallet reads the payment request (the QR image decoded with zxing-cpp for a sample, the
   URI otherwise) and pays on chain, exactly, short, over, late, never, or not at all in the end (a BTC
   double spend mined in a competing block, an Ethereum same-nonce replacement);
2. the blocks due in the step are mined (Bitcoin every ``btc_block_seconds``, Ethereum every
   ``eth_block_seconds``), with the plan's reorgs, node outages (both nodes SIGSTOPped; payments wait in
   the wallets) and rates outages (the market answers nothing; checkouts get 503);
3. the driver waits until the gateway has caught up: both watchers at the nodes' tips and every broadcast
   Bitcoin payment recorded, the outbox consumed by every consumer, no webhook delivery due and no invoice
   left to expire; only then does the clock move on, so wall time never changes what happens.

At the end: reconciliation (reconcile.py), the report (report.py) and the regulator's exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from embit import bip39
from embit.networks import NETWORKS
from yarl import URL

from gateway.accounts.merchants import MerchantRegistry
from gateway.api.state import EXTENSIONS, STORE, WATCHERS
from gateway.app import create_app
from gateway.clock import ManualClock, isoformat
from gateway.config import Config
from gateway.money import Asset, format_minor_units, parse_decimal_amount
from gateway.payment_uri import Bip21Request, Eip681Native, Eip681TokenTransfer, parse_payment_uri
from gateway.store import Store
from gateway.webhooks.fanout import WebhookFanout
from merchants.sdk import CryptoCityClient
from merchants.sdk.errors import APIError
from merchants.sdk.models import Invoice, PaymentMethod
from sandbox.audit.keys import AuditKey
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from sandbox.limits import SandboxRules, Tier
from sandbox.registry import Category, Registry
from sandbox.simulation.market import SimulatedMarket
from sandbox.simulation.plan import Behaviour, Plan, PlannedResident, Purchase, make_plan
from sandbox.simulation.rss import PeakRss
from sandbox.simulation.shop import CityShops
from sandbox.simulation.wallets import (
    WalletFactory,
    fund_bitcoin,
    fund_ethereum,
    registered_scripts,
)
from wallets.bitcoin import BitcoinWallet, InsufficientFunds, WalletError
from wallets.bitcoin import Payment as BitcoinPayment
from wallets.ethereum import EthereumWallet, EthereumWalletError, Fees
from wallets.qr import read_qr_text

STRANGER = 10_000_000  # wallet index of the unregistered payers (one per chain)
REGISTRATION_BATCH = 256
DRAIN_DEADLINE_SECONDS = 60.0
ETH_STATES_KEPT = 64  # anvil's in-memory world states: enough for the plan's reorgs (a few blocks deep)


@dataclass(slots=True)
class PurchaseRecord:
    purchase: Purchase
    asset: Asset
    order_id: str | None = None
    invoice_id: str | None = None
    outcome: str = "planned"  # created, refused_cap, refused_rates, no_method, paid, not_paid, ...
    txid: str | None = None
    paid_minor: int = 0
    broadcast_wall: float | None = None
    read_from_qr: bool = False


@dataclass(slots=True)
class RunState:
    records: list[PurchaseRecord] = field(default_factory=list)
    late: dict[int, list[PurchaseRecord]] = field(default_factory=dict)  # step → payments after expiry
    queued: list[PurchaseRecord] = field(default_factory=list)  # waiting for the nodes to come back
    conflicts: list[tuple[BitcoinWallet, BitcoinPayment]] = field(default_factory=list)
    expected_btc: set[str] = field(default_factory=set)  # broadcast txids the gateway must have recorded
    nodes_stopped: bool = False
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


def next_local_midnight(zone: str, wall: datetime) -> datetime:
    """The run's day starts at the pilot's next local midnight (after the chains' real-time funding blocks)."""
    local = wall.astimezone(ZoneInfo(zone))
    midnight = datetime(local.year, local.month, local.day, tzinfo=local.tzinfo) + timedelta(days=1)
    return midnight.astimezone(UTC)


def over_limit_tickets(config: Config) -> dict[str, int]:
    """Per tier, a ticket 10 % above the per-operation limit; tiers whose limit an invoice cannot exceed
    (above the invoice maximum) are left out, and their over-limit purchases are ordinary ones."""
    rules = SandboxRules(config.sandbox)
    conversion = rules.conversion()
    maximum = parse_decimal_amount(config.invoices.max_amount_kzt, 2)
    found = {}
    for tier in Tier:
        ticket = (rules.tier_limits(tier, conversion).per_operation_tiyn * 11 // 10) // 100 * 100
        if ticket <= maximum:
            found[tier.value] = ticket
    return found


def scaled_aggregate_cap(config: Config) -> str:
    """The sandbox-wide cap scaled by residents / 52,000 (ARCHITECTURE.md, "Sandbox figures")."""
    value, unit = config.sandbox.aggregate_cap.split()
    scaled = (
        (float(value) * config.simulation.residents / 52_000)
        if config.simulation.residents < 52_000
        else float(value)
    )
    return f"{scaled:.2f} {unit}"


class CitySimulation:
    def __init__(
        self, config: Config, out: Path, *, progress: Callable[[RunState, int, int], None] | None = None
    ) -> None:
        self.config = config
        self.sim = config.simulation
        self.out = out
        self.progress = progress
        self.state = RunState()
        self.factory = WalletFactory(self.sim.seed)
        self.timings: dict[str, float] = {}
        self.invoices: dict[str, Invoice] = {}
        self.failures: list[str] = []
        self._waiting_for = ""
        self._node_tips: tuple[str, str] | None = None  # (bitcoin, ethereum) tips, None after mining
        self._wallet_locks: dict[int, asyncio.Lock] = {}
        self._eth_fees: Fees | None = None  # suggested once per step (None: each wallet asks the node)

    # -- set-up ---------------------------------------------------------------------------------------

    def _gateway_config(self, btc: BitcoinDevnet, eth: EthereumDevnet) -> Config:
        data = self.config.model_dump()
        data["store"].update(path=str(self.out / "gateway.sqlite3"))
        data["server"].update(host="127.0.0.1", port=0)
        data["logging"].update(level="warning")
        data["bitcoin"].update(hrp=REGTEST_HRP, network="regtest")
        data["bitcoin"]["rpc"].update(url=btc.url, user="cryptocity", password=btc.api_key)
        data["bitcoin"]["watcher"].update(poll_interval_seconds=0.02)
        data["ethereum"].update(chain_id=eth.chain_id, token_address=eth.token_address)
        data["ethereum"]["rpc"].update(url=eth.url)
        data["ethereum"]["watcher"].update(poll_interval_seconds=0.02)
        data["invoices"].update(expiry_sweep_seconds=0.02)
        data["webhooks"].update(allow_loopback=True)
        data["sandbox"].update(aggregate_cap=scaled_aggregate_cap(self.config), enabled=True)
        return Config.model_validate(data)

    async def run(self) -> dict[str, Any]:
        from sandbox.cli import _pilot_extensions  # the composition `cryptocity serve` uses

        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob("gateway.sqlite3*"):
            stale.unlink()
        wall_start = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            btc = await stack.enter_async_context(BitcoinDevnet(log_path=self.out / "bcoin.log"))
            eth = await stack.enter_async_context(
                EthereumDevnet(log_path=self.out / "anvil.log", automine=False, states_kept=ETH_STATES_KEPT)
            )
            self.btc, self.eth = btc, eth
            assert btc.rpc is not None
            self.rpc = btc.rpc
            funder = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(bytes(16)), REGTEST_HRP)
            await btc.fund(funder)  # 432 coinbases: segwit active, hundreds of mature coins
            self._funder_wallet = funder
            self.gateway_config = config = self._gateway_config(btc, eth)
            self.start = next_local_midnight(config.sandbox.timezone, datetime.now(UTC))
            self.clock = ManualClock(self.start)
            self.plan: Plan = make_plan(self.sim, over_limit_tiyn=over_limit_tickets(config))
            self.market = SimulatedMarket(
                self.sim.seed, self.start, self.plan.total_seconds // 60 + 600, self.plan.rates_outages
            )
            self.audit_key = AuditKey(hashlib_key(self.sim.seed))
            app = create_app(
                config, _pilot_extensions(config, self.audit_key), clock=self.clock, rates=self.market
            )
            self.app = app
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            self.shops = await CityShops.open(lambda: self.clock.now().timestamp(), time.perf_counter)
            stack.push_async_callback(self.shops.close)
            shop_runner = web.AppRunner(self.shops.app(), access_log=None)
            await shop_runner.setup()
            stack.push_async_callback(shop_runner.cleanup)
            shop_site = web.TCPSite(shop_runner, "127.0.0.1", 0)
            await shop_site.start()
            self.shop_base = f"http://127.0.0.1:{shop_runner.addresses[0][1]}"
            self.http = await stack.enter_async_context(aiohttp.ClientSession())
            self.store: Store = app[STORE]
            self.consumers = [WebhookFanout.name, *(c.name for c in app[EXTENSIONS].consumers)]
            await self._onboard(stack)
            await self._register_and_fund()
            self.first_heights = {
                "bitcoin": await self.rpc.block_count() + 1,
                "ethereum": await eth.block_number() + 1,
            }
            self.timings["setup_seconds"] = time.perf_counter() - wall_start
            self.peak_rss = PeakRss()
            self.peak_rss.start()
            played = time.perf_counter()
            try:
                await self._play()
            finally:
                await self.peak_rss.stop()
            self.timings["play_seconds"] = time.perf_counter() - played
            self.block_times = await self._block_times()
            from sandbox.simulation.reconcile import reconcile
            from sandbox.simulation.report import write_outputs

            reconciling = time.perf_counter()
            checks = await reconcile(self)
            self.timings["reconcile_seconds"] = time.perf_counter() - reconciling
            return await write_outputs(self, checks)

    async def _onboard(self, stack: contextlib.AsyncExitStack) -> None:
        registry = MerchantRegistry(
            self.store,
            self.clock,
            key_environment=self.gateway_config.merchants.api_key_environment,
            auth_cache_seconds=60,
        )
        sandbox = Registry(self.store, self.clock)
        self.registry = sandbox
        self.clients: list[CryptoCityClient] = []
        self.merchant_ids: list[str] = []
        self.merchant_keys: list[str] = []
        for planned in self.plan.merchants:
            btc_key, eth_key = self.factory.merchant_keys(planned.index)
            merchant, key = await registry.create(
                f"Alatau {planned.category} #{planned.index}",
                btc_account_key=btc_key.to_public().to_base58(version=NETWORKS["test"]["zpub"]),
                eth_account_key=eth_key.to_public().to_base58(version=NETWORKS["main"]["xpub"]),
                accepted_assets=[Asset.BTC, Asset.ETH, Asset.USDT],
            )
            await sandbox.set_merchant_profile(merchant.id, category=Category(planned.category))
            client = CryptoCityClient(self.base, key.plaintext, max_retries=0)
            stack.push_async_callback(client.close)
            endpoint = await client.create_webhook_endpoint(f"{self.shop_base}/webhooks/{merchant.id}")
            assert endpoint.secret is not None
            self.shops.secrets[merchant.id] = endpoint.secret
            self.clients.append(client)
            self.merchant_ids.append(merchant.id)
            self.merchant_keys.append(key.plaintext)

    async def _register_and_fund(self) -> None:
        """Register every resident with the sandbox; keep (and fund) wallets only for those who pay.

        A resident with no purchase in the plan only needs its scripts registered: its wallet is derived,
        registered and dropped, so the full city holds a quarter of the wallets and funds no idle ones.
        """
        self.btc_wallets: dict[int, BitcoinWallet] = {}
        self.eth_wallets: dict[int, EthereumWallet] = {}
        self.resident_ids: dict[int, str] = {}
        payers = {purchase.resident for purchase in self.plan.purchases}

        async def register(resident: PlannedResident) -> None:
            tier = Tier(resident.tier)
            with_data = tier is Tier.VERIFIED and resident.index % 5 != 0
            found = await self.registry.add_resident(tier, originator_data=with_data)
            self.resident_ids[resident.index] = found.id
            if resident.asset is Asset.BTC:
                wallet = self.factory.bitcoin(resident.index)
                if resident.index in payers:
                    self.btc_wallets[resident.index] = wallet
                for script in registered_scripts(wallet):
                    await self.registry.register_wallet(found.id, "bitcoin", script)
            else:
                eth_wallet = self.factory.ethereum(resident.index)
                if resident.index in payers:
                    self.eth_wallets[resident.index] = eth_wallet
                await self.registry.register_wallet(found.id, "ethereum", eth_wallet.address)

        # Many residents at once, so the store's group commit writes them together (one by one, the
        # full city's quarter of a million registrations would each wait for their own commit).
        residents = self.plan.residents
        for start in range(0, len(residents), REGISTRATION_BATCH):
            await asyncio.gather(*(register(r) for r in residents[start : start + REGISTRATION_BATCH]))
        self.btc_wallets = dict(sorted(self.btc_wallets.items()))
        self.eth_wallets = dict(sorted(self.eth_wallets.items()))
        self.btc_stranger = self.factory.bitcoin(STRANGER)
        self.eth_stranger = self.factory.ethereum(STRANGER)
        btc_funded = [*self.btc_wallets.values(), *([self.btc_stranger] * 20)]
        await fund_bitcoin(self.btc, self._funder_wallet, btc_funded)
        eth_funded = [*self.eth_wallets.values(), self.eth_stranger]
        tokens = [self.plan.residents[i].asset is Asset.USDT for i in self.eth_wallets] + [True]
        await fund_ethereum(self.eth, eth_funded, tokens)
        await self._drain()

    # -- the day --------------------------------------------------------------------------------------

    async def _play(self) -> None:
        step = self.sim.step_seconds
        tail = 0
        index = 0
        while True:
            at = index * step
            await self._outages(at)
            began = time.perf_counter()
            if not self.state.nodes_stopped:
                # a wallet's fee oracle read once a step: no block is mined while the step's purchases pay
                self._eth_fees = await self.eth_stranger.suggest_fees(self.eth.w3)
            await self._concurrently(
                [self._purchase(p) for p in self.plan.by_step.get(index, [])]
                + [self._pay(r) for r in self.state.late.pop(index, [])]
            )
            paid = time.perf_counter()
            if not self.state.nodes_stopped:
                queued, self.state.queued = self.state.queued, []
                await self._concurrently([self._pay(r) for r in queued])
                await self._seen_before_mining()
                await self._mine(at, at + step)
            mined = time.perf_counter()
            await self._drain()
            drained = time.perf_counter()
            for name, seconds in (("pay", paid - began), ("mine", mined - paid), ("drain", drained - mined)):
                self.timings[f"{name}_seconds"] = self.timings.get(f"{name}_seconds", 0.0) + seconds
            if self.progress is not None:
                self.progress(self.state, min(index + 1, self.plan.steps), self.plan.steps)
            self.clock.advance(timedelta(seconds=step))
            index += 1
            if index >= self.plan.steps:
                if not await self._still_open() or tail >= 36:
                    break
                tail += 1
        await self._resume_nodes()
        await self._drain()

    async def _concurrently(self, payments: list[Coroutine[Any, Any, None]]) -> None:
        """Run a step's purchases side by side (residents are independent; a wallet paying twice in a
        step, such as a late payment beside a new purchase or the shared unregistered payer, is
        serialised by its lock). At most ``simulation.concurrency`` at once: a checkout queue per shop
        counter rather than the whole city at one instant."""
        limit = asyncio.Semaphore(self.sim.concurrency)

        async def bounded(payment: Coroutine[Any, Any, None]) -> None:
            async with limit:
                await payment

        await asyncio.gather(*(bounded(p) for p in payments))

    def _wallet_lock(self, wallet: object) -> asyncio.Lock:
        return self._wallet_locks.setdefault(id(wallet), asyncio.Lock())

    async def _block_times(self) -> dict[str, list[str]]:
        """Time stamps of the day's first and last block on each chain (they follow the virtual clock)."""
        first_btc = await self.rpc.call(
            "getblockheader", await self.rpc.block_hash(self.first_heights["bitcoin"])
        )
        last_btc = await self.rpc.call("getblockheader", await self.rpc.best_block_hash())
        first_eth = await self.eth.w3.eth.get_block(self.first_heights["ethereum"])
        last_eth = await self.eth.w3.eth.get_block("latest")

        def stamp(unix: int) -> str:
            return datetime.fromtimestamp(unix, UTC).isoformat()

        return {
            "bitcoin": [stamp(int(first_btc["time"])), stamp(int(last_btc["time"]))],
            "ethereum": [stamp(int(first_eth["timestamp"])), stamp(int(last_eth["timestamp"]))],
        }

    async def _still_open(self) -> bool:
        row = await self.store.read(
            lambda tx: tx.fetchone(
                "SELECT COUNT(*) AS n FROM invoices WHERE status = 'processing' OR (status = 'new' AND expires_at > ?)",
                (isoformat(self.clock.now()),),
            )
        )
        return bool(row and int(row["n"])) or bool(self.state.late) or bool(self.state.queued)

    async def _outages(self, at: int) -> None:
        stop = any(w.contains(at) for w in self.plan.node_outages)
        if stop and not self.state.nodes_stopped:
            for pid in (self.btc.pid, self.eth.pid):
                if pid is not None:
                    os.kill(pid, signal.SIGSTOP)
            self.state.nodes_stopped = True
            self.state.count("node_outages")
        elif not stop and self.state.nodes_stopped:
            await self._resume_nodes()

    async def _resume_nodes(self) -> None:
        if self.state.nodes_stopped:
            for pid in (self.btc.pid, self.eth.pid):
                if pid is not None:
                    os.kill(pid, signal.SIGCONT)
            self.state.nodes_stopped = False

    async def _purchase(self, planned: Purchase) -> None:
        resident = self.plan.residents[planned.resident]
        record = PurchaseRecord(planned, resident.asset)
        self.state.records.append(record)
        client = self.clients[planned.merchant]
        price = format_minor_units(planned.price_tiyn, 2)
        record.order_id = await self.shops.new_order(planned.seq, price)
        try:
            invoice = await client.create_invoice(
                price,
                assets=[resident.asset.value],
                order_id=record.order_id,
                idempotency_key=f"sim-{self.sim.seed}-{planned.seq}",
            )
        except APIError as exc:
            record.outcome = {403: "refused_cap", 503: "refused_rates"}.get(
                exc.status, f"refused_{exc.status}"
            )
            self.state.count(record.outcome)
            return
        record.invoice_id = invoice.id
        await self.shops.orders.attach_invoice(record.order_id, invoice, self.clock.now().timestamp())
        record.outcome = "created"
        self.state.count("invoices")
        self.invoices[invoice.id] = invoice
        if planned.behaviour is Behaviour.ABANDONED:
            record.outcome = "abandoned"
            return
        if planned.behaviour is Behaviour.LATE:
            expires = (invoice.expires_at - self.start).total_seconds()
            late_step = int(expires // self.sim.step_seconds) + 1
            self.state.late.setdefault(late_step, []).append(record)
            return
        await self._pay(record)

    async def _pay(self, record: PurchaseRecord) -> None:
        if self.state.nodes_stopped:
            self.state.queued.append(record)
            return
        assert record.invoice_id is not None
        invoice = self.invoices[record.invoice_id]
        methods = [m for m in invoice.payment_methods if m.asset == record.asset.value]
        if not methods:
            record.outcome = "no_method"  # below the asset's dust limit: the invoice left it out
            self.state.count("no_method")
            return
        uri = await self._read_request(methods[0], record)
        request = parse_payment_uri(uri)
        behaviour = record.purchase.behaviour
        try:
            if isinstance(request, Bip21Request):
                await self._pay_bitcoin(record, request, behaviour)
            else:
                await self._pay_ethereum(record, request, behaviour)
        except (InsufficientFunds, WalletError, EthereumWalletError) as exc:
            record.outcome = "wallet_failed"
            self.state.count("wallet_failed")
            self.failures.append(f"{record.purchase.seq}: {type(exc).__name__}: {exc}")

    async def _read_request(self, method: PaymentMethod, record: PurchaseRecord) -> str:
        if not record.purchase.read_qr:
            return method.uri
        # The shop's terminal shows the invoice's QR image (fetched with the merchant's key) and the
        # resident's wallet decodes it. The link carries the gateway's public URL; here the gateway
        # listens on a port chosen at start.
        path = URL(method.qr.png).path_qs
        key = self.merchant_keys[record.purchase.merchant]
        async with self.http.get(
            f"{self.base}{path}", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            response.raise_for_status()
            image = await response.read()
        with tempfile.NamedTemporaryFile(suffix=".png", dir=self.out) as handle:
            handle.write(image)
            handle.flush()
            text = read_qr_text(Path(handle.name))
        record.read_from_qr = True
        self.state.count("qr_decoded")
        if text != method.uri:
            self.state.count("qr_mismatch")
        return text

    def _adjust(self, amount: int, behaviour: Behaviour) -> int:
        if behaviour is Behaviour.UNDERPAY:
            return amount * 9 // 10
        if behaviour is Behaviour.OVERPAY:
            return amount * 12 // 10
        return amount

    async def _pay_bitcoin(self, record: PurchaseRecord, request: Bip21Request, behaviour: Behaviour) -> None:
        index = record.purchase.resident
        wallet = self.btc_stranger if behaviour is Behaviour.UNREGISTERED else self.btc_wallets[index]
        assert request.amount_sat is not None
        amount = self._adjust(request.amount_sat, behaviour)
        async with self._wallet_lock(wallet):
            payment = await wallet.pay(self.rpc, request.address, amount)
        record.txid, record.paid_minor, record.outcome = payment.txid, amount, "paid"
        record.broadcast_wall = time.perf_counter()
        self.state.expected_btc.add(payment.txid)
        self.state.count("btc_payments")
        if behaviour is Behaviour.DOUBLE_SPEND:
            self.state.conflicts.append((wallet, wallet.build_conflicting(payment)))

    async def _pay_ethereum(
        self, record: PurchaseRecord, request: Eip681Native | Eip681TokenTransfer, behaviour: Behaviour
    ) -> None:
        index = record.purchase.resident
        wallet = self.eth_stranger if behaviour is Behaviour.UNREGISTERED else self.eth_wallets[index]
        async with self._wallet_lock(wallet):
            await self._send_ethereum(record, wallet, request, behaviour)

    async def _send_ethereum(
        self,
        record: PurchaseRecord,
        wallet: EthereumWallet,
        request: Eip681Native | Eip681TokenTransfer,
        behaviour: Behaviour,
    ) -> None:
        w3 = self.eth.w3
        if isinstance(request, Eip681TokenTransfer):
            amount = self._adjust(request.amount_units, behaviour)
            signed = await wallet.build_token_transfer(
                w3, request.token, request.to, amount, fees=self._eth_fees
            )
        else:
            amount = self._adjust(request.value_wei, behaviour)
            signed = await wallet.build_eth_transfer(w3, request.address, amount, fees=self._eth_fees)
        await wallet.send_raw_prepared(w3, signed)
        record.txid, record.paid_minor, record.outcome = signed.tx_hash, amount, "paid"
        record.broadcast_wall = time.perf_counter()
        self.state.count("eth_payments")
        if behaviour is Behaviour.REPLACEMENT:
            # the same nonce, higher fees, one base unit to the payer's own address: the payment never lands
            replacement = wallet.build_replacement(signed, to=wallet.address, amount_units=1)
            await wallet.send_raw_prepared(w3, replacement)
            record.outcome = "replaced"
            self.state.count("eth_replaced")

    async def _mine(self, start: int, end: int) -> None:
        """Mine the blocks due in ``(start, end]`` (virtual seconds of the day), each stamped with its own
        virtual time: bcoin through ``setmocktime``, anvil through ``evm_setNextBlockTimestamp`` and
        ``anvil_mine``'s interval (ARCHITECTURE.md, "Clocks")."""
        self._node_tips = None
        btc_every, eth_every = self.sim.btc_block_seconds, self.sim.eth_block_seconds
        btc_times = [t for t in range((start // btc_every + 1) * btc_every, end + 1, btc_every)]
        eth_blocks = end // eth_every - start // eth_every
        day = int(self.start.timestamp())
        reorg = any(start <= r < end for r in self.plan.reorgs_at)
        miner = self._funder_wallet.address(1)
        if btc_times or reorg:  # bcoin refuses blocks more than 2 h ahead of its own clock
            await self.btc.set_mock_time(day + start)
        if btc_times and self.state.conflicts:
            raws = [conflict.raw for _, conflict in self.state.conflicts]
            await self.btc.reorg(
                0, txs_in_branch=raws, coinbase_address=miner, not_before=day + btc_times.pop(0)
            )
            for wallet, _ in self.state.conflicts:
                await wallet.scan(self.rpc)
            self.state.count("btc_double_spends_mined", len(raws))
            self.state.conflicts.clear()
        if reorg:
            depth = self.sim.behaviours.reorg_depth
            await self.btc.reorg(depth, coinbase_address=miner, not_before=day + start)
            await self.eth.reorg(depth)
            self.state.count("reorgs")
        t0 = time.perf_counter()
        for at in btc_times:
            await self.btc.set_mock_time(day + at)
            await self.btc.mine(1, miner)
        t1 = time.perf_counter()
        if eth_blocks > 0:
            await self.eth.set_next_block_timestamp(day + (start // eth_every + 1) * eth_every)
            await self.eth.call("anvil_mine", hex(eth_blocks), hex(eth_every))
        t2 = time.perf_counter()
        self.timings["mine_btc_seconds"] = self.timings.get("mine_btc_seconds", 0.0) + t1 - t0
        self.timings["mine_eth_seconds"] = self.timings.get("mine_eth_seconds", 0.0) + t2 - t1

    # -- waiting for the gateway ----------------------------------------------------------------------

    async def _drain(self) -> None:
        deadline = asyncio.get_running_loop().time() + DRAIN_DEADLINE_SECONDS
        while True:
            began = time.perf_counter()
            done = await self._caught_up()
            # where the waiting goes (the first word of what is awaited: chains, bitcoin, outbox, ...)
            name = f"wait_{self._waiting_for.split(' ', 1)[0].rstrip(':')}_seconds"
            if done:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise SimulationStuck(await self._lag_report())
            await asyncio.sleep(0.02)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - began

    async def _caught_up(self) -> bool:
        now = isoformat(self.clock.now())
        self._waiting_for = "chains"
        if not self.state.nodes_stopped:
            watchers = self.app[WATCHERS]
            if self._node_tips is None:  # asked once after each change: only the simulation mines
                eth_head = await self.eth.block_hash(await self.eth.block_number())
                self._node_tips = (await self.rpc.best_block_hash(), eth_head)
            btc_tip, eth_tip = self._node_tips
            if watchers["bitcoin"].status.tip_hash != btc_tip:
                self._waiting_for = f"bitcoin watcher at {watchers['bitcoin'].status.tip_height}: {watchers['bitcoin'].status.last_error}"
                return False
            if watchers["ethereum"].status.tip_hash != eth_tip:
                self._waiting_for = f"ethereum watcher at {watchers['ethereum'].status.tip_height}: {watchers['ethereum'].status.last_error}"
                return False
            if not await self._btc_recorded():
                return False

        async def backlog(tx: Any) -> bool:
            top = int((await tx.fetchone("SELECT COALESCE(MAX(seq), 0) AS seq FROM outbox"))["seq"])
            cursors = {
                r["consumer"]: int(r["position"]) for r in await tx.fetchall("SELECT * FROM consumer_cursors")
            }
            behind = [name for name in self.consumers if cursors.get(name, 0) < top]
            if behind:
                self._waiting_for = f"outbox consumers behind seq {top}: {behind}"
                return False
            due = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'pending'"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
                (now,),
            )
            expiring = await tx.fetchone(
                # held invoices wait for the regulator, not the clock
                "SELECT COUNT(*) AS n FROM invoices WHERE status = 'new' AND expires_at <= ?"
                " AND flags NOT LIKE '%on_hold%'",
                (now,),
            )
            self._waiting_for = f"webhooks: {due['n']} deliveries due, {expiring['n']} invoices to expire"
            return int(due["n"]) == 0 and int(expiring["n"]) == 0

        return bool(await self.store.read(backlog))

    async def _btc_recorded(self) -> bool:
        """Has the gateway recorded every Bitcoin payment broadcast so far (from the mempool or a block)?"""
        if self.state.expected_btc:
            keys = list(self.state.expected_btc)
            marks = ",".join("?" * len(keys))
            rows = await self.store.read(
                lambda tx: tx.fetchall(
                    f"SELECT DISTINCT substr(payment_key, 1, 64) AS txid FROM payments WHERE chain = 'bitcoin'"  # noqa: S608
                    f" AND substr(payment_key, 1, 64) IN ({marks})",
                    tuple(keys),
                )
            )
            self.state.expected_btc -= {r["txid"] for r in rows}
        if self.state.expected_btc:
            self._waiting_for = (
                f"recording: bitcoin payments not recorded: {sorted(self.state.expected_btc)[:3]}"
            )
            return False
        return True

    async def _seen_before_mining(self) -> None:
        """Wait until the gateway has seen the step's Bitcoin payments in the mempool, as it would between
        blocks ten minutes apart; a double spend is then always a payment the gateway saw unconfirmed and
        loses to a competing block, whatever the wall time of the step."""
        deadline = asyncio.get_running_loop().time() + DRAIN_DEADLINE_SECONDS
        began = time.perf_counter()
        while not await self._btc_recorded():
            if asyncio.get_running_loop().time() > deadline:
                raise SimulationStuck(await self._lag_report())
            await asyncio.sleep(0.01)
        self.timings["wait_mempool_seconds"] = self.timings.get("wait_mempool_seconds", 0.0) + (
            time.perf_counter() - began
        )

    async def _lag_report(self) -> str:
        return (
            f"the gateway did not catch up within {DRAIN_DEADLINE_SECONDS:.0f} s (clock {self.clock.now()}):"
            f" waiting for {self._waiting_for}"
        )


class SimulationStuck(Exception):
    """The gateway did not reach a quiet state in time: a bug, or a machine far too slow."""


def hashlib_key(seed: int) -> bytes:
    """The run's audit key: fixed by the seed, so a run's log can be verified again afterwards."""
    return hashlib.sha256(f"cryptocity-simulation-audit:{seed}".encode()).digest()
