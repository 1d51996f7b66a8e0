"""``cryptocity audit verify`` and ``audit head`` as a regulator runs them: a separate process on a database file.

Until sandbox/cli.py registers the commands, each run goes through a few lines that do what that
registration does (``add_audit_commands`` on the sub-command parsers, then, after loading the configuration
and logging as ``main`` does, ``run_audit_command``), in a fresh interpreter with a bare environment.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.config import load_config
from gateway.store import SqliteStore, Tx
from sandbox.audit.chain import EntryDraft
from sandbox.audit.keys import KEY_ENV, AuditKey
from sandbox.audit.startup import record_startup
from sandbox.audit.store import append
from tests.integration.gateway_process import cli_env

pytestmark = pytest.mark.integration

RAW_KEY = bytes(range(100, 132))
CLI = """
import argparse, asyncio, sys
from gateway.config import default_config_path, load_config
from gateway.logging import configure_logging
from sandbox.audit.cli import add_audit_commands, run_audit_command
parser = argparse.ArgumentParser(prog="cryptocity")
add_audit_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
config = load_config(default_config_path())
configure_logging(config.logging.level, config.logging.format)
sys.exit(asyncio.run(run_audit_command(args, config)))
"""


def audit(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, "audit", *args],
        env=cli_env(workdir, **env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def build_log(workdir: Path, key: AuditKey, events: int = 30) -> Path:
    """A store with a start-up entry and ``events`` entries in batches of 7, as the gateway writes them."""
    path = workdir / "gateway.sqlite3"

    async def build() -> None:
        store = await SqliteStore.open(path)
        clock = ManualClock()
        try:
            await record_startup(store, clock, load_config(None, environ={}), key)
            for start in range(0, events, 7):
                drafts = [
                    EntryDraft("invoice.settled", f"inv_{n}", f"evt_{n}", {"amount_tiyn": 1000 * n})
                    for n in range(start, min(start + 7, events))
                ]

                async def unit(tx: Tx, drafts: list[EntryDraft] = drafts) -> None:
                    await append(tx, drafts, clock.now(), key)

                await store.transaction(unit)
                clock.advance(5)
        finally:
            await store.close()

    asyncio.run(build())
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "regulator.key"
    path.write_text("hex:" + RAW_KEY.hex() + "\n")
    path.chmod(0o600)
    return path


def test_verify_and_head_on_an_intact_log(tmp_path: Path, key_file: Path) -> None:
    build_log(tmp_path, AuditKey(RAW_KEY))
    key_id = AuditKey(RAW_KEY).key_id

    keyed = audit(tmp_path, "verify", "--key-file", str(key_file))
    assert keyed.returncode == 0, keyed.stderr
    assert keyed.stdout.count("\n") == 1
    assert keyed.stdout.startswith("OK: 31 entries, chain intact to seq 31 (hash ")
    assert keyed.stdout.rstrip().endswith(f"head authenticated with key {key_id}")

    from_env = audit(tmp_path, "verify", **{KEY_ENV: RAW_KEY.hex()})
    assert from_env.returncode == 0 and from_env.stdout == keyed.stdout

    unkeyed = audit(tmp_path, "verify")
    assert unkeyed.returncode == 0 and unkeyed.stdout.startswith("OK (unauthenticated): 31 entries")

    as_json = json.loads(audit(tmp_path, "verify", "--key-file", str(key_file), "--json").stdout)
    assert as_json["ok"] is True and as_json["authenticated"] is True and as_json["problem"] is None
    assert as_json["head"]["seq"] == 31 and as_json["key_id"] == key_id

    head = audit(tmp_path, "head")
    assert head.returncode == 0, head.stderr
    first = head.stdout.splitlines()[0]
    assert first == f"head 31:{as_json['last_hash']}"
    head_json = json.loads(audit(tmp_path, "head", "--json").stdout)
    assert head_json["mac"] == AuditKey(RAW_KEY).sign_head(31, as_json["last_hash"])
    assert head_json["last_entry_seq"] == 31

    expected = audit(tmp_path, "verify", "--key-file", str(key_file), "--expect-head", first.split()[1])
    assert expected.returncode == 0, expected.stdout
    for output in (keyed, from_env, unkeyed, head, expected):
        assert RAW_KEY.hex() not in output.stdout + output.stderr


def test_verify_names_the_tampered_entry(tmp_path: Path, key_file: Path) -> None:
    path = build_log(tmp_path, AuditKey(RAW_KEY))
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(path, copy)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_append_only_update")
    conn.execute("UPDATE audit_log SET body = '{\"amount_tiyn\":1}' WHERE seq = 17")
    (entry_id,) = conn.execute("SELECT id FROM audit_log WHERE seq = 17").fetchone()
    conn.close()

    result = audit(tmp_path, "verify", "--key-file", str(key_file))
    assert result.returncode == 1
    assert result.stdout.startswith(f"TAMPERED: hash_mismatch at seq 17 ({entry_id}): ")
    problem = json.loads(audit(tmp_path, "verify", "--json").stdout)["problem"]
    assert (problem["kind"], problem["seq"], problem["entry_id"]) == ("hash_mismatch", 17, entry_id)

    untouched = audit(tmp_path, "verify", "--key-file", str(key_file), "--db", str(copy))
    assert untouched.returncode == 0, untouched.stdout


def test_a_wrong_key_and_usage_errors(tmp_path: Path, key_file: Path) -> None:
    build_log(tmp_path, AuditKey(RAW_KEY), events=3)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(bytes(32).hex())
    wrong.chmod(0o600)
    result = audit(tmp_path, "verify", "--key-file", str(wrong))
    assert result.returncode == 1 and result.stdout.startswith("UNVERIFIED: head_unauthenticated at seq 4")

    short = tmp_path / "short.key"
    short.write_text("abcd" * 4)
    missing_db = audit(tmp_path, "verify", "--db", str(tmp_path / "absent.sqlite3"))
    bad_key = audit(tmp_path, "verify", "--key-file", str(short))
    bad_head = audit(tmp_path, "verify", "--expect-head", "4:nothex")
    for usage in (missing_db, bad_key, bad_head):
        assert usage.returncode == 2 and usage.stdout == ""
    assert "no such database file" in missing_db.stderr
    assert "8 bytes; at least 32" in bad_key.stderr and "abcd" not in bad_key.stderr
    assert "audit.key_file_open_to_others" in bad_key.stderr  # logs go to stderr: --json output stays clean
    assert "SEQ:HASH" in bad_head.stderr


def docs_verifier() -> str:
    """The stand-alone verifier printed in docs/audit-log.md, so the page cannot drift from the code."""
    text = (Path(__file__).resolve().parents[2] / "docs/audit-log.md").read_text(encoding="utf-8")
    section = text.split("## Verifying with your own tool", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_stand_alone_verifier(tmp_path: Path) -> None:
    path = build_log(tmp_path, AuditKey(RAW_KEY))
    script = tmp_path / "verify_audit.py"
    script.write_text(docs_verifier())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", str(script), str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    intact = run(RAW_KEY.hex())
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("OK: 31 entries, head 31:") and "authenticated" in intact.stdout
    assert run(bytes(32).hex()).stderr.strip() == "head 31: MAC mismatch"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_append_only_update")
    conn.execute("UPDATE audit_log SET body = '{\"amount_tiyn\":1}' WHERE seq = 9")
    (entry_id,) = conn.execute("SELECT id FROM audit_log WHERE seq = 9").fetchone()
    conn.close()
    tampered = run()
    assert tampered.returncode == 1 and tampered.stderr.strip() == f"seq 9 ({entry_id}): hash mismatch"
