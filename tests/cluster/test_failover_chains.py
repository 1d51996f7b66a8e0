"""SIGKILL the leader while blocks with payments are being mined: another process takes over, no payment is
missed or counted twice, and no webhook event is lost.

The other failover test (test_processes.py) kills an idle leader; this one kills it in the middle of the
work the leader exists for. Three `cryptocity serve` processes share one PostgreSQL schema and watch a real
bcoin regtest node and a real anvil node (automine off, so blocks come only when the test mines them).
Invoices in BTC, ETH and USDT with different confirmation rules are paid one after another while a miner
adds a Bitcoin block and two Ethereum blocks every half second, so at the moment of the kill some payments
sit in the mempool, some are detected but short of their confirmations, and some blocks have not been
processed yet. Payments go on during and after the takeover. Everything the dead leader left half done
must be finished by the new leader from what is stored (watcher checkpoints, outbox cursors, webhook
leases), exactly once where the store is concerned and at least once at the webhook receiver.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.store import PostgresStore
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from sandbox.ledger import model as ledger_model
from sandbox.ledger import store as ledger_store
from tests.cluster.processes import (
    Cluster,
    ServeProcess,
    cluster_env,
    create_merchant,
    leaders,
    pid_exists,
    start_serve,
    wait_for_leader,
)
from tests.conftest import pg_dsn
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# (asset, price in KZT, confirmations config.toml's rules ask for at that price). Each kind is paid four
# times; the deep ones (3 BTC, 6 EVM confirmations) are the payments most likely to be caught half
# confirmed by the kill, the 0-confirmation BTC ones settle from the mempool alone.
KINDS: tuple[tuple[str, int, int], ...] = (
    ("BTC", 12_000, 0),
    ("ETH", 20_000, 1),
    ("BTC", 60_000, 1),
    ("USDT", 15_000, 1),
    ("BTC", 600_000, 3),
    ("ETH", 150_000, 6),
    ("USDT", 150_000, 6),
)
ROUNDS = 4
KILL_AFTER = 2 * len(KINDS)  # payments sent before the kill: the last of them is a 6-confirmation USDT one
# Paid in one burst with the miner paused, mined by the test, and the leader killed the moment those blocks
# exist: a BTC (0 and 1 confirmation), an ETH and a USDT payment (KINDS' first four) the leader has at most
# glimpsed in the mempool, in blocks it has most likely not processed.
BURST = 4
# ...and killed this long after those blocks were mined: at random up to 0.2 s, so that runs kill the leader
# at different points of its work on them (before it reads them, while it records their payments, before or
# after it stores them); the delay is in the report line, and this variable replays one.
KILL_DELAY_ENV = "CRYPTOCITY_TEST_FAILOVER_KILL_DELAY"
# Mining rounds right after the kill, before anyone can take over: the new leader's first sync then jumps
# 6 Ethereum blocks, past the counting window of payments the old leader saw with 1 or 2 of their 6
# confirmations (the watcher used to leave those uncounted for good; gateway/chains/watcher.py).
LEADERLESS_ROUNDS = 3
PAY_PAUSE_SECONDS = 0.25
MINE_EVERY_SECONDS = 0.5
ETH_BLOCKS_PER_ROUND = 2
SETTLE_DEADLINE_SECONDS = 60.0  # from the kill until every invoice is settled
DELIVERABLE = ("invoice.", "payment.")  # the event types webhooks carry (gateway/webhooks/endpoints.py)


@dataclass
class Chains:
    """Both local chains and the funded wallets the residents pay from."""

    bitcoin: BitcoinDevnet
    ethereum: EthereumDevnet
    btc_wallet: BitcoinWallet
    eth_payer: EthereumWallet  # dev account 1: pays the ETH invoices
    usdt_payer: EthereumWallet  # dev account 2: pays the USDT invoices (its own nonces)


@dataclass
class Sent:
    """One invoice and the payment the test made for it."""

    invoice_id: str
    asset: str
    due_minor: int
    confirmations: int
    tx: str = ""  # BTC txid or EVM tx hash, once paid


@dataclass
class Receiver:
    """The merchant's webhook endpoint: every delivery, duplicates included, in arrival order."""

    url: str
    deliveries: list[dict[str, Any]]

    def counts(self) -> Counter[str]:
        return Counter(body["id"] for body in self.deliveries)


@pytest.fixture
async def chains(tmp_path: Path) -> AsyncIterator[Chains]:
    """bcoin and anvil on free loopback ports, started together and stopped by PID (their own stop)."""
    from tests.reliability.crash_load import open_chains  # here: crash_load imports this module's Chains

    async with open_chains(tmp_path, None, usdt_units=10**12) as started:  # a million tUSDT
        yield started


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    """A loopback webhook receiver that answers 200 to everything and remembers it."""
    deliveries: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        deliveries.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return Receiver(str(server.make_url("/hook")), deliveries)


@pytest.fixture
async def cluster(tmp_path: Path, pg_schema: str, chains: Chains) -> AsyncIterator[Cluster]:
    """Three gateways watching both chains; stopped by PID (SIGTERM, all at once) before the nodes go."""
    env = cluster_env(
        tmp_path,
        pg_schema,
        CRYPTOCITY_BITCOIN__NETWORK="regtest",
        CRYPTOCITY_BITCOIN__HRP=REGTEST_HRP,
        CRYPTOCITY_BITCOIN__RPC__URL=chains.bitcoin.url,
        CRYPTOCITY_BITCOIN__RPC__USER="cryptocity",
        CRYPTOCITY_BITCOIN__RPC__PASSWORD=chains.bitcoin.api_key,
        CRYPTOCITY_BITCOIN__WATCHER__POLL_INTERVAL_SECONDS="0.2",
        CRYPTOCITY_ETHEREUM__RPC__URL=chains.ethereum.url,
        CRYPTOCITY_ETHEREUM__CHAIN_ID=str(chains.ethereum.chain_id),
        CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS=chains.ethereum.token_address,
        CRYPTOCITY_ETHEREUM__WATCHER__POLL_INTERVAL_SECONDS="0.2",
        # A delivery the killed leader had claimed is attempted again once its lease runs out: short here,
        # so the test does not wait the production minute for it.
        CRYPTOCITY_WEBHOOKS__LEASE_SECONDS="5",
    )
    started = Cluster(tmp_path, env)
    try:
        yield started
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in started.processes))


async def test_sigkill_of_the_leader_while_payments_are_mined_loses_and_doubles_nothing(
    cluster: Cluster,
    chains: Chains,
    receiver: Receiver,
    pg_schema: str,
) -> None:
    began = time.monotonic()
    kill_delay = float(os.environ.get(KILL_DELAY_ENV) or random.uniform(0.0, 0.2))
    merchant_id, key = await create_merchant(pg_schema)  # also migrates the fresh schema, once
    # Started side by side (each is a few seconds of imports on a 2-core machine); any one may win the lock.
    started = await asyncio.gather(
        *(asyncio.to_thread(start_serve, cluster.workdir, cluster.env, name=f"gateway{n}") for n in range(3)),
        return_exceptions=True,
    )
    cluster.processes.extend(p for p in started if isinstance(p, ServeProcess))  # the fixture stops them
    for failure in started:
        if isinstance(failure, BaseException):
            raise failure
    store = await PostgresStore.open(pg_dsn(), schema=pg_schema, pool_size=2, migrate=False)
    miner: asyncio.Task[None] | None = None
    mining, mine_lock = asyncio.Event(), asyncio.Lock()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, key)
            leader_pid, _ = await wait_for_leader(session, cluster.processes, seconds=20)
            leader = next(p for p in cluster.processes if p.pid == leader_pid)
            await api.post(cluster.processes[0], "/v1/webhook-endpoints", {"url": receiver.url})
            await wait_watchers_at_tip(session, leader, chains)

            # Every invoice first, through every process (any process may create any invoice).
            plan = [(asset, kzt + n, conf) for n in range(ROUNDS) for asset, kzt, conf in KINDS]
            invoices = await asyncio.gather(
                *(
                    api.post(
                        cluster.processes[n % 3],
                        "/v1/invoices",
                        {"amount": f"{kzt}.00", "currency": "KZT", "assets": [asset], "order_id": f"f-{n}"},
                    )
                    for n, (asset, kzt, _) in enumerate(plan)
                )
            )
            sent = [
                Sent(invoice["id"], asset, method_of(invoice, asset)["amount_due_minor"], conf)
                for invoice, (asset, _, conf) in zip(invoices, plan, strict=True)
            ]

            mining.set()
            miner = asyncio.create_task(mine(chains, mining, mine_lock))
            for n, invoice in enumerate(invoices[:KILL_AFTER]):
                sent[n].tx = await pay(chains, method_of(invoice, sent[n].asset)["uri"], sent[n].asset)
                await asyncio.sleep(PAY_PAUSE_SECONDS)

            async with mine_lock:  # the miner waits: these blocks are the test's own
                for n in range(KILL_AFTER, KILL_AFTER + BURST):
                    sent[n].tx = await pay(
                        chains, method_of(invoices[n], sent[n].asset)["uri"], sent[n].asset
                    )
                await mine_round(chains)
                await asyncio.sleep(kill_delay)
                leader.kill()  # SIGKILL by PID: no clean-up; its session (and the lock) ends with its sockets
                killed_at = time.monotonic()
                settled_before = await settled_ids(store, merchant_id)
                detected_before = await detected_ids(store, merchant_id)
                for _ in range(LEADERLESS_ROUNDS):  # the chains move on while nobody leads
                    await mine_round(chains)
            paid_before = KILL_AFTER + BURST
            assert not pid_exists(leader.pid)
            in_flight = [s.invoice_id for s in sent[:paid_before] if s.invoice_id not in settled_before]
            undetected = [s.invoice_id for s in sent[:paid_before] if s.invoice_id not in detected_before]
            survivors = cluster.alive()
            found_at: list[float] = []
            takeover = asyncio.create_task(wait_for_leader(session, survivors, seconds=15))
            takeover.add_done_callback(lambda _: found_at.append(time.monotonic()))
            for n in range(paid_before, len(invoices)):  # paying goes on, leader or not
                sent[n].tx = await pay(chains, method_of(invoices[n], sent[n].asset)["uri"], sent[n].asset)
                await asyncio.sleep(PAY_PAUSE_SECONDS)
            new_leader, polls = await takeover
            took_over_in = found_at[0] - killed_at
            assert new_leader != leader_pid and new_leader in {p.pid for p in survivors}
            assert all(len(found) <= 1 for found in polls), polls  # never two leaders among the survivors

            everyone = {s.invoice_id for s in sent}

            async def all_settled() -> bool:
                return await settled_ids(store, merchant_id) >= everyone

            await eventually(
                all_settled,
                SETTLE_DEADLINE_SECONDS - (time.monotonic() - killed_at),
                lambda: f"not every invoice settled within {SETTLE_DEADLINE_SECONDS:g} s of the kill:",
                store_detail=lambda: diagnose(store, merchant_id, chains, sent),
            )
            settled_in = time.monotonic() - killed_at
            mining.clear()
            await miner
            miner = None

            # The leader's consumers (webhook fan-out, ledger, audit) catch up and the webhooks arrive.
            deliverable = await deliverable_events(store, merchant_id)

            async def delivered() -> bool:
                return set(receiver.counts()) >= set(deliverable) and await consumers_caught_up(store)

            await eventually(
                delivered,
                30.0,
                lambda: f"webhooks missing: {sorted(set(deliverable) - set(receiver.counts()))}",
            )
            await asyncio.sleep(1.0)  # room for a late duplicate to show up in the report
            assert await leaders(session, survivors) == [new_leader]

        await check_payments(store, merchant_id, sent)
        await check_outbox(store, merchant_id, sent)
        await check_webhooks(store, merchant_id, receiver, deliverable)
        await check_ledger(store, merchant_id, sent)
        duplicates = {event: n for event, n in receiver.counts().items() if n > 1}
        print(  # shown with -s or on failure: what this run looked like
            f"failover with payments: {len(sent)} invoices; kill {kill_delay:.3f} s after the burst's blocks; "
            f"of the {paid_before} paid before the kill "
            f"{len(in_flight)} unsettled and {len(undetected)} not yet recorded at the kill; new leader "
            f"after {took_over_in:.1f} s, all settled "
            f"{settled_in:.1f} s after the kill; {len(deliverable)} webhook events, "
            f"{len(receiver.deliveries)} deliveries, duplicates {duplicates or 'none'}; "
            f"test {time.monotonic() - began:.1f} s"
        )
        assert in_flight, "every payment was settled before the kill: the kill tested nothing"

        # The survivors stop cleanly (exit status 0); the fixture would stop them anyway.
        statuses = await asyncio.gather(*(asyncio.to_thread(p.stop) for p in survivors))
        assert statuses == [0] * len(survivors), [p.output()[-2000:] for p in survivors]
    finally:
        mining.clear()
        if miner is not None:
            miner.cancel()
            await asyncio.gather(miner, return_exceptions=True)
        await store.close()


# -- the residents and the miner --------------------------------------------------------------------------


async def pay(chains: Chains, uri: str, asset: str) -> str:
    """Pay an invoice's payment URI from the wallet of its asset; the transaction id (nothing waited for)."""
    if asset == "BTC":
        assert chains.bitcoin.rpc is not None
        return (await chains.btc_wallet.pay_uri(chains.bitcoin.rpc, uri)).txid
    payer = chains.eth_payer if asset == "ETH" else chains.usdt_payer
    return str((await payer.pay_uri(chains.ethereum.w3, uri, wait=False)).tx_hash)


async def mine(chains: Chains, running: asyncio.Event, lock: asyncio.Lock) -> None:
    """A mining round every half second while ``running`` is set: what confirms the payments, whoever leads
    at the moment. A round waits while the test holds ``lock``."""
    while running.is_set():
        async with lock:
            await mine_round(chains)
        await asyncio.sleep(MINE_EVERY_SECONDS)


async def mine_round(chains: Chains) -> None:
    """One Bitcoin block and a few Ethereum blocks, taking in whatever the mempools hold."""
    await chains.bitcoin.mine(1, chains.btc_wallet.address(0))
    await chains.ethereum.mine(ETH_BLOCKS_PER_ROUND)


# -- talking to the gateways ------------------------------------------------------------------------------


@dataclass
class Api:
    session: aiohttp.ClientSession
    key: str

    async def post(self, process: ServeProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(
            process.base_url + path, json=body, headers={"Authorization": f"Bearer {self.key}"}
        ) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status == 201, answer
            return answer


def method_of(invoice: dict[str, Any], asset: str) -> dict[str, Any]:
    return next(m for m in invoice["payment_methods"] if m["asset"] == asset)


async def wait_watchers_at_tip(session: aiohttp.ClientSession, leader: ServeProcess, chains: Chains) -> None:
    """Until the leader's watchers have stored a checkpoint at each node's tip.

    A watcher with no checkpoint starts at the node's tip, so a payment mined before that would be behind
    it; from the first checkpoint on, every later block is processed by this leader or its successor.
    """
    assert chains.bitcoin.rpc is not None
    want = {
        "bitcoin": await chains.bitcoin.rpc.best_block_hash(),
        "ethereum": await chains.ethereum.block_hash(await chains.ethereum.block_number()),
    }
    seen: dict[str, Any] = {}

    async def at_tip() -> bool:
        async with session.get(leader.base_url + "/readyz") as response:
            seen.update(await response.json())
        return all(seen.get("chains", {}).get(chain, {}).get("tip_hash") == h for chain, h in want.items())

    await eventually(at_tip, 30.0, lambda: f"watchers not at the tip: {seen.get('chains')}, want {want}")


# -- reading the store ------------------------------------------------------------------------------------


async def settled_ids(store: PostgresStore, merchant_id: str) -> set[str]:
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT id FROM invoices WHERE merchant_id = ? AND status = 'settled'", (merchant_id,)
        )
    )
    return {row["id"] for row in rows}


async def detected_ids(store: PostgresStore, merchant_id: str) -> set[str]:
    """Invoices of the merchant with a payment recorded (in the mempool or in a block)."""
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT DISTINCT p.invoice_id FROM payments p JOIN invoices i ON i.id = p.invoice_id"
            " WHERE i.merchant_id = ?",
            (merchant_id,),
        )
    )
    return {row["invoice_id"] for row in rows}


async def invoice_states(store: PostgresStore, merchant_id: str) -> str:
    """What a failure needs to be understood: the unsettled invoices, their payments, the stored tips."""

    async def read(tx: Any) -> str:
        invoices = await tx.fetchall(
            "SELECT id, status, flags FROM invoices WHERE merchant_id = ? AND status <> 'settled' ORDER BY id",
            (merchant_id,),
        )
        lines = []
        for invoice in invoices:
            payments = await tx.fetchall(
                "SELECT payment_key, asset, status, confirmations, block_height, block_hash FROM payments"
                " WHERE invoice_id = ?",
                (invoice["id"],),
            )
            lines.append(
                f"{invoice['id']} {invoice['status']} {invoice['flags']} {[dict(p) for p in payments]}"
            )
        tips = await tx.fetchall(
            "SELECT chain, MIN(height) AS low, MAX(height) AS high FROM chain_blocks GROUP BY chain"
        )
        lines.append(f"stored chains: {[dict(t) for t in tips]}")
        return "; ".join(lines)

    result: str = await store.read(read)
    return result


async def diagnose(store: PostgresStore, merchant_id: str, chains: Chains, sent: list[Sent]) -> str:
    """The store's side (:func:`invoice_states`) and the nodes' side of the unsettled invoices."""
    settled = await settled_ids(store, merchant_id)
    nodes = []
    for s in sent:
        if s.invoice_id in settled or not s.tx:
            continue
        if s.asset == "BTC":
            assert chains.bitcoin.rpc is not None
            entry = await chains.bitcoin.rpc.call("getrawtransaction", s.tx, True)
            nodes.append(f"{s.invoice_id} {s.tx} block {entry.get('blockhash')}")
        else:
            receipt = await chains.ethereum.w3.eth.get_transaction_receipt(s.tx)  # type: ignore[arg-type]
            nodes.append(f"{s.invoice_id} {s.tx} block {receipt['blockNumber']} {receipt['blockHash'].hex()}")
    head = await chains.ethereum.block_number()
    return f"{await invoice_states(store, merchant_id)}; nodes (eth head {head}): {nodes}"


async def deliverable_events(store: PostgresStore, merchant_id: str) -> dict[str, tuple[str, str | None]]:
    """Every outbox event of the merchant a webhook endpoint receives: id → (type, invoice id)."""
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT id, type, invoice_id FROM outbox WHERE merchant_id = ? ORDER BY seq", (merchant_id,)
        )
    )
    return {r["id"]: (r["type"], r["invoice_id"]) for r in rows if r["type"].startswith(DELIVERABLE)}


async def consumers_caught_up(store: PostgresStore) -> bool:
    """Every outbox consumer's cursor is at the last event, and no webhook delivery is still to be made."""

    async def read(tx: Any) -> bool:
        last = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) AS seq FROM outbox")
        cursors = await tx.fetchall("SELECT consumer, position FROM consumer_cursors")
        open_deliveries = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status <> 'succeeded'"
        )
        names = {row["consumer"] for row in cursors}
        return (
            {"webhooks", "ledger", "audit"} <= names
            and all(int(row["position"]) >= int(last["seq"]) for row in cursors)
            and int(open_deliveries["n"]) == 0
        )

    result: bool = await store.read(read)
    return result


async def eventually(
    check: Callable[[], Awaitable[bool]],
    seconds: float,
    what: Callable[[], str],
    store_detail: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll ``check`` every 0.2 s until it holds; fail with ``what()`` (and the store's detail) if not."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            detail = await store_detail() if store_detail is not None else ""
            raise AssertionError(f"{what()} {detail}")
        await asyncio.sleep(0.2)


# -- the checks -------------------------------------------------------------------------------------------


async def check_payments(store: PostgresStore, merchant_id: str, sent: list[Sent]) -> None:
    """Each invoice has exactly the one payment the test sent, for the amount due, counted once."""
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT p.invoice_id, p.payment_key, p.asset, p.amount_minor, p.status, p.confirmations"
            " FROM payments p JOIN invoices i ON i.id = p.invoice_id WHERE i.merchant_id = ?",
            (merchant_id,),
        )
    )
    by_invoice: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_invoice.setdefault(row["invoice_id"], []).append(dict(row))
    assert len(rows) == len(sent), f"{len(rows)} payment rows for {len(sent)} payments"
    for s in sent:
        found = by_invoice.get(s.invoice_id, [])
        assert len(found) == 1, (s, found)
        [row] = found
        assert row["payment_key"].split(":")[0].lower() == s.tx.lower(), (s, row)
        if s.asset == "ETH":
            assert ":" not in row["payment_key"], row  # native ether: the tx hash alone
        else:
            assert ":" in row["payment_key"], row  # txid:vout, tx_hash:log_index
        assert (row["asset"], int(row["amount_minor"]), row["status"]) == (s.asset, s.due_minor, "accepted")
        assert int(row["confirmations"]) >= max(s.confirmations, 1), (s, row)  # every one is mined by now
    unaccounted = await store.read(lambda tx: tx.fetchone("SELECT COUNT(*) AS n FROM unaccounted_payments"))
    assert unaccounted is not None and int(unaccounted["n"]) == 0

    invoices = await store.read(
        lambda tx: tx.fetchall("SELECT id, status, flags FROM invoices WHERE merchant_id = ?", (merchant_id,))
    )
    assert {r["id"]: (r["status"], r["flags"]) for r in invoices} == {
        s.invoice_id: ("settled", "[]") for s in sent
    }  # settled, and not overpaid: no payment was counted twice


async def check_outbox(store: PostgresStore, merchant_id: str, sent: list[Sent]) -> None:
    """One event of each kind per invoice: created, detected, confirmed, settled; nothing dropped."""
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT invoice_id, type FROM outbox WHERE merchant_id = ? AND invoice_id IS NOT NULL",
            (merchant_id,),
        )
    )
    types: dict[str, Counter[str]] = {}
    for row in rows:
        types.setdefault(row["invoice_id"], Counter())[row["type"]] += 1
    for s in sent:
        counted = types.get(s.invoice_id, Counter())
        once = {"invoice.created", "payment.detected", "payment.confirmed", "invoice.settled"}
        assert {t: counted[t] for t in once} == dict.fromkeys(once, 1), (s, counted)
        assert counted["invoice.processing"] <= 1, (s, counted)
        assert set(counted) <= {*once, "invoice.processing"}, (s, counted)  # no drop, reversal, expiry


async def check_webhooks(
    store: PostgresStore, merchant_id: str, receiver: Receiver, deliverable: dict[str, tuple[str, str | None]]
) -> None:
    """Every deliverable event reached the receiver (duplicates allowed: at least once), as written; and
    the fan-out made one delivery per event, even across the takeover."""
    got = {body["id"]: body for body in receiver.deliveries}
    missing = set(deliverable) - set(got)
    assert not missing, f"webhook events never delivered: {sorted(missing)}"
    assert set(got) <= set(deliverable), (
        f"deliveries of unknown events: {sorted(set(got) - set(deliverable))}"
    )
    for event_id, (event_type, invoice_id) in deliverable.items():
        body = got[event_id]
        assert (body["type"], body["data"]["invoice"]["id"]) == (event_type, invoice_id), body
    rows = await store.read(
        lambda tx: tx.fetchall(
            "SELECT event_id, COUNT(*) AS n FROM webhook_deliveries WHERE merchant_id = ? GROUP BY event_id",
            (merchant_id,),
        )
    )
    assert {r["event_id"]: int(r["n"]) for r in rows} == dict.fromkeys(deliverable, 1)


async def check_ledger(store: PostgresStore, merchant_id: str, sent: list[Sent]) -> None:
    """The ledger consumer (part of every `serve`) booked each settlement once and balances."""

    async def read(tx: Any) -> tuple[int, list[Any], int, dict[str, int], int]:
        trial = await ledger_store.trial_balance(tx)
        mismatches = await ledger_store.verify_balances(tx)
        settlement = await ledger_store.balance(tx, ledger_model.settlement_account(merchant_id))
        legs = await tx.fetchall(
            "SELECT invoice_id, leg FROM ledger_entries WHERE merchant_id = ?", (merchant_id,)
        )
        prices = await tx.fetchone(
            "SELECT COALESCE(SUM(price_tiyn), 0) AS total FROM invoices WHERE merchant_id = ?", (merchant_id,)
        )
        by_invoice: Counter[str] = Counter()
        for row in legs:
            assert row["leg"] == "settle", dict(row)  # nothing reversed, adjusted or re-booked
            by_invoice[row["invoice_id"]] += 1
        return trial, mismatches, settlement, dict(by_invoice), int(prices["total"])

    trial, mismatches, settlement, settles, prices = await store.read(read)
    assert trial == 0
    assert mismatches == []
    assert settles == {s.invoice_id: 1 for s in sent}
    assert settlement == prices
