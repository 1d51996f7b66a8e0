#!/usr/bin/env bash
# Every benchmark, one table: bench/run.py after the set-up. `bash scripts/bench.sh --quick` for the CI size.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/run.py "$@"
