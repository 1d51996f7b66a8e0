#!/usr/bin/env bash
# Full-size crash harness (tests/reliability/test_crash_harness.py): a real gateway SIGKILLed 20 times under
# invoice and payment load on local bcoin and anvil nodes, then checked for lost or doubled invoices,
# payments, events, webhooks, ledger entries and audit entries. Writes the run's report as JSON.
# The run's directory (store, node and gateway logs) stays in var/crash-harness/ for a post-mortem.
# Override with CRYPTOCITY_CRASH_KILLS, CRYPTOCITY_CRASH_SEED, CRYPTOCITY_CRASH_REPORT; extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CRYPTOCITY_CRASH_KILLS=${CRYPTOCITY_CRASH_KILLS:-20}
export CRYPTOCITY_CRASH_REPORT=${CRYPTOCITY_CRASH_REPORT:-var/crash-harness.json}
mkdir -p var
exec .venv/bin/python -m pytest tests/reliability/test_crash_harness.py -s -p no:cacheprovider \
  --basetemp=var/crash-harness "$@"
