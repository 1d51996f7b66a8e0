"""``cryptocity sandbox report`` as an operator runs it: a separate process, a bare environment, a store file.

The figures themselves are checked against the regulator API in tests/api/test_sandbox_report.py; here
the command's own behaviour: the default folder, exit statuses, the printed head, and a tampered log.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sandbox.audit.keys import KEY_ENV, AuditKey
from sandbox.report.bundle import check_bundle
from tests.integration.gateway_process import cli_env, run_cli
from tests.integration.test_audit_cli import RAW_KEY, build_log

pytestmark = pytest.mark.integration


def test_an_empty_store_gets_a_valid_report_in_the_default_folder(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "sandbox", "report", "--month", "2026-11")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "sandbox-report-2026-11"
    assert "report written to sandbox-report-2026-11/report.html" in result.stdout
    assert "no payments in 2026-11" in result.stdout and "audit: OK: the audit log is empty" in result.stdout
    assert "No payments in this period." in (folder / "report.html").read_text(encoding="utf-8")
    assert check_bundle(folder) == []
    payments = (folder / "payments.csv").read_text(encoding="utf-8").splitlines()
    assert payments == [payments[0]] and payments[0].startswith("decided_at,chain,payment_key")


@pytest.mark.parametrize(
    ("month", "reason"),
    [("2026-13", "the month must be 01 to 12"), ("june", "write YYYY-MM"), ("", "write YYYY-MM")],
)
def test_a_bad_month_exits_2_and_writes_nothing(tmp_path: Path, month: str, reason: str) -> None:
    result = run_cli(tmp_path, "sandbox", "report", "--month", month)
    assert result.returncode == 2
    assert "argument --month" in result.stderr and reason in result.stderr
    assert not list(tmp_path.glob("sandbox-report-*"))


def test_an_unreadable_key_or_a_file_for_a_folder_exits_2(tmp_path: Path) -> None:
    missing = run_cli(
        tmp_path, "sandbox", "report", "--month", "2026-11", "--key-file", str(tmp_path / "nope")
    )
    assert missing.returncode == 2 and "audit key" in missing.stderr
    (tmp_path / "taken").write_text("a file")
    taken = run_cli(tmp_path, "sandbox", "report", "--month", "2026-11", "--out", str(tmp_path / "taken"))
    assert taken.returncode == 2 and "is a file, not a folder" in taken.stderr


def test_the_report_quotes_the_authenticated_head_and_fails_on_a_tampered_log(tmp_path: Path) -> None:
    build_log(tmp_path, AuditKey(RAW_KEY), events=12)
    env = cli_env(tmp_path, **{KEY_ENV: RAW_KEY.hex()})
    out = tmp_path / "out"
    result = run_cli(tmp_path, "sandbox", "report", "--month", "2026-11", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    head = run_cli(tmp_path, "audit", "head", env=env)
    assert head.returncode == 0, head.stderr
    assert head.stdout.strip() and all(
        line in result.stdout.splitlines() for line in head.stdout.splitlines()
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["audit"]["ok"] is True and manifest["audit"]["authenticated"] is True
    assert f"head {manifest['audit']['head']['seq']}:{manifest['audit']['head']['hash']}" in head.stdout
    assert RAW_KEY.hex() not in result.stdout + result.stderr + (out / "report.html").read_text(
        encoding="utf-8"
    )

    conn = sqlite3.connect(tmp_path / "gateway.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_append_only_update")
    conn.execute("UPDATE audit_log SET body = '{\"amount_tiyn\":1}' WHERE seq = 7")
    conn.close()
    tampered = run_cli(tmp_path, "sandbox", "report", "--month", "2026-11", "--out", str(out), env=env)
    assert tampered.returncode == 1
    assert "did NOT verify" in tampered.stderr and "hash_mismatch at seq 7" in tampered.stderr
    assert "AUDIT LOG VERIFICATION FAILED" in (out / "report.html").read_text(encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["audit"]["ok"] is False and manifest["audit"]["problem"]["seq"] == 7
    assert check_bundle(out) == []
