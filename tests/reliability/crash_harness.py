"""The crash harness: a real gateway SIGKILLed again and again under load, then checked for any damage.

One run: a bcoin regtest node and an anvil node with TestUSDT (sandbox/devnets), a webhook receiver on
loopback (crash_receiver.py), and `cryptocity serve` on an SQLite store with both watchers on and webhooks
to the receiver (crash_gateway.py). While invoices are created over the API and paid on the chains in
BTC, ETH and USDT, with blocks mined every second (crash_load.py, crash_plan.py), the gateway is killed
with SIGKILL at random moments, some aimed at the windows that matter (AIMS below), and restarted on the
same store each time. After the last restart the harness stops the
load, mines until everything is confirmed, waits for the watchers, the outbox consumers and the webhooks,
stops the gateway cleanly and checks the store against what it did (crash_checks.py).

Why SIGKILL and not SIGTERM: a clean shutdown finishes what it started; a kill leaves whatever was not
committed undone, at any instruction. The gateway claims that every state change and its outbox event
commit together, that consumers advance their cursors with their effects, that watchers re-read what they
had not checkpointed and that payment keys make re-processing a no-op. If any of that were false somewhere,
some kill would land in the gap and a payment, an event or a ledger entry would be lost or doubled.

Settings come from the environment (so the full-size run is the same test, bigger):
``CRYPTOCITY_CRASH_KILLS`` (default 3), ``CRYPTOCITY_CRASH_SEED`` (default: random, printed; the seed fixes
the plan of every invoice and the wallet, not the timing), ``CRYPTOCITY_CRASH_REPORT`` (a path: the run's
report as JSON).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sandbox.audit.verify import open_readonly
from tests.cluster.test_failover_chains import (
    Chains,
    consumers_caught_up,
    deliverable_events,
    wait_watchers_at_tip,
)
from tests.integration.gateway_process import cli_env, create_merchant, run_cli
from tests.integration.test_bitcoin_settlement import devnet_env
from tests.integration.test_ethereum_settlement import anvil_env
from tests.reliability import crash_checks as checks
from tests.reliability.crash_gateway import KillableGateway, ended_as_meant
from tests.reliability.crash_load import Load, open_chains
from tests.reliability.crash_plan import SentPayment
from tests.reliability.crash_receiver import WebhookTally, serve_tally

KILLS_ENV = "CRYPTOCITY_CRASH_KILLS"
SEED_ENV = "CRYPTOCITY_CRASH_SEED"
REPORT_ENV = "CRYPTOCITY_CRASH_REPORT"
DEFAULT_KILLS = 3
UPTIME_SECONDS = (0.5, 6.0)  # how long each process serves before its SIGKILL
# Where a kill lands, chosen at random for each:
# - anywhere: after the uptime;
# - startup: 0–0.4 s after the banner, while the new process catches up on what happened while it was
#   down (watchers, outbox consumers, leased deliveries, the address pool);
# - request / blocks / delivery: after the uptime, wait for the next invoice request to go out (the
#   gateway reserving indexes, committing, answering), the next mining round (the watchers reading
#   blocks, recording payments, checkpointing), or the next webhook the receiver answered (before the
#   gateway records the attempt: a duplicate follows), then up to AFTER_MOMENT_SECONDS more;
# - shutdown: SIGTERM, then SIGKILL 0–1 s later, cutting a clean shutdown short.
AIMS = ("anywhere", "startup", "request", "blocks", "delivery", "shutdown")
STARTUP_UPTIME_SECONDS = (0.0, 0.4)
AFTER_MOMENT_SECONDS = {"request": (0.0, 0.03), "blocks": (0.0, 0.5), "delivery": (0.0, 0.01)}
SIGTERM_GRACE_SECONDS = (0.0, 1.0)
DOWNTIME_SECONDS = (0.0, 1.5)  # between the kill and the next start: the chains and wallets go on
SETTLE_SECONDS = 120.0
DELIVER_SECONDS = 60.0
# What the gateway runs with besides the store, the chains and the audit key. A delivery the killed
# process had leased is attempted again when its lease runs out: 3 s here instead of the production
# minute. Retries every second, so nothing waits on the production schedule.
GATEWAY_ENV = {
    "CRYPTOCITY_SERVER__PORT": "0",
    # Info, not the tests' usual warning: payment drops, transitions and reorgs are then in each
    # process's gateway-N.out for a post-mortem (files, so the volume never stalls the process).
    "CRYPTOCITY_LOGGING__LEVEL": "info",
    "CRYPTOCITY_WEBHOOKS__LEASE_SECONDS": "3",
    "CRYPTOCITY_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[" + ", ".join(["1"] * 19) + "]",
    "CRYPTOCITY_WEBHOOKS__JITTER": "0",
    # Invoices that expire during the run (crash_plan.py) need a shorter floor than the production minute.
    "CRYPTOCITY_INVOICES__MIN_EXPIRY_SECONDS": "30",
}


@dataclass(frozen=True, slots=True)
class CrashSettings:
    kills: int
    seed: int
    report_path: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CrashSettings:
        kills = int(environ.get(KILLS_ENV) or DEFAULT_KILLS)
        if kills < 1:
            raise ValueError(f"{KILLS_ENV} must be at least 1, got {kills}")
        seed = int(environ.get(SEED_ENV) or secrets.randbelow(2**31))
        report = environ.get(REPORT_ENV)
        return cls(kills, seed, Path(report) if report else None)


@dataclass
class CrashReport:
    """What one run did and found; ``problems`` empty means the gateway came through every kill intact."""

    seed: int
    kills: int
    starts: int = 0
    invoices: int = 0
    invoices_replayed: int = 0  # answered by a retry with the same Idempotency-Key
    interrupted_requests: int = 0
    repeated_actions: int = 0  # cancels and accept-lates retried after a kill that came after their commit
    payments: dict[str, int] = field(default_factory=dict)
    plans: dict[str, int] = field(default_factory=dict)
    final_states: dict[str, int] = field(default_factory=dict)
    events: int = 0
    deliverable_events: int = 0
    deliveries: int = 0
    duplicates: int = 0
    duplicated_events: dict[str, int] = field(default_factory=dict)
    audit_entries: int = 0
    address_use: dict[str, dict[str, int]] = field(default_factory=dict)
    mining_rounds: int = 0
    kill_log: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        payments = ", ".join(f"{asset} {n}" for asset, n in sorted(self.payments.items()))
        return (
            f"crash harness: {self.kills} kills ({self.starts} starts), {self.invoices} invoices"
            f" ({self.invoices_replayed} answered by an idempotent replay, {self.interrupted_requests}"
            f" requests cut by a kill), {sum(self.payments.values())} payments ({payments}),"
            f" {self.events} events ({self.deliverable_events} for webhooks: {self.deliveries} deliveries,"
            f" {self.duplicates} duplicates), {self.audit_entries} audit entries, {self.wall_seconds:.0f} s,"
            f" seed {self.seed}; problems: {len(self.problems) or 'none'}"
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"summary": self.summary(), **asdict(self)}, indent=2) + "\n")


def say(text: str) -> None:
    print(f"[crash] {text}", flush=True)


async def run_crash_harness(workdir: Path, settings: CrashSettings) -> CrashReport:
    """Run the whole harness in ``workdir``; the report (also written to ``settings.report_path``)."""
    began = time.monotonic()
    report = CrashReport(settings.seed, settings.kills)
    say(f"seed {settings.seed} ({SEED_ENV}={settings.seed} replays the plan), {settings.kills} kills")
    try:
        await _run(workdir, settings, report)
    except BaseException as exc:
        report.problems.append(f"the harness stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        report.wall_seconds = round(time.monotonic() - began, 1)
        if settings.report_path is not None:
            report.write(settings.report_path)
        say(report.summary())
    return report


async def _run(workdir: Path, settings: CrashSettings, report: CrashReport) -> None:
    rng = random.Random(f"{settings.seed}:kills")
    audit_key = secrets.token_hex(32)
    tally = WebhookTally()
    merchant = await asyncio.to_thread(create_merchant, workdir)
    merchant_id, api_key = str(merchant["merchant"]["id"]), str(merchant["api_key"])
    async with open_chains(workdir, settings.seed) as chains, serve_tally(tally) as hook_url:
        env = cli_env(
            workdir,
            **devnet_env(chains.bitcoin),
            **anvil_env(chains.ethereum),
            **GATEWAY_ENV,
            CRYPTOCITY_AUDIT_KEY=audit_key,
        )
        gateway = KillableGateway(workdir, env)
        load = Load(gateway, chains, api_key, settings.seed)
        tasks: list[asyncio.Task[None]] = []
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await gateway.start()
                await wait_watchers_at_tip(session, gateway, chains)  # type: ignore[arg-type]
                tally.secret = await _create_endpoint(session, gateway.base_url, api_key, hook_url)
                stop_creating, creators_done, stop_mining = asyncio.Event(), asyncio.Event(), asyncio.Event()
                tasks = [
                    asyncio.create_task(load.create_invoices(session, stop_creating)),
                    asyncio.create_task(load.pay_invoices(creators_done)),
                    asyncio.create_task(load.mine(stop_mining)),
                ]
                for _ in range(settings.kills):
                    aim = rng.choice(AIMS)
                    uptime = STARTUP_UPTIME_SECONDS if aim == "startup" else UPTIME_SECONDS
                    await _sleep_watching(rng.uniform(*uptime), tasks)
                    await _kill_and_restart(gateway, load, tally, rng, report, aim)
                await _sleep_watching(rng.uniform(*UPTIME_SECONDS), tasks)
                stop_creating.set()
                await tasks[0]
                creators_done.set()
                await tasks[1]
                await load.finish_follow_ups()
                say(f"load done: {len(load.answered)} invoices, {len(load.sent)} payments; settling")
                store = workdir / "gateway.sqlite3"
                if not await _until(lambda: _settled(store, load), SETTLE_SECONDS):
                    load.problems.append(
                        f"invoices and payments not where expected {SETTLE_SECONDS:g} s after the load"
                    )
                stop_mining.set()
                await tasks[2]
                load.problems.extend(await _not_on_chain(chains, load.sent))
                await wait_watchers_at_tip(session, gateway, chains)  # type: ignore[arg-type]
                if not await _until(lambda: _delivered(store, merchant_id, tally), DELIVER_SECONDS):
                    load.problems.append(
                        f"outbox consumers or webhooks not done {DELIVER_SECONDS:g} s after settling"
                    )
                await asyncio.sleep(1.0)  # room for a late duplicate delivery to show up
                fetched, fetched_payments = await _fetch(session, gateway.base_url, api_key, load)
            status = await gateway.stop()
            if status != 0:
                load.problems.append(f"the last gateway exited {status} on SIGTERM: {gateway.output()}")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await load.cancel_follow_ups()
            await gateway.stop()
        problems = list(load.problems)
        problems += [
            f"derivation worker {pid} outlived its gateway" for pid in await gateway.orphaned_workers()
        ]
        snap = await checks.read_snapshot(workdir / "gateway.sqlite3")
        verified, exit_status = await _audit_verify(workdir, audit_key)
        if snap.integrity != "ok":
            problems.append(f"SQLite integrity_check: {snap.integrity}")
        problems += checks.check_invoices(load.answered, fetched, snap)
        problems += checks.check_payments(load.answered, load.sent, snap, fetched_payments)
        problems += checks.check_states(load.answered, load.sent, snap, fetched)
        problems += checks.check_events(load.answered, load.sent, snap)
        problems += checks.check_webhooks(tally, snap, merchant_id)
        problems += checks.check_consumers(snap)
        problems += checks.check_ledger(load.answered, load.sent, snap, merchant_id)
        problems += checks.check_audit(verified, exit_status, snap, gateway.starts)
        _fill(report, gateway, load, tally, snap, merchant_id, problems)


async def _kill_and_restart(
    gateway: KillableGateway,
    load: Load,
    tally: WebhookTally,
    rng: random.Random,
    report: CrashReport,
    aim: str,
) -> None:
    """One SIGKILL, at its aim (see AIMS), and a restart after a pause."""
    moments = {"request": load.request_sent, "blocks": load.blocks_arrived, "delivery": tally.delivered}
    if aim in moments:
        moments[aim].clear()
        await asyncio.wait_for(moments[aim].wait(), 30)
        await asyncio.sleep(rng.uniform(*AFTER_MOMENT_SECONDS[aim]))
    grace = rng.uniform(*SIGTERM_GRACE_SECONDS) if aim == "shutdown" else None
    kill = await gateway.kill(sigterm_first=grace)
    report.kill_log.append(
        {
            **asdict(kill),
            "aim": aim,
            "invoices_so_far": len(load.answered),
            "payments_so_far": len(load.sent),
        }
    )
    say(
        f"kill {kill.number}/{report.kills} (aim: {aim}): pid {kill.pid} after"
        f" {kill.uptime_seconds:.1f} s up, exit {kill.returncode}; {len(load.answered)} invoices and"
        f" {len(load.sent)} payments so far"
    )
    if not ended_as_meant(kill):
        load.problems.append(f"kill {kill.number} ({aim}): the gateway exited {kill.returncode}")
    await asyncio.sleep(rng.uniform(*DOWNTIME_SECONDS))
    await gateway.start()


def _fill(
    report: CrashReport,
    gateway: KillableGateway,
    load: Load,
    tally: WebhookTally,
    snap: checks.StoreSnapshot,
    merchant_id: str,
    problems: list[str],
) -> None:
    report.starts = gateway.starts
    report.invoices = len(load.answered)
    report.invoices_replayed = sum(1 for i in load.answered.values() if i.replayed)
    report.interrupted_requests = load.interrupted_requests
    report.repeated_actions = load.repeated_actions
    report.address_use = checks.address_use(snap)
    report.payments = dict(Counter(p.asset for p in load.sent))
    report.plans = dict(Counter(i.plan.kind for i in load.answered.values()))
    report.final_states = dict(
        Counter(" ".join([row["status"], *row["flags"]]) for row in snap.invoices.values())
    )
    report.events = len(snap.outbox)
    report.deliverable_events = len(checks.deliverable(snap, merchant_id))
    report.deliveries = tally.deliveries
    report.duplicates = tally.duplicates
    report.duplicated_events = tally.duplicated()
    report.audit_entries = len(snap.audit)
    report.mining_rounds = load.blocks_mined
    report.problems = problems


async def _sleep_watching(seconds: float, tasks: list[asyncio.Task[None]]) -> None:
    """Sleep, but fail at once if a load task died (its exception is the harness's bug, not a finding)."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _settled(store: Path, load: Load) -> bool:
    """Every invoice is where its payments put it, and every payment has its confirmations (store view)."""

    async def read(tx: Any) -> tuple[list[Any], list[Any]]:
        invoices = await tx.fetchall("SELECT id, status, flags FROM invoices")
        payments = await tx.fetchall("SELECT invoice_id, asset, confirmations FROM payments")
        return invoices, payments

    reader = open_readonly(store)
    try:
        invoices, payments = await reader.read(read)
    finally:
        reader.close()
    states = {r["id"]: (r["status"], json.loads(r["flags"])) for r in invoices}
    grouped = checks.payments_by_invoice(load.sent)
    for invoice_id, invoice in load.answered.items():
        want = checks.expected_state(invoice, grouped.get(invoice_id, []))
        if states.get(invoice_id) != (want.status, list(want.flags)):
            return False
    if len(payments) < len(load.sent):
        return False
    for row in payments:
        paid = load.answered.get(row["invoice_id"])
        if paid is None:
            continue
        need = max(1, int(paid.method(row["asset"])["confirmations_required"]))
        if int(row["confirmations"]) < need:
            return False
    return True


async def _delivered(store: Path, merchant_id: str, tally: WebhookTally) -> bool:
    reader = open_readonly(store)
    try:
        events = await deliverable_events(reader, merchant_id)  # type: ignore[arg-type]
        caught_up = await consumers_caught_up(reader)  # type: ignore[arg-type]
    finally:
        reader.close()
    return caught_up and set(events) <= set(tally.counts)


async def _not_on_chain(chains: Chains, sent: list[SentPayment]) -> list[str]:
    """The harness's own precondition, asked of the nodes: every payment it made is mined (a payment the
    node dropped would be the wallet's fault, not the gateway's, and must be told apart)."""
    problems: list[str] = []
    rpc = chains.bitcoin.rpc
    assert rpc is not None
    btc = [p for p in sent if p.asset == "BTC"]
    answers = await rpc.batch([("getrawtransaction", [p.tx, True]) for p in btc]) if btc else []
    for payment, answer in zip(btc, answers, strict=True):
        if isinstance(answer, Exception) or not isinstance(answer, dict) or not answer.get("blockhash"):
            entry = await rpc.mempool_entry(payment.tx)
            problems.append(
                f"harness: BTC {payment.tx} to {payment.invoice_id} is not mined"
                f" (in the mempool: {entry is not None}; node said {str(answer)[:200]})"
            )
    for payment in (p for p in sent if p.asset != "BTC"):
        try:
            receipt = await chains.ethereum.w3.eth.get_transaction_receipt(payment.tx)  # type: ignore[arg-type]
            ok = receipt is not None and int(receipt["status"]) == 1
        except Exception as exc:  # web3's TransactionNotFound and transport errors alike
            ok, receipt = False, exc  # type: ignore[assignment]
        if not ok:
            problems.append(
                f"harness: {payment.asset} {payment.tx} to {payment.invoice_id} not mined: {receipt}"
            )
    return problems


async def _create_endpoint(session: aiohttp.ClientSession, base_url: str, api_key: str, url: str) -> str:
    async with session.post(
        base_url + "/v1/webhook-endpoints",
        json={"url": url, "event_types": ["*"], "description": "crash harness receiver"},
        headers={"Authorization": f"Bearer {api_key}"},
    ) as response:
        body = await response.json()
        assert response.status == 201, body
        return str(body["secret"])


async def _fetch(
    session: aiohttp.ClientSession, base_url: str, api_key: str, load: Load
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """GET every answered invoice, and the payments of those that were paid, from the last gateway."""
    headers = {"Authorization": f"Bearer {api_key}"}
    limit = asyncio.Semaphore(8)
    paid = {p.invoice_id for p in load.sent}

    async def get(path: str) -> Any:
        async with limit, session.get(base_url + path, headers=headers) as response:
            return await response.json() if response.status == 200 else None

    ids = sorted(load.answered)
    bodies = await asyncio.gather(*(get(f"/v1/invoices/{i}") for i in ids))
    lists = await asyncio.gather(*(get(f"/v1/invoices/{i}/payments") for i in sorted(paid)))
    fetched = {i: b for i, b in zip(ids, bodies, strict=True) if b is not None}
    payments = {i: body["data"] for i, body in zip(sorted(paid), lists, strict=True) if body is not None}
    return fetched, payments


async def _audit_verify(workdir: Path, audit_key: str) -> tuple[dict[str, Any], int]:
    """`cryptocity audit verify --json` on the stopped gateway's file, with the run's audit key."""
    env = cli_env(workdir, CRYPTOCITY_AUDIT_KEY=audit_key)
    result = await asyncio.to_thread(
        run_cli, workdir, "audit", "verify", "--db", str(workdir / "gateway.sqlite3"), "--json", env=env
    )
    try:
        verified: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        verified = {"stdout": result.stdout, "stderr": result.stderr}
    return verified, result.returncode


__all__ = ["CrashReport", "CrashSettings", "run_crash_harness"]
