"""``cryptocity wallet register --resident <id>``: the wallet's BIP84 receive and change scripts and its
Ethereum address go into the sandbox registry's store (the same SQLite file the gateway and ``cryptocity
sandbox`` use), once: a second run adds nothing, and a wallet of another resident is refused whole.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.integration.gateway_process import cli_env, run_cli
from wallets.bitcoin import CHANGE, EXTERNAL, BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

WORDS = "legal winner thank year wave sausage worth useful legal winner thank yellow"


def resident(tmp_path: Path, env: dict[str, str]) -> str:
    added = run_cli(tmp_path, "sandbox", "resident", "add", "--tier", "basic", env=env)
    assert added.returncode == 0, added.stderr
    return str(json.loads(added.stdout)["id"])


def registered(tmp_path: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
        rows = db.execute("SELECT chain, owner, resident_id FROM resident_wallets").fetchall()
    return {(chain, owner): resident_id for chain, owner, resident_id in rows}


def events(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
        query = "SELECT COUNT(*) FROM outbox WHERE type = 'sandbox.wallet_registered'"
        return int(db.execute(query).fetchone()[0])


def test_register_is_complete_and_idempotent(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path, CRYPTOCITY_WALLET_PASSWORD="resident password 3", CRYPTOCITY_WALLET_SCRYPT_N="1024"
    )
    words = tmp_path / "words.txt"
    words.write_text(WORDS)

    def wallet(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(tmp_path, "wallet", *args, env=env)

    assert wallet("new", "--from-mnemonic-file", str(words)).returncode == 0
    owner = resident(tmp_path, env)

    first = wallet("register", "--resident", owner)
    assert first.returncode == 0, first.stderr
    assert "41 wallet entries added, 0 already registered (40 bitcoin scripts" in first.stdout

    btc = BitcoinWallet.from_mnemonic(WORDS, "rb")
    expected = {
        ("bitcoin", btc.script_pubkey(index, chain=chain).hex())
        for chain in (EXTERNAL, CHANGE)
        for index in range(20)
    } | {("ethereum", EthereumWallet.from_mnemonic(WORDS).address.lower())}
    assert registered(tmp_path) == dict.fromkeys(expected, owner)
    assert events(tmp_path) == 41  # each in the audit trail once

    again = wallet("register", "--resident", owner)
    assert again.returncode == 0, again.stderr
    assert "0 wallet entries added, 41 already registered" in again.stdout
    assert registered(tmp_path) == dict.fromkeys(expected, owner) and events(tmp_path) == 41

    # receive addresses handed out beyond --count are registered too
    second = ["--wallet", str(tmp_path / "second.json")]
    assert wallet("new", *second).returncode == 0
    for _ in range(2):
        assert wallet("address", "--new", *second).returncode == 0
    small = wallet("register", "--resident", owner, "--count", "1", *second)
    assert "5 wallet entries added, 0 already registered (4 bitcoin scripts" in small.stdout  # receive 0-2
    assert len(registered(tmp_path)) == 41 + 5

    # another resident cannot take this wallet, and nothing of it is written
    other = resident(tmp_path, env)
    before = registered(tmp_path)
    stolen = wallet("register", "--resident", other, "--count", "30")
    assert stolen.returncode == 2 and "registered to another resident" in stolen.stderr
    assert registered(tmp_path) == before

    unknown = wallet("register", "--resident", "res_nobody")
    assert unknown.returncode == 1 and "no resident" in unknown.stderr
