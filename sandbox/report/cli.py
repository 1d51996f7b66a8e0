"""``cryptocity sandbox report --month YYYY-MM [--out DIR]``: the monthly report a FinTech Lab participant
sends the regulator.

The command verifies the audit log first (the whole chain, with the regulator's key when one is
configured), reads the month through the regulator API's own functions, and writes the bundle
(bundle.py). It prints where the report is and the audit head, in the lines ``cryptocity audit head``
prints, so the operator can quote it in the covering letter.

Exit status: 0 when the bundle is written and both the audit log verified and the ledger balances; 1 when
the bundle is written but either check failed (the report says so at the top) or it could not be
written; 2 for usage errors (a bad ``--month``, ``--out`` naming a file, an unreadable key file).

matplotlib is imported only when a report is made, so the other ``cryptocity`` commands start as fast as
before.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.clock import Clock
from gateway.config import Config
from gateway.rates.live import ConfiguredRates
from gateway.store import Store
from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey
from sandbox.audit.verify import verify
from sandbox.extension import OfficialUsdRate
from sandbox.limits import SandboxRules
from sandbox.policy import SandboxPolicy
from sandbox.report.period import ReportPeriod, month_argument

DEFAULT_PARTICIPANT = "CryptoCity payment gateway"


def add_report_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``report`` on the ``cryptocity sandbox`` sub-command parsers."""
    report = subparsers.add_parser(
        "report", help="write the month's report for the regulator: HTML with charts, CSV files, manifest"
    )
    report.add_argument(
        "--month",
        required=True,
        type=month_argument,
        metavar="YYYY-MM",
        help="the calendar month to report, in sandbox.timezone (Asia/Almaty), e.g. 2026-11",
    )
    report.add_argument("--out", type=Path, help="folder to write (default: ./sandbox-report-YYYY-MM)")
    report.add_argument(
        "--participant", default=DEFAULT_PARTICIPANT, help="the FinTech Lab participant's name for the header"
    )
    report.add_argument(
        "--key-file",
        type=Path,
        help=f"the regulator's audit key, to authenticate the head (default: ${KEY_FILE_ENV}, then ${KEY_ENV})",
    )
    report.add_argument(
        "--rates-wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="with live rates, how long to wait for the providers' first answers (exposure is valued now)",
    )


async def run_report(args: argparse.Namespace, config: Config, store: Store, clock: Clock) -> int:
    from sandbox.report.bundle import write_bundle  # matplotlib: only when a report is made
    from sandbox.report.data import gather_month
    from sandbox.report.html import ReportMeta

    rules = SandboxRules(config.sandbox)
    period = ReportPeriod.of(rules, args.month)
    out: Path = args.out or Path(f"sandbox-report-{period.month}")
    if await asyncio.to_thread(out.is_file):
        print(f"report: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    key = AuditKey.load(args.key_file)  # an unreadable key is AuditKeyError: exit 2 in sandbox.cli.main
    rates = ConfiguredRates(config.rates, clock)
    await rates.start()
    try:
        await _first_rates(rates, args.rates_wait)
        usd = OfficialUsdRate()
        usd.rates = rates
        conversion = SandboxPolicy(rules, usd).conversion()
        print("verifying the audit log…", file=sys.stderr, flush=True)
        audit = await verify(store, key)
        print(f"reading {period.month}…", file=sys.stderr, flush=True)
        data = await gather_month(store, period, rules, conversion, rates.source, clock.now())
    finally:
        await rates.stop()
    print("writing the report…", file=sys.stderr, flush=True)
    meta = ReportMeta(participant=args.participant, gateway=config.public_url)
    try:
        bundle = await write_bundle(out, store, data, audit, meta)
    except OSError as exc:
        print(f"report: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(f"report written to {bundle.report}")
    print(f"  {len(bundle.files)} files and manifest.json in {bundle.directory}")
    if not data.has_payments:
        print(f"  no payments in {period.month}")
    print(f"audit: {audit.verdict()}")
    head = audit.head
    if head is not None:
        mac = head.mac or "none (the gateway runs without an audit key)"
        print(
            f"head {head.seq}:{head.hash}\nmac {mac}\nkey_id {head.key_id or '-'}\nsigned_at {head.signed_at}"
        )
    failed = False
    if not audit.ok:
        print(
            f"report: the audit log did NOT verify ({audit.verdict()}); the report says so at the top",
            file=sys.stderr,
        )
        failed = True
    if not data.ledger.balanced:
        print("report: the ledger does NOT balance; the report shows where", file=sys.stderr)
        failed = True
    return 1 if failed else 0


async def _first_rates(rates: ConfiguredRates, seconds: float) -> None:
    """With live providers, wait (at most ``seconds``) until each has answered or failed once."""
    if rates.refresher is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        health = rates.refresher.health().values()
        if all(h.last_success_at is not None or h.last_error_at is not None for h in health):
            return
        await asyncio.sleep(0.1)
