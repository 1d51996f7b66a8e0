#!/usr/bin/env bash
# The interactive demo: the gateway on the embedded store with a demo merchant, local
# chains (bcoin regtest, anvil with tUSDT) that it watches, and a funded demo resident wallet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cryptocity serve --demo --devnets "$@"
