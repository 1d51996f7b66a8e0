"""The `cryptocity` command as an operator uses it: version, migrate, merchants, serve, serve --demo."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from embit import bip32, bip39

from tests.integration.gateway_process import cli_env, create_merchant, run_cli, start_gateway

pytestmark = pytest.mark.integration


def test_version_and_the_installed_console_script(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "version")
    assert result.returncode == 0 and result.stdout.startswith("cryptocity ")
    script = Path(sys.executable).parent / "cryptocity"
    assert script.exists()
    installed = subprocess.run(
        [str(script), "version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert installed.stdout == result.stdout


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        result = run_cli(tmp_path, "migrate")
        assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(tmp_path / "gateway.sqlite3")
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert versions == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert {
        "merchants",
        "invoices",
        "outbox",
        "api_keys",
        "idempotency_keys",
        "chain_blocks",
        "rate_history",
    } <= tables


def test_merchant_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    created = create_merchant(tmp_path)
    merchant_id, key = created["merchant"]["id"], created["api_key"]
    assert key.startswith("cc_test_")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.sqlite3*"))
    assert key.encode() not in stored  # only its hash is kept

    listed = run_cli(tmp_path, "merchants", "list")
    view = json.loads(listed.stdout.splitlines()[0])
    assert view["id"] == merchant_id and view["has_btc_key"] and len(view["keys"]) == 1
    assert "pub" not in listed.stdout  # no extended public keys printed

    rotated = json.loads(run_cli(tmp_path, "merchants", "rotate-key", merchant_id).stdout)["api_key"]
    extra = json.loads(run_cli(tmp_path, "merchants", "add-key", merchant_id).stdout)["api_key"]
    gateway = start_gateway(tmp_path)
    try:
        assert gateway.request("GET", "/v1/invoices", key=key)[0] == 401  # rotated away
        assert gateway.request("GET", "/v1/invoices", key=rotated)[0] == 200
        assert gateway.request("GET", "/v1/invoices", key=extra)[0] == 200
    finally:
        assert gateway.stop() == 0
    lookup = extra[len("cc_test_") : len("cc_test_") + 12]
    assert run_cli(tmp_path, "merchants", "revoke-key", merchant_id, lookup).returncode == 0
    assert run_cli(tmp_path, "merchants", "disable", merchant_id).returncode == 0
    keys = json.loads(run_cli(tmp_path, "merchants", "list").stdout.splitlines()[0])
    assert keys["status"] == "disabled"


def test_bad_merchant_input_exits_with_a_reason(tmp_path: Path) -> None:
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed("abandon " * 11 + "about"))
    private = root.derive("m/84h/1h/0h").to_base58()
    result = run_cli(tmp_path, "merchants", "create", "--name", "X", "--btc-xpub", private)
    assert result.returncode == 2 and "btc_account_key" in result.stderr and "private" in result.stderr
    result = run_cli(
        tmp_path,
        "merchants",
        "create",
        "--name",
        "X",
        "--eth-xpub",
        root.derive("m/44h/60h/0h").to_public().to_base58(),
        "--assets",
        "DOGE",
    )
    assert result.returncode == 2 and "--assets" in result.stderr
    result = run_cli(tmp_path, "merchants", "disable", "mer_doesnotexist")
    assert result.returncode == 1 and "not found" in result.stderr


def test_a_merchants_spread_is_set_at_onboarding_and_changed_later(tmp_path: Path) -> None:
    created = create_merchant(tmp_path, "--spread-bps", "120")
    merchant_id = created["merchant"]["id"]
    assert created["merchant"]["spread_bps"] == 120
    changed = run_cli(tmp_path, "merchants", "set-spread", merchant_id, "45")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["spread_bps"] == 45
    refused = run_cli(tmp_path, "merchants", "set-spread", merchant_id, "10000")
    assert refused.returncode == 2 and "spread_bps" in refused.stderr
    listed = json.loads(run_cli(tmp_path, "merchants", "list").stdout.splitlines()[0])
    assert listed["spread_bps"] == 45


def test_serve_starts_with_no_configuration_and_stops_cleanly(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path)  # empty directory, no config file, only the store path set
    try:
        assert gateway.base_url.startswith("http://127.0.0.1:")  # loopback by default
        assert gateway.request("GET", "/healthz") == (200, {"status": "ok", "checks": {}})
        assert gateway.request("GET", "/readyz")[0] == 200
        status, spec = gateway.request("GET", "/openapi.json")
        assert status == 200 and spec["openapi"] == "3.1.0"
    finally:
        assert gateway.stop() == 0


def test_serve_demo_creates_one_demo_merchant_and_a_working_key(tmp_path: Path) -> None:
    keys = []
    for _ in range(2):
        gateway = start_gateway(tmp_path, "--demo")
        try:
            key = gateway.banner.split("(shown once): ")[1].split()[0]
            assert "curl -s -X POST" in gateway.banner
            status, invoice = gateway.request(
                "POST", "/v1/invoices", {"amount": "12500.00", "currency": "KZT"}, key
            )
            assert status == 201
            assert invoice["checkout_url"].startswith(gateway.base_url + "/i/")  # the real port, not :0
            assert [m["asset"] for m in invoice["payment_methods"]] == ["BTC", "ETH", "USDT"]
            keys.append(key)
        finally:
            assert gateway.stop() == 0
    assert keys[0] != keys[1]
    merchants = run_cli(tmp_path, "merchants", "list").stdout.splitlines()
    assert [json.loads(m)["name"] for m in merchants] == ["Alatau Demo Coffee"]


def test_a_wrong_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", env=cli_env(tmp_path, CRYPTOCITY_SERVER__PORT="abc"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "server.port" in result.stderr


def test_serve_demo_with_devnets_settles_a_wallet_payment_on_each_chain(tmp_path: Path) -> None:
    # The demo registers its resident's wallets with the sandbox; the regulator's audit key signs the chain head.
    env = cli_env(tmp_path, CRYPTOCITY_SANDBOX__ENABLED="true", CRYPTOCITY_AUDIT_KEY="ab" * 32)
    gateway = start_gateway(tmp_path, "--demo", "--devnets", env=env, deadline=120)
    try:
        assert gateway.process.stdout is not None
        banner = gateway.banner
        while "or pass the QR image" not in banner:
            line = gateway.process.stdout.readline()
            assert line, banner
            banner += line
        key = re.search(r"API key \(shown once\): (cc_test_\w+)", banner).group(1)  # type: ignore[union-attr]
        eth_rpc = re.search(r"anvil, chain id 31337\): (http://127\.0\.0\.1:\d+)", banner).group(1)  # type: ignore[union-attr]
        btc_rpc, btc_key = re.search(r"bcoin\): (http://127\.0\.0\.1:\d+/)\s+api key (\w+)", banner).groups()  # type: ignore[union-attr]
        words = re.search(r"recovery words in (\S+)\)", banner).group(1)  # type: ignore[union-attr]
        for asset, rpc in (
            ("USDT", ["--rpc", eth_rpc]),
            ("BTC", ["--rpc", btc_rpc, "--rpc-password", btc_key]),
        ):
            status, invoice = gateway.request(
                "POST", "/v1/invoices", {"amount": "9000.00", "currency": "KZT"}, key
            )
            assert status == 201, invoice
            uri = next(m["uri"] for m in invoice["payment_methods"] if m["asset"] == asset)
            extra = ["--hrp", "rb", "--from-height", "0"] if asset == "BTC" else []
            paid = run_cli(tmp_path, "wallet", "pay", uri, *rpc, "--mnemonic-file", words, *extra, "--yes")
            assert paid.returncode == 0, paid.stderr
            deadline = time.monotonic() + 30
            while gateway.request("GET", f"/v1/invoices/{invoice['id']}", key=key)[1]["status"] != "settled":
                assert time.monotonic() < deadline, f"{asset} payment not settled"
                time.sleep(0.2)
        # the sandbox's ledger booked both settlements in digital tenge: the prices, and a balanced journal
        account = f"merchant:{invoice['merchant_id']}:settlement"
        deadline = time.monotonic() + 30
        while _ledger_balance(tmp_path, account) != 2 * 900_000:
            assert time.monotonic() < deadline, f"ledger balance {_ledger_balance(tmp_path, account)}"
            time.sleep(0.2)
        with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
            assert db.execute("SELECT COALESCE(SUM(amount_tiyn), 0) FROM ledger_lines").fetchone()[0] == 0
            # the sandbox judged both payments as the registered demo resident's, and accepted them
            decisions = db.execute("SELECT resident_id, decision FROM sandbox_payments").fetchall()
        assert len(decisions) == 2 and all(r and d == "accepted" for r, d in decisions)
        # the regulator sees the volume, and the audit log's chain verifies
        token = json.loads(run_cli(tmp_path, "sandbox", "token", "create", env=env).stdout)["token"]
        status, summary = gateway.request("GET", "/sandbox/v1/summary", key=token)
        assert status == 200 and summary["payments"]["judged"] == 2 and summary["payments"]["held"] == 0
        verified = run_cli(tmp_path, "audit", "verify", env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("OK") and "unauthenticated" not in verified.stdout, verified.stdout
    finally:
        assert gateway.stop() == 0


def _ledger_balance(workdir: Path, account: str) -> int | None:
    with sqlite3.connect(workdir / "gateway.sqlite3") as db:
        row = db.execute("SELECT balance_tiyn FROM ledger_balances WHERE account = ?", (account,)).fetchone()
    return None if row is None else int(row[0])
