#!/usr/bin/env bash
# Main job: set-up, then a simulated day of the Alatau pilot on local chains (bcoin regtest, anvil with
# tUSDT), the gateway with the sandbox on the embedded store; writes the report and prints where it is.
# Options go to `cryptocity simulate` (--residents N, --days D, --seed S, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cryptocity simulate "$@"
