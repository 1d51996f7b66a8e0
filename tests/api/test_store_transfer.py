"""``cryptocity store migrate-sqlite-to-pg`` on a store the real gateway filled: the pilot's extensions
(sandbox policy, ledger, audit log with a keyed head), invoices in every state, payments accepted, held,
released, refunded and double-spent, a token transfer it cannot count, webhooks delivered to a loopback
receiver, chain-watcher state. The gateway is stopped, its file moved into a fresh PostgreSQL schema, and
then a gateway on that schema must serve the same invoices and continue every sequence.

The source gateway runs on SQLite by definition (``sqlite_only``); the PostgreSQL tests need
CRYPTOCITY_TEST_PG_DSN and are skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway.api.state import CLOCK, CONFIG, STORE
from gateway.chains.chain_state import AddressSpend, ChainState, StoredBlock
from gateway.config import SandboxConfig
from gateway.extensions import Extensions
from gateway.invoices.lifecycle import DropReason
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.store import PostgresStore, SqliteStore, Tx
from gateway.store.transfer import (
    CheckResult,
    SnapshotTx,
    TargetTx,
    TransferFailed,
    TransferRefused,
    migrate_sqlite_to_postgres,
)
from sandbox.audit import AuditKey, audit_extensions, record_startup, verify
from sandbox.extension import sandbox_extensions
from sandbox.ledger import store as ledger
from sandbox.limits import Tier
from sandbox.registry import Category, Registry
from sandbox.regulator.tokens import RegulatorTokens
from sandbox.transfer_checks import pilot_checks
from tests.conftest import Gateway, GatewayFactory, pg_dsn

pytestmark = pytest.mark.sqlite_only  # the source is the embedded store; the target a PostgreSQL schema

KEY = AuditKey(bytes(range(32)), "test")
PUBLIC_URL = "https://pay.example"  # the same links from both gateways, whatever port the test server got
RESIDENT_SCRIPT = "0014" + "aa" * 20
STRANGER_SCRIPT = "0014" + "bb" * 20
RESIDENT_ETH = "0x" + "cd" * 20
ROOT = Path(__file__).resolve().parents[2]


def pilot_extensions() -> Extensions:
    """What `cryptocity serve` runs: the sandbox (ledger, policy, regulator API) and the keyed audit log."""
    audit = audit_extensions(KEY)

    async def startup(app: web.Application) -> None:
        await record_startup(app[STORE], app[CLOCK], app[CONFIG], KEY)

    return sandbox_extensions(SandboxConfig(), Extensions(consumers=audit.consumers, on_start=[startup]))


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached in time"
        await asyncio.sleep(0.05)


async def consumers_caught_up(gateway: Gateway) -> bool:
    async def behind(tx: Tx) -> bool:
        top = await tx.fetchone("SELECT coalesce(max(seq), 0) AS n FROM outbox")
        rows = await tx.fetchall("SELECT consumer, position FROM consumer_cursors")
        positions = {r["consumer"]: int(r["position"]) for r in rows}
        assert top is not None
        return any(positions.get(name, 0) < int(top["n"]) for name in ("webhooks", "ledger", "audit"))

    return not await gateway.store.read(behind)


async def deliveries_done(gateway: Gateway) -> bool:
    rows = await gateway.store.read(lambda tx: tx.fetchall("SELECT status FROM webhook_deliveries"))
    return bool(rows) and all(r["status"] == "succeeded" for r in rows)


def btc_fact(invoice: dict[str, Any], key: str, *, payer: str, amount: int | None = None) -> PaymentFact:
    method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
    due = int(method["amount_due_minor"])
    return PaymentFact(
        Chain.BITCOIN,
        method["address"],
        key,
        Asset.BTC,
        due if amount is None else amount,
        6,
        payer=payer,
        payer_scripts=(payer,),
        block_hash="66" * 32,
        block_height=6,
    )


def eth_fact(invoice: dict[str, Any], key: str, asset: Asset) -> PaymentFact:
    method = next(m for m in invoice["payment_methods"] if m["asset"] == asset.value)
    return PaymentFact(
        Chain.ETHEREUM, method["address"], key, asset, int(method["amount_due_minor"]), 12, payer=RESIDENT_ETH
    )


async def busy_pilot(gateway: Gateway, hook_url: str) -> list[dict[str, Any]]:
    """A day of the pilot on the gateway's store; returns the invoices made (each with the key that sees it)."""
    service, clock = gateway.service, gateway.clock
    await RegulatorTokens(gateway.store, clock).issue("NBK supervisor")
    registry = Registry(gateway.store, clock)
    resident = await registry.add_resident(Tier.BASIC, originator_data=True)
    await registry.register_wallet(resident.id, "bitcoin", RESIDENT_SCRIPT, "phone")
    await registry.register_wallet(resident.id, "ethereum", RESIDENT_ETH, "phone")
    await registry.set_merchant_profile(gateway.merchant_id, category=Category.CAFE)
    response = await gateway.client.post(
        "/v1/webhook-endpoints", json={"url": hook_url, "description": "shop"}, headers=gateway.auth()
    )
    assert response.status == 201, await response.text()

    made: list[dict[str, Any]] = []

    async def invoice(amount: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
        created = await gateway.create_invoice(amount, key=key, **fields)
        made.append({**created, "_key": key})
        return created

    settled = await invoice("1200.00", assets=["BTC"], order_id="o-1", metadata={"table": 4})
    await service.record_payment(btc_fact(settled, "01" * 32 + ":0", payer=RESIDENT_SCRIPT))
    eth = await invoice("2500.00", assets=["ETH"])
    await service.record_payment(eth_fact(eth, "0x" + "02" * 32 + ":0", Asset.ETH))
    usdt = await invoice("3100.00", assets=["USDT"])
    await service.record_payment(eth_fact(usdt, "0x" + "03" * 32 + ":1", Asset.USDT))
    released = await invoice("900.00", assets=["BTC"])
    await service.record_payment(btc_fact(released, "04" * 32 + ":0", payer=STRANGER_SCRIPT))
    await service.release_hold(released["id"], "04" * 32 + ":0")
    refunded = await invoice("800.00", assets=["BTC"])
    await service.record_payment(btc_fact(refunded, "05" * 32 + ":0", payer=STRANGER_SCRIPT))
    await service.refund_hold(refunded["id"], "05" * 32 + ":0")
    reversed_ = await invoice("700.00", assets=["BTC"])
    await service.record_payment(btc_fact(reversed_, "06" * 32 + ":0", payer=RESIDENT_SCRIPT))
    await service.payment_dropped(Chain.BITCOIN, "06" * 32 + ":0", DropReason.DOUBLE_SPENT)
    underpaid = await invoice("1500.00", assets=["BTC"])
    await service.record_payment(btc_fact(underpaid, "07" * 32 + ":0", payer=RESIDENT_SCRIPT, amount=1000))
    token = await invoice("400.00", assets=["ETH"])
    token_address = next(m for m in token["payment_methods"] if m["asset"] == "ETH")["address"]
    stray = PaymentFact(Chain.ETHEREUM, token_address, "0x" + "08" * 32 + ":3", Asset.USDT, 5_000_000, 12)
    assert await service.record_unaccounted(stray, "0x" + "ee" * 20)
    cancelled = await invoice("650.00")
    response = await gateway.client.post(f"/v1/invoices/{cancelled['id']}/cancel", headers=gateway.auth())
    assert response.status == 200, await response.text()
    await invoice("300.00", expires_in=60)  # expires below
    await invoice("5000.00", key=gateway.other_api_key)
    response = await gateway.client.post(
        "/v1/invoices",
        json={"amount": "2000.00", "currency": "KZT", "description": "still open"},
        headers={**gateway.auth(), "Idempotency-Key": "order-2000"},
    )
    assert response.status == 201, await response.text()
    made.append({**await response.json(), "_key": None})
    gateway.clock.advance(timedelta(minutes=5))
    await service.expire_due()  # (or the background sweeper got there first)

    state = ChainState(gateway.store, Chain.BITCOIN)
    await state.connect(StoredBlock(6, "66" * 32, "55" * 32))
    address = next(m for m in settled["payment_methods"] if m["asset"] == "BTC")["address"]
    sweep = AddressSpend("ab" * 32 + ":0", Asset.BTC, address, 1000, "ab" * 32, "01" * 32 + ":0")
    await state.connect(StoredBlock(7, "77" * 32, "66" * 32), [sweep])

    await until(lambda: consumers_caught_up(gateway), "the outbox consumers")
    await until(lambda: deliveries_done(gateway), "webhook deliveries")
    return made


async def invoice_views(gateway: Gateway, invoices: list[dict[str, Any]]) -> dict[str, Any]:
    """What the API answers about each invoice (resource and payments), and the merchant's listings."""
    views: dict[str, Any] = {}
    for made in invoices:
        for suffix in ("", "/payments"):
            path = f"/v1/invoices/{made['id']}{suffix}"
            response = await gateway.client.get(path, headers=gateway.auth(made["_key"]))
            assert response.status == 200, (path, await response.text())
            views[path] = await response.json()
    for path in ("/v1/invoices?limit=100", "/v1/events?limit=100"):
        response = await gateway.client.get(path, headers=gateway.auth())
        assert response.status == 200, (path, await response.text())
        views[path] = await response.json()
    return views


def sqlite_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " AND name <> 'schema_migrations'"
            )
        ]
        return {n: conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}  # noqa: S608
    finally:
        conn.close()


async def pg_counts(dsn: str, schema: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        names = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                " AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations'",
                schema,
            )
        ]
        return {n: int(await conn.fetchval(f'SELECT count(*) FROM "{n}"')) for n in names}  # noqa: S608
    finally:
        await conn.close()


async def stopped(gateway: Gateway) -> Path:
    """Stop the gateway (its store closes) and return its SQLite file."""
    store = gateway.store
    assert isinstance(store, SqliteStore)
    await gateway.client.close()
    return store.path


@pytest.fixture
async def hook_url(aiohttp_server: Any) -> str:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook"))


async def test_a_busy_pilot_store_moves_to_postgresql_and_the_gateway_carries_on(
    pg_schema: str, make_gateway: GatewayFactory, hook_url: str
) -> None:
    dsn = pg_dsn()
    gateway = await make_gateway(pilot_extensions(), CRYPTOCITY_SERVER__PUBLIC_URL=PUBLIC_URL)
    invoices = await busy_pilot(gateway, hook_url)
    before = await invoice_views(gateway, invoices)
    assert {v["status"] for v in before.values() if "status" in v} >= {"settled", "expired", "cancelled"}
    balances = await gateway.store.read(lambda tx: ledger.balances(tx))
    top = await gateway.store.read(
        lambda tx: tx.fetchone(
            "SELECT (SELECT max(seq) FROM outbox) AS outbox, (SELECT max(seq) FROM ledger_entries) AS ledger,"
            " (SELECT max(seq) FROM audit_log) AS audit"
        )
    )
    assert top is not None
    path = await stopped(gateway)
    counts = sqlite_counts(path)
    for table in (
        "merchants", "api_keys", "invoices", "invoice_addresses", "payments", "outbox", "consumer_cursors",
        "idempotency_keys", "chain_blocks", "unaccounted_payments", "ledger_entries", "ledger_lines",
        "ledger_balances", "ledger_invoices", "webhook_endpoints", "webhook_deliveries", "webhook_attempts",
        "residents", "resident_wallets", "merchant_profiles", "sandbox_payments", "regulator_tokens",
        "audit_log", "audit_heads", "address_spends", "address_counters",
    ):  # fmt: skip
        assert counts[table] > 0, f"the scenario left {table} empty"

    report = await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema, checks=pilot_checks(KEY))

    assert report.ok and report.committed, report.problems()
    assert {t.name: t.target_rows for t in report.tables} == counts
    assert await pg_counts(dsn, pg_schema) == counts
    assert [c.name for c in report.checks] == ["ledger", "audit"] and all(c.ok for c in report.checks)
    sequences = {(s.table, s.column): s.next_value for s in report.sequences}
    assert sequences[("outbox", "seq")] == top["outbox"] + 1
    assert sequences[("ledger_entries", "seq")] == top["ledger"] + 1
    assert ("rate_history", "id") in sequences

    store = await PostgresStore.open(dsn, schema=pg_schema, pool_size=2, migrate=False)
    try:
        audited = await verify(store, KEY)
        assert audited.ok and audited.authenticated and audited.last_seq == top["audit"], audited.verdict()
        assert await store.read(ledger.trial_balance) == 0
        assert await store.read(lambda tx: ledger.balances(tx)) == balances
        assert await store.read(ledger.verify_balances) == []
    finally:
        await store.close()

    moved = await make_gateway(
        pilot_extensions(),
        CRYPTOCITY_SERVER__PUBLIC_URL=PUBLIC_URL,
        CRYPTOCITY_STORE__DSN=dsn,
        CRYPTOCITY_STORE__SCHEMA=pg_schema,
        CRYPTOCITY_STORE__POOL_SIZE="4",
    )
    try:
        # The old API keys work and every answer is the same; the factory's new merchants are extra rows.
        moved.api_key, moved.other_api_key = gateway.api_key, gateway.other_api_key
        after = await invoice_views(moved, invoices)
        assert after == before
        fresh = await moved.create_invoice("1000.00", assets=["BTC"])
        await moved.service.record_payment(btc_fact(fresh, "09" * 32 + ":0", payer=RESIDENT_SCRIPT))
        await until(lambda: consumers_caught_up(moved), "the consumers on PostgreSQL")
        new = await moved.store.read(
            lambda tx: tx.fetchall("SELECT seq FROM outbox WHERE seq > ? ORDER BY seq", (top["outbox"],))
        )
        assert len(new) >= 3  # the factory's merchants, the invoice, its payment and settlement
        event = await moved.store.read(
            lambda tx: tx.fetchone("SELECT seq FROM outbox WHERE invoice_id = ? ORDER BY seq", (fresh["id"],))
        )
        assert event is not None and event["seq"] > top["outbox"]
        entries = await moved.store.read(
            lambda tx: tx.fetchall("SELECT seq FROM ledger_entries WHERE invoice_id = ?", (fresh["id"],))
        )
        assert entries and all(e["seq"] > top["ledger"] for e in entries)
        still = await verify(moved.store, KEY)
        assert still.ok and still.last_seq > top["audit"], still.verdict()
        assert await moved.store.read(ledger.trial_balance) == 0
    finally:
        await moved.client.close()


async def small_store(make_gateway: GatewayFactory) -> tuple[Path, dict[str, Any]]:
    """A stopped gateway's file with a merchant, an invoice and a ledger- and audit-booked settlement."""
    gateway = await make_gateway(pilot_extensions())
    made = await gateway.create_invoice("1000.00", assets=["BTC"])
    registry = Registry(gateway.store, gateway.clock)
    resident = await registry.add_resident(Tier.BASIC)
    await registry.register_wallet(resident.id, "bitcoin", RESIDENT_SCRIPT)
    await gateway.service.record_payment(btc_fact(made, "0a" * 32 + ":0", payer=RESIDENT_SCRIPT))
    await until(lambda: consumers_caught_up(gateway), "the outbox consumers")
    return await stopped(gateway), made


async def test_a_target_with_rows_is_refused_and_left_alone(
    pg_schema: str, make_gateway: GatewayFactory
) -> None:
    dsn = pg_dsn()
    path, _ = await small_store(make_gateway)
    first = await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema)
    assert first.ok and first.committed
    counts = await pg_counts(dsn, pg_schema)
    with pytest.raises(TransferRefused, match=r"already holds rows in .*merchants"):
        await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema)
    assert await pg_counts(dsn, pg_schema) == counts


async def test_a_bad_value_mid_copy_rolls_everything_back(
    pg_schema: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    dsn = pg_dsn()
    path, made = await small_store(make_gateway)
    broken = tmp_path / "broken.sqlite3"
    shutil.copyfile(path, broken)
    conn = sqlite3.connect(broken)
    with conn:  # payments come after merchants, invoices and a dozen other tables in the copy order
        conn.execute("UPDATE payments SET confirmations = 'many' WHERE invoice_id = ?", (made["id"],))
    conn.close()

    with pytest.raises(TransferFailed, match=r"payments\.confirmations: 'many'") as failed:
        await migrate_sqlite_to_postgres(broken, dsn, schema=pg_schema)

    copied_first = [t.name for t in failed.value.report.tables if t.copied_rows > 0]
    assert "merchants" in copied_first and "invoices" in copied_first  # it failed mid-copy, not before
    assert not failed.value.report.committed
    counts = await pg_counts(dsn, pg_schema)
    assert counts and set(counts.values()) == {0}  # the migrated tables exist and hold nothing
    # The unchanged file then moves without trouble: nothing of the failed attempt is in the way.
    assert (await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema)).committed


async def test_a_failed_check_rolls_the_copy_back(pg_schema: str, make_gateway: GatewayFactory) -> None:
    dsn = pg_dsn()
    path, _ = await small_store(make_gateway)

    async def books_disagree(source: SnapshotTx, target: TargetTx) -> CheckResult:
        row = await target.fetchone("SELECT count(*) AS n FROM invoices")
        assert row is not None and row["n"] == 1  # the check sees the copied rows, inside the transaction
        return CheckResult("books", False, "a deliberately failing check")

    with pytest.raises(TransferFailed, match=r"verification failed.*deliberately failing") as failed:
        await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema, checks=[books_disagree])
    assert all(t.ok for t in failed.value.report.tables)  # the rows were fine; the check decided
    assert set((await pg_counts(dsn, pg_schema)).values()) == {0}


async def test_numbers_sqlite_handed_out_are_never_handed_out_again(
    pg_schema: str, make_gateway: GatewayFactory
) -> None:
    """Rate history is pruned from the top as from the bottom: SQLite's AUTOINCREMENT remembers the highest id
    it gave, and PostgreSQL must continue after that one, not after the highest id left."""
    dsn = pg_dsn()
    path, _ = await small_store(make_gateway)
    conn = sqlite3.connect(path)
    with conn:
        handed_out = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rate_history'").fetchone()[0]
        conn.execute("DELETE FROM rate_history WHERE id = ?", (handed_out,))
    conn.close()
    assert handed_out >= 1
    report = await migrate_sqlite_to_postgres(path, dsn, schema=pg_schema)
    assert {(s.table, s.column): s.next_value for s in report.sequences}[
        ("rate_history", "id")
    ] == handed_out + 1
    pg = await asyncpg.connect(dsn, server_settings={"search_path": pg_schema})
    try:
        new_id = await pg.fetchval(
            "INSERT INTO rate_history (asset, kzt_per_unit, sources, observed_at, recorded_at)"
            " VALUES ('BTC', '1', '[]', '2030-01-01T00:00:00.000Z', '2030-01-01T00:00:00.000Z') RETURNING id"
        )
    finally:
        await pg.close()
    assert new_id == handed_out + 1


async def test_the_source_must_be_at_this_codes_migration(
    tmp_path: Path, make_gateway: GatewayFactory
) -> None:
    path, _ = await small_store(make_gateway)
    older, newer = tmp_path / "older.sqlite3", tmp_path / "newer.sqlite3"
    for copy, sql in (
        (older, "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)"),
        (newer, "INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01T00:00:00Z')"),
    ):
        shutil.copyfile(path, copy)
        conn = sqlite3.connect(copy)
        with conn:
            conn.execute(sql)
        conn.close()
    # Refused before PostgreSQL is contacted: the DSN need not even answer.
    with pytest.raises(TransferRefused, match=r"lacks .*cryptocity migrate"):
        await migrate_sqlite_to_postgres(older, "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(TransferRefused, match="newer than this cryptocity"):
        await migrate_sqlite_to_postgres(newer, "postgresql://nobody@127.0.0.1:1/none")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOCITY_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_cli_copies_prints_the_counts_and_refuses_a_second_run(
    pg_schema: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    dsn = pg_dsn()
    path, _ = await small_store(make_gateway)
    counts = sqlite_counts(path)
    command = ("store", "migrate-sqlite-to-pg", "--from", str(path), "--to", dsn, "--schema", pg_schema)

    done = await asyncio.to_thread(cli, *command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for table, n in counts.items():
        assert re.search(rf"│ {table}\s+│\s+{n} │\s+{n} │\s+yes │", done.stdout), (table, n, done.stdout)
    assert "committed" in done.stdout and "ledger" in done.stdout and "audit" in done.stdout
    assert f"into schema {pg_schema}" in done.stderr
    assert await pg_counts(dsn, pg_schema) == counts

    again = await asyncio.to_thread(cli, *command, "--json", cwd=tmp_path)
    assert again.returncode == 2 and "already holds rows" in again.stderr, again.stderr
    assert await pg_counts(dsn, pg_schema) == counts


async def test_the_cli_reports_a_failed_copy_as_json(
    pg_schema: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    dsn = pg_dsn()
    path, _ = await small_store(make_gateway)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE invoices SET version = 'x'")
    conn.close()
    command = ("store", "migrate-sqlite-to-pg", "--from", str(path), "--to", dsn, "--schema", pg_schema)
    failed = await asyncio.to_thread(cli, *command, "--json", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    report = json.loads(failed.stdout)
    assert report["committed"] is False and "invoices.version" in failed.stderr
    assert set((await pg_counts(dsn, pg_schema)).values()) == {0}
