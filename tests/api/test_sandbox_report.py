"""``cryptocity sandbox report``: the monthly report, built from a month of payments made through the real
service paths and checked against the regulator API's own figures for the same period.

The command runs in this process (``run_sandbox_command``, as ``cryptocity`` calls it) on the test
gateway's store file, so its figures can be compared with ``/sandbox/v1`` on the same data; the CLI as a
separate process is in tests/integration/test_sandbox_report_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import itertools
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.clock import ManualClock
from gateway.config import SandboxConfig
from gateway.extensions import Extensions
from gateway.invoices.service import PaymentFact
from gateway.money import Asset, Chain
from gateway.store import Tx
from sandbox.audit import AuditKey, audit_extensions
from sandbox.audit.cli import run_audit_command
from sandbox.cli import _parser
from sandbox.extension import sandbox_extensions
from sandbox.limits import SandboxRules, Tier
from sandbox.operator_cli import run_sandbox_command
from sandbox.registry import Category, Registry
from sandbox.regulator.tokens import RegulatorTokens
from sandbox.report import BadMonth, ReportPeriod, parse_month
from sandbox.report.bundle import check_bundle
from sandbox.report.charts import Series, bar_chart, bin_counts, histogram, line_chart, stacked_bar_chart
from sandbox.report.data import integer_edges
from tests.api.test_sandbox import SCRIPT_A, SCRIPT_B, regulator, resident, txid
from tests.conftest import Gateway, GatewayFactory, make_config

# The report command runs on make_config(tmp_path)'s SQLite file, and two tests edit that file directly.
pytestmark = pytest.mark.sqlite_only

SCRIPT_C = "0014" + "cc" * 20
SCRIPT_UNREGISTERED = "0014" + "dd" * 20
RAW_KEY = bytes(range(7, 39))
ALMATY_NOV_1 = datetime(2026, 10, 31, 19, 0, tzinfo=UTC)  # 00:00 on 1 November in Asia/Almaty
LAST_SECOND = datetime(2026, 11, 30, 18, 59, 59, tzinfo=UTC)  # 23:59:59 on 30 November in Almaty
NEXT_MONTH = datetime(2026, 11, 30, 19, 0, 0, tzinfo=UTC)  # 00:00:00 on 1 December in Almaty

CHARTS = {
    "volume_by_day",
    "volume_by_asset",
    "volume_by_category",
    "payments_by_day",
    "payment_sizes",
    "invoice_states",
    "settlement_times",
    "holds_by_reason",
    "utilisation",
}
CSV_FILES = {
    "summary.csv",
    "limits.csv",
    "volume_by_day.csv",
    "volume_by_asset.csv",
    "volume_by_category.csv",
    "payments_by_day.csv",
    "payment_sizes.csv",
    "invoice_states.csv",
    "invoice_flags.csv",
    "settlement_times.csv",
    "holds_by_reason.csv",
    "holds.csv",
    "decisions.csv",
    "utilisation.csv",
    "utilisation_by_tier.csv",
    "merchants.csv",
    "trial_balance.csv",
    "exposure.csv",
    "payments.csv",
}


@pytest.fixture
def clock() -> ManualClock:
    """The month starts at midnight in Almaty, so a whole November can be paid through."""
    return ManualClock(ALMATY_NOV_1 + timedelta(minutes=30))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "regulator.key"
    path.write_text("hex:" + RAW_KEY.hex() + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Month:
    gateway: Gateway
    token: str
    tmp_path: Path
    last_second_key: str  # paid at 23:59:59 on 30 November, Almaty
    next_month_key: str  # paid at 00:00:00 on 1 December, Almaty


async def pay(gateway: Gateway, invoice: dict[str, Any], key: str, *, script: str) -> dict[str, Any]:
    """A watcher's payment fact for the invoice's BTC address, and the sandbox's decision on it.

    The decision is read through the store's writer: a read on a reader connection right after the commit
    can still see the snapshot from before it while a background consumer holds that connection's read
    transaction open (tests/api/test_sandbox.py's ``pay`` reads that way and fails now and then here).
    """
    method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
    fact = PaymentFact(
        Chain.BITCOIN,
        method["address"],
        key,
        Asset.BTC,
        method["amount_due_minor"],
        6,
        payer=script,
        payer_scripts=(script,),
    )
    await gateway.service.record_payment(fact)
    row = await gateway.store.transaction(
        lambda tx: tx.fetchone("SELECT * FROM sandbox_payments WHERE payment_key = ?", (key,))
    )
    assert row is not None
    return dict(row)


async def caught_up(gateway: Gateway) -> None:
    """Wait until the ledger and audit consumers have read every outbox event."""

    async def behind(tx: Tx) -> bool:
        top = await tx.fetchone("SELECT coalesce(max(seq), 0) AS n FROM outbox")
        rows = await tx.fetchall(
            "SELECT consumer, position FROM consumer_cursors WHERE consumer IN ('ledger', 'audit')"
        )
        positions = {r["consumer"]: int(r["position"]) for r in rows}
        assert top is not None
        return any(positions.get(name, -1) < int(top["n"]) for name in ("ledger", "audit"))

    deadline = asyncio.get_running_loop().time() + 15
    while await gateway.store.transaction(behind):  # the writer's view: never behind its own commits
        assert asyncio.get_running_loop().time() < deadline, "the consumers did not catch up"
        await asyncio.sleep(0.05)


async def build_month(make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path) -> Month:
    """November 2026 through the real paths: residents of three tiers, two merchant categories, accepted
    and held payments, a release and a refund, an open invoice, and two payments either side of midnight
    at the month's end."""
    audit = audit_extensions(AuditKey(RAW_KEY), clock)
    gateway = await make_gateway(sandbox_extensions(SandboxConfig(), Extensions(consumers=audit.consumers)))
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("test regulator")).plaintext
    registry = Registry(gateway.store, gateway.clock)
    await registry.set_merchant_profile(gateway.merchant_id, category=Category.CAFE)
    await registry.set_merchant_profile(gateway.other_merchant_id, category=Category.GROCERY)
    await resident(registry, Tier.ANONYMOUS, SCRIPT_A)
    await resident(registry, Tier.BASIC, SCRIPT_B, originator_data=True)
    await resident(registry, Tier.VERIFIED, SCRIPT_C, originator_data=True)

    n = 0

    async def paid(amount: str, script: str, *, other: bool = False, wait: float = 45) -> dict[str, Any]:
        nonlocal n
        n += 1
        invoice = await gateway.create_invoice(
            amount, key=gateway.other_api_key if other else None, assets=["BTC"]
        )
        clock.advance(wait)  # the resident scans and pays: settlement takes that long
        return await pay(gateway, invoice, txid(n), script=script)

    assert (await paid("5300.00", SCRIPT_B))["decision"] == "accepted"
    clock.advance(timedelta(days=2))
    assert (await paid("1000.00", SCRIPT_A, other=True, wait=120))["decision"] == "accepted"
    assert (await paid("20000.00", SCRIPT_A))["reason"] == "over_operation_limit"
    clock.advance(timedelta(days=3, hours=5))
    released = await paid("2000.00", SCRIPT_UNREGISTERED, other=True)
    refunded = await paid("2500.00", SCRIPT_UNREGISTERED)
    assert released["reason"] == refunded["reason"] == "unregistered_payer"
    assert (await paid("100000.00", SCRIPT_C, wait=600))["decision"] == "accepted"
    clock.advance(timedelta(days=1))
    status, _ = await regulator(
        gateway, "POST", f"/holds/bitcoin/{released['payment_key']}/release", token, {"note": "KYC done"}
    )
    assert status == 200
    status, _ = await regulator(
        gateway, "POST", f"/holds/bitcoin/{refunded['payment_key']}/refund", token, {"note": "unknown payer"}
    )
    assert status == 200
    clock.advance(timedelta(days=10))
    assert (await paid("12000.00", SCRIPT_B, other=True, wait=20))["decision"] == "accepted"
    await gateway.create_invoice("900.00")  # left open

    clock.set(LAST_SECOND)
    last = await paid("700.00", SCRIPT_C, wait=0)
    clock.set(NEXT_MONTH)
    first = await paid("800.00", SCRIPT_C, wait=0)
    assert (last["month"], first["month"]) == ("2026-11", "2026-12")
    await gateway.service.expire_due()  # what the sweeper does next: the open invoices' time is up
    await caught_up(gateway)
    return Month(gateway, token, tmp_path, last["payment_key"], first["payment_key"])


@dataclass
class Run:
    code: int
    out: str
    err: str
    directory: Path

    def csv(self, name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO((self.directory / name).read_text(encoding="utf-8"))))

    def header(self, name: str) -> list[str]:
        return (self.directory / name).read_text(encoding="utf-8").splitlines()[0].split(",")

    @property
    def html(self) -> str:
        return (self.directory / "report.html").read_text(encoding="utf-8")

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


async def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``cryptocity …`` in this process on the test store (the sub-commands are coroutines)."""
    args = _parser().parse_args(list(argv))
    config = make_config(tmp_path)
    capsys.readouterr()
    code = (
        await run_audit_command(args, config)
        if args.command == "audit"
        else await run_sandbox_command(args, config)
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def report(tmp_path: Path, capsys: pytest.CaptureFixture[str], month: str, *extra: str) -> Run:
    directory = tmp_path / f"report-{month}"
    code, out, err = await cli(
        tmp_path, capsys, "sandbox", "report", "--month", month, "--out", str(directory), *extra
    )
    return Run(code, out, err, directory)


def as_int(rows: list[dict[str, str]], key: str, value: str) -> dict[str, int]:
    return {row[key]: int(row[value]) for row in rows}


# -- the report against the regulator API ----------------------------------------------------------------


async def test_the_report_agrees_with_the_regulator_api_for_the_same_month(
    make_gateway: GatewayFactory,
    clock: ManualClock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key_file: Path,
) -> None:
    month = await build_month(make_gateway, clock, tmp_path)
    run = await report(
        tmp_path, capsys, "2026-11", "--key-file", str(key_file), "--participant", "Alatau Pay LLP"
    )
    assert run.code == 0, run.err
    assert {p.name for p in run.directory.iterdir()} == CSV_FILES | {"report.html", "manifest.json"}
    for name in CSV_FILES:
        assert run.header(name), f"{name} has no header row"

    start, end = ReportPeriod.of(SandboxRules(SandboxConfig()), "2026-11").bounds_utc
    status, summary = await regulator(month.gateway, "GET", f"/summary?from={start}&to={end}", month.token)
    assert status == 200, summary
    volume = summary["volume"]
    assert volume["total_tiyn"] > 0 and summary["payments"]["held"] == 3
    assert as_int(run.csv("volume_by_day.csv"), "day", "volume_tiyn") == volume["by_day"]
    assert as_int(run.csv("volume_by_asset.csv"), "asset", "volume_tiyn") == volume["by_asset"]
    assert as_int(run.csv("volume_by_category.csv"), "category", "volume_tiyn") == volume["by_category"]
    assert set(volume["by_category"]) == {"cafe", "grocery"}
    assert all(
        row["volume_kzt"] == f"{int(row['volume_tiyn']) // 100}.{int(row['volume_tiyn']) % 100:02d}"
        for row in run.csv("volume_by_day.csv")
    )
    assert as_int(run.csv("invoice_states.csv"), "status", "invoices") == summary["invoices"]["by_status"]
    assert as_int(run.csv("holds_by_reason.csv"), "reason", "held") == summary["payments"]["held_by_reason"]
    utilisation = summary["limit_utilisation"]
    assert as_int(run.csv("utilisation.csv"), "bucket_percent", "residents") == utilisation["buckets_percent"]
    settlement = {row["statistic"]: float(row["seconds"]) for row in run.csv("settlement_times.csv")}
    assert settlement == {k: summary["settlement_seconds"][k] for k in ("p50", "p90", "p99", "max")}
    figures = {row["metric"]: row["value"] for row in run.csv("summary.csv")}
    assert int(figures["volume_total_tiyn"]) == volume["total_tiyn"]
    assert int(figures["payments_judged"]) == summary["payments"]["judged"]
    assert int(figures["payments_held"]) == summary["payments"]["held"]
    assert float(figures["payments_held_rate"]) == summary["payments"]["held_rate"]
    assert int(figures["invoices_created"]) == summary["invoices"]["created"]
    assert int(figures["unique_residents"]) == summary["unique_payers"]["residents"]
    assert int(figures["unregistered_wallets"]) == summary["unique_payers"]["unregistered_wallets"]
    assert (figures["period_from"], figures["period_to"]) == (start, end)

    # payments.csv is the API's export for the month, byte for byte but for the export's closing
    # "# audit_head" line: in the bundle the head is in manifest.json (and the page), for both to agree on.
    status, export = await regulator(
        month.gateway, "GET", f"/exports/payments?from={start}&to={end}", month.token
    )
    rows, _, head_line = export.rstrip("\n").rpartition("\n")
    assert status == 200 and (run.directory / "payments.csv").read_text(encoding="utf-8") == rows + "\n"
    head = run.manifest["audit"]["head"]
    assert (
        head_line
        == f"# audit_head seq={head['seq']}; hash={head['hash']}; mac={head['mac']}; key_id={head['key_id']}"
    )
    status, decided = await regulator(
        month.gateway, "GET", f"/holds/decided?from={start}&to={end}", month.token
    )
    assert [r["payment_key"] for r in run.csv("decisions.csv")] == [d["payment_key"] for d in decided["data"]]
    assert {r["resolution"] for r in run.csv("decisions.csv")} == {"released", "refunded"}
    assert len(run.csv("holds.csv")) == 3

    merchants = run.csv("merchants.csv")
    assert {m["merchant_id"] for m in merchants} == {
        month.gateway.merchant_id,
        month.gateway.other_merchant_id,
    }
    assert sum(int(m["volume_tiyn"]) for m in merchants) == volume["total_tiyn"]
    assert "Alatau Coffee" not in run.html and "Other Shop" not in run.html  # pseudonymous ids only

    # The trial balance sums to zero in every column, and "now" is the API's trial balance.
    balance = run.csv("trial_balance.csv")
    assert balance, "the ledger booked nothing"
    for column in ("opening_tiyn", "movement_tiyn", "closing_tiyn", "current_tiyn"):
        assert sum(int(row[column]) for row in balance) == 0, column
    status, trial = await regulator(month.gateway, "GET", "/ledger/trial-balance", month.token)
    assert trial["trial_balance_tiyn"] == 0
    assert as_int(balance, "account", "current_tiyn") == trial["accounts"]
    assert figures["ledger_balanced"] == "true" and figures["ledger_journal_total_tiyn"] == "0"

    status, position = await regulator(month.gateway, "GET", "/exposure", month.token)
    for row in run.csv("exposure.csv"):
        expected = position["assets"][row["asset"]]
        assert row["on_addresses_minor"] == expected["on_addresses_minor"]
        assert row["current_rate_kzt"] == expected["current_rate_kzt"]  # a Decimal, as text
        assert int(row["locked_value_tiyn"]) == expected["locked_value_tiyn"]
        assert int(row["booked_tiyn"]) == expected["booked_tiyn"]
    limits = {row["rule"]: int(row["limit_tiyn"]) for row in run.csv("limits.csv")}
    assert limits["anonymous per operation"] == 3 * 432_500 and limits["basic per month"] == 1000 * 50_500

    # The head printed is the head `cryptocity audit head` prints, authenticated with the regulator's key.
    code, head_out, _ = await cli(tmp_path, capsys, "audit", "head")
    assert code == 0
    head_lines = head_out.strip().splitlines()
    assert head_lines[0].startswith("head ") and head_lines[1].startswith("mac ")
    assert all(line in run.out.splitlines() for line in head_lines)
    seq, hash_ = head_lines[0].split()[1].split(":")
    mac = head_lines[1].split()[1]
    assert mac == AuditKey(RAW_KEY).sign_head(int(seq), hash_)
    manifest = run.manifest
    assert manifest["audit"]["ok"] is True and manifest["audit"]["authenticated"] is True
    assert (manifest["audit"]["head"]["seq"], manifest["audit"]["head"]["hash"]) == (int(seq), hash_)
    assert manifest["audit"]["head"]["mac"] == mac
    assert hash_ in run.html and mac in run.html and "Alatau Pay LLP" in run.html
    assert str(run.directory / "report.html") in run.out

    # The manifest lists every other file with its SHA-256.
    listed = {entry["name"]: entry for entry in manifest["files"]}
    assert set(listed) == CSV_FILES | {"report.html"}
    for name, entry in listed.items():
        body = (run.directory / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["bytes"]
    assert check_bundle(run.directory) == []
    (run.directory / "holds.csv").write_text("edited\n")
    assert check_bundle(run.directory) == ["holds.csv: SHA-256 differs from the manifest"]


async def test_the_page_is_self_contained_and_every_chart_is_a_real_picture(
    make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_month(make_gateway, clock, tmp_path)
    run = await report(tmp_path, capsys, "2026-11")
    assert run.code == 0, run.err
    html = run.html
    figures = dict(
        re.findall(
            r'<figure id="chart-([a-z_]+)">\s*<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html
        )
    )
    assert set(figures) == CHARTS
    for name, encoded in figures.items():
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG" and image.width > 300 and image.height > 150, name
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 10, f"chart {name} is blank"
    # Nothing is fetched from elsewhere: no remote src/href, no scripts, stylesheets or CSS imports.
    assert not re.search(r'(?:src|href)\s*=\s*"(?:[a-z][a-z0-9+.-]*:)?//', html, re.IGNORECASE)
    assert not re.search(r"<script|<link|@import|url\(", html, re.IGNORECASE)
    assert {m for m in re.findall(r'href="([^"]+)"', html)} <= CSV_FILES | {"manifest.json", "report.html"}
    assert "No payments in this period" not in html and 'id="audit-failed"' not in html
    assert "Verified at report time without the regulator" in html  # no key was given this time


async def test_the_month_ends_at_midnight_in_almaty(
    make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    month = await build_month(make_gateway, clock, tmp_path)
    november = await report(tmp_path, capsys, "2026-11")
    december = await report(tmp_path, capsys, "2026-12")
    assert november.code == december.code == 0
    in_november = [row["payment_key"] for row in november.csv("payments.csv")]
    in_december = [row["payment_key"] for row in december.csv("payments.csv")]
    assert month.last_second_key in in_november and month.next_month_key not in in_november
    assert in_december == [month.next_month_key]
    last_day = as_int(november.csv("volume_by_day.csv"), "day", "volume_tiyn")
    assert "2026-11-30" in last_day and "2026-12-01" not in last_day
    assert as_int(december.csv("volume_by_day.csv"), "day", "volume_tiyn").keys() == {"2026-12-01"}


async def test_an_empty_month_is_a_valid_report_that_says_so(
    make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_month(make_gateway, clock, tmp_path)
    run = await report(tmp_path, capsys, "2026-09")
    assert run.code == 0, run.err
    assert "no payments in 2026-09" in run.out
    assert 'id="no-payments"' in run.html and "No payments in this period." in run.html
    assert run.html.count("data:image/png;base64,") == len(CHARTS)
    activity = CSV_FILES - {"summary.csv", "limits.csv", "exposure.csv", "trial_balance.csv"}
    for name in activity:
        lines = (run.directory / name).read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and lines[0], f"{name} should be its header alone"
    figures = {row["metric"]: row["value"] for row in run.csv("summary.csv")}
    assert figures["payments_judged"] == "0" and figures["volume_total_tiyn"] == "0"
    movement = [int(row["movement_tiyn"]) for row in run.csv("trial_balance.csv")]
    assert movement and not any(movement)  # later months' postings are not September's
    assert run.manifest["no_payments"] is True and check_bundle(run.directory) == []


async def test_a_tampered_audit_log_is_flagged_and_the_command_fails(
    make_gateway: GatewayFactory,
    clock: ManualClock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key_file: Path,
) -> None:
    await build_month(make_gateway, clock, tmp_path)
    conn = sqlite3.connect(tmp_path / "gateway.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_append_only_update")
    conn.execute("UPDATE audit_log SET body = '{\"value_tiyn\":1}' WHERE seq = 5")
    conn.close()
    run = await report(tmp_path, capsys, "2026-11", "--key-file", str(key_file))
    assert run.code == 1
    assert "did NOT verify" in run.err and "hash_mismatch" in run.err
    assert 'id="audit-failed"' in run.html and "AUDIT LOG VERIFICATION FAILED" in run.html
    manifest = run.manifest
    assert manifest["audit"]["ok"] is False and manifest["audit"]["problem"]["kind"] == "hash_mismatch"
    assert manifest["audit"]["problem"]["seq"] == 5
    assert manifest["ledger_balanced"] is True and 'id="ledger-unbalanced"' not in run.html
    assert check_bundle(run.directory) == []  # the files are written all the same


async def test_a_ledger_that_does_not_balance_is_flagged_and_the_command_fails(
    make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_month(make_gateway, clock, tmp_path)
    conn = sqlite3.connect(tmp_path / "gateway.sqlite3", isolation_level=None)
    conn.execute("UPDATE ledger_balances SET balance_tiyn = balance_tiyn + 1 WHERE account = 'clearing:BTC'")
    conn.close()
    run = await report(tmp_path, capsys, "2026-11")
    assert run.code == 1 and "the ledger does NOT balance" in run.err
    assert 'id="ledger-unbalanced"' in run.html and "clearing:BTC" in run.html
    assert run.manifest["ledger_balanced"] is False and run.manifest["audit"]["ok"] is True
    figures = {row["metric"]: row["value"] for row in run.csv("summary.csv")}
    assert figures["ledger_balanced"] == "false"
    assert sum(int(row["current_tiyn"]) for row in run.csv("trial_balance.csv")) == 1


@pytest.mark.parametrize("month", ["2026-13", "june", "2026-00", "2026-1", "26-11", "2026-11-01"])
async def test_a_bad_month_is_a_usage_error(month: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["sandbox", "report", "--month", month])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--month" in err and "is not a month" in err
    with pytest.raises(BadMonth):
        parse_month(month)


# -- the pure parts ----------------------------------------------------------------------------------------


def test_month_bounds_and_days_are_those_of_almaty() -> None:
    period = ReportPeriod.of(SandboxRules(SandboxConfig()), "2026-12")
    assert period.bounds_utc == ("2026-11-30T19:00:00.000Z", "2026-12-31T19:00:00.000Z")
    days = period.days()
    assert (days[0], days[-1], len(days)) == (date(2026, 12, 1), date(2026, 12, 31), 31)
    assert len(ReportPeriod.of(SandboxRules(SandboxConfig()), "2028-02").days()) == 29
    assert parse_month(" 2026-11 ") == "2026-11"


def test_integer_bins_cover_every_value_once() -> None:
    for low, high in ((0, 0), (1, 7), (100, 1_000_003), (5, 24)):
        edges = integer_edges(low, high, 20)
        assert edges[0] == low and edges[-1] > high and len(edges) <= 21
        widths = {b - a for a, b in itertools.pairwise(edges)}
        assert len(widths) == 1 and all(isinstance(e, int) for e in edges)
    assert bin_counts([0, 1, 1, 5, 9, 10, 11], [0, 5, 10]) == [3, 3]  # the last bin holds its right edge
    with pytest.raises(ValueError, match="increasing"):
        bin_counts([1], [3, 3])


def _distinct_colours(png: bytes) -> int:
    colours = Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 16)
    return 1 << 16 if colours is None else len(colours)


def test_the_chart_helpers_draw_pictures_and_refuse_mismatched_data() -> None:
    pictures = [
        bar_chart(["BTC", "ETH"], [125_000, 5_300], title="by asset"),
        bar_chart(["cafe", "grocery"], [3, 1], title="by category", horizontal=True, integer_values=True),
        stacked_bar_chart(["01", "02"], [Series("a", [1, 2]), Series("b", [0, 3])], title="stacked"),
        histogram([1.0, 2.0, 2.5, 9.0], bins=4, title="histogram"),
        line_chart([date(2026, 11, 1), date(2026, 11, 2)], [Series("v", [1, 3])], title="series", fill=True),
        line_chart([1, 2, 3], [Series("a", [1, 2, 3]), Series("b", [3, 2, 1])], title="two lines"),
    ]
    for png in pictures:
        assert png.startswith(b"\x89PNG") and _distinct_colours(png) > 10
    empty = bar_chart([], [], title="nothing", empty_text="no payments in this period")
    assert empty.startswith(b"\x89PNG") and _distinct_colours(empty) > 2  # says so, in words
    assert bar_chart(["a"], [1], title="same") == bar_chart(["a"], [1], title="same")  # no timestamps inside
    with pytest.raises(ValueError, match="2 values for 1 labels"):
        bar_chart(["a"], [1, 2], title="x")
    with pytest.raises(ValueError, match="series 'b'"):
        stacked_bar_chart(["a", "b"], [Series("b", [1])], title="x")
