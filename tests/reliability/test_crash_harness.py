"""Crash harness: SIGKILL a real gateway N times under load; nothing answered, paid or announced is lost.

Real bcoin regtest and anvil (with TestUSDT) nodes, a real `cryptocity serve` on SQLite with both watchers
and webhooks to a signature-checking receiver on loopback. Invoices are created over the API and paid in
BTC, ETH and USDT (full, partial, split, over- and extra payments; some expire, some are paid late and
accepted or not, some cancelled: tests/reliability/crash_plan.py) with blocks mined every second, while
the gateway is killed with SIGKILL by PID at seeded random moments (anywhere, just after start, during an
invoice request, after fresh blocks, after a webhook was answered, in the middle of a SIGTERM shutdown)
and restarted on the same store. After
the last restart and settling, the harness checks (tests/reliability/crash_checks.py): every 201 exists
with its addresses and no address went to two invoices; every payment is one payment of its invoice for
its amount, none missing or doubled, and every invoice is in the state its payments make it; every state
change has its outbox event once and every webhook event arrived at least once (duplicates counted and
reported), as stored; the ledger balances and reconciles; the audit chain verifies with its key.

CI size: 3 kills, 75–100 s on 2 shared cores (the late and expiring invoices need the 30 s minimum
expiry to pass). Full size, 20 kills, about 3 minutes, with the report as JSON:

    bash scripts/crash-harness.sh

which runs ``CRYPTOCITY_CRASH_KILLS=20 CRYPTOCITY_CRASH_REPORT=var/crash-harness.json
.venv/bin/python -m pytest tests/reliability/test_crash_harness.py -s --basetemp=var/crash-harness``
(the run's store and logs stay there). ``CRYPTOCITY_CRASH_SEED`` replays a run's plan (the seed is printed
in the summary line).

It found one bug: a Bitcoin payment mined between the watcher's mempool snapshot and its sync was taken
back to the mempool and then dropped (tests/unit/test_bitcoin_watcher_mined_snapshot.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.crash_harness import CrashSettings, run_crash_harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_sigkilled_gateway_loses_and_doubles_nothing(tmp_path: Path) -> None:
    settings = CrashSettings.from_env()
    report = await run_crash_harness(tmp_path, settings)
    print(report.summary())
    assert report.kills == settings.kills and report.starts == settings.kills + 1
    assert report.invoices > 0 and sum(report.payments.values()) > 0, report.summary()
    assert not report.problems, "\n".join([report.summary(), *report.problems[:50]])
