#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools, and installs the local chain nodes from npm
# (node_modules, pinned by package-lock.json); safe to run again (does nothing if current).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cryptocity needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # setuptools too: the venv's bundled one (65.x) has known advisories (scripts/audit_deps.py)
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools
  .venv/bin/python -m pip install --quiet -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "cryptocity needs Node.js and npm for its local chain nodes (bcoin); install them first" >&2
  exit 1
fi
node_stamp=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f "$node_stamp" ]; then
  # .npmrc sets nodedir=/usr so bcoin's native module compiles against the local Node headers offline
  npm_config_nodedir=${npm_config_nodedir:-/usr} npm ci --no-audit --no-fund --loglevel=error
  touch "$node_stamp"
fi
# Debian's Chromium for the browser tests (tests/browser drives it with Playwright; never `playwright install`)
command -v chromium >/dev/null 2>&1 || {
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "could not install Chromium (apt-get install chromium chromium-driver); the browser tests need it" >&2
}
