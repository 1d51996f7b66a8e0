"""``cryptocity wallet new`` and ``wallet address`` as a resident runs them: the encrypted wallet file, the
recovery words shown once, passwords from a file, the environment or nowhere, and refusals (wrong password,
an altered file, mainnet) with exit status 2 and one line on stderr. No node is needed.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from embit import bip39

from tests.integration.gateway_process import cli_env, run_cli
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

PASSWORD = "pilot password 2026"
RESTORED = "legal winner thank year wave sausage worth useful legal winner thank yellow"


def wallet_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_env(tmp_path, CRYPTOCITY_WALLET_SCRYPT_N="1024", **extra)


def wallet(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(
        tmp_path, "wallet", *args, env=env or wallet_env(tmp_path, CRYPTOCITY_WALLET_PASSWORD=PASSWORD)
    )


def parallel(*runs: Callable[[], subprocess.CompletedProcess[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once (each is a fresh Python process that spends most of its time importing)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda run: run(), runs))


def test_new_shows_the_words_once_and_keeps_them_only_encrypted(tmp_path: Path) -> None:
    created = wallet(tmp_path, "new")
    assert created.returncode == 0, created.stderr
    [words_line] = [line for line in created.stdout.splitlines() if line.startswith("recovery words: ")]
    words = words_line.removeprefix("recovery words: ")
    assert len(words.split()) == 12 and bip39.mnemonic_is_valid(words)
    assert "shown only this once" in created.stderr
    assert "weaker than the default" in created.stderr  # the test's cheap scrypt is never silent

    path = tmp_path / ".cryptocity" / "wallet.json"  # the default, under HOME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    pairs = [" ".join(pair) for pair in zip(words.split(), words.split()[1:], strict=False)]
    assert words not in text and not any(pair in text for pair in pairs)
    assert json.loads(text)["kdf_params"]["n"] == 1024

    btc_address = BitcoinWallet.from_mnemonic(words, "rb").address(0)
    eth_address = EthereumWallet.from_mnemonic(words).address
    assert f"BTC {btc_address}" in created.stdout and f"ETH {eth_address}" in created.stdout

    shown, usdt, again, long = parallel(
        lambda: wallet(tmp_path, "address"),
        lambda: wallet(tmp_path, "address", "--asset", "USDT"),
        lambda: wallet(tmp_path, "new"),
        lambda: wallet(tmp_path, "new", "--words", "24", "--wallet", str(tmp_path / "w24.json")),
    )
    assert shown.returncode == 0, shown.stderr
    assert btc_address in shown.stdout and eth_address in shown.stdout
    assert words.split()[0] not in shown.stdout + shown.stderr  # never again
    assert usdt.stdout.strip() == eth_address
    assert again.returncode == 2 and "already exists" in again.stderr
    assert path.read_text() == text
    assert long.returncode == 0, long.stderr
    long_words = next(line for line in long.stdout.splitlines() if line.startswith("recovery words: "))
    assert len(long_words.split()) == 2 + 24


def test_restore_from_a_mnemonic_file_and_hand_out_fresh_addresses(tmp_path: Path) -> None:
    words_file = tmp_path / "words.txt"
    words_file.write_text(RESTORED.upper() + "\n")
    wallet_file = tmp_path / "restored.json"
    password_file = tmp_path / "password.txt"
    password_file.write_text(PASSWORD + "\n")
    env = wallet_env(tmp_path)  # no password in the environment: it comes from the file
    common = ["--wallet", str(wallet_file), "--password-file", str(password_file)]

    created = wallet(tmp_path, "new", *common, "--from-mnemonic-file", str(words_file), env=env)
    assert created.returncode == 0, created.stderr
    assert "recovery words" not in created.stdout and "legal" not in created.stdout  # restored: not shown

    restored = BitcoinWallet.from_mnemonic(RESTORED, "rb")
    assert f"BTC {restored.address(0)}" in created.stdout
    fresh = [wallet(tmp_path, "address", "--new", *common, env=env).stdout.strip() for _ in range(2)]
    assert fresh == [restored.address(1), restored.address(2)]
    shown, eth_new = parallel(
        lambda: wallet(tmp_path, "address", "--asset", "BTC", *common, env=env),
        lambda: wallet(tmp_path, "address", "--asset", "ETH", "--new", *common, env=env),
    )
    assert shown.stdout.strip() == restored.address(2)
    assert json.loads(wallet_file.read_text())["indexes"] == {"bitcoin_receive": 2}
    assert eth_new.returncode == 2 and "one address" in eth_new.stderr


def test_wrong_password_tampering_and_missing_password_exit_2(tmp_path: Path) -> None:
    assert wallet(tmp_path, "new").returncode == 0
    path = tmp_path / ".cryptocity" / "wallet.json"

    def without_password() -> subprocess.CompletedProcess[str]:
        # no password anywhere and no terminal to ask on: refused, not read from stdin
        return subprocess.run(
            [sys.executable, "-m", "sandbox.cli", "wallet", "address"],
            env=wallet_env(tmp_path),
            cwd=tmp_path,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    wrong, nothing, missing = parallel(
        lambda: wallet(
            tmp_path, "address", env=wallet_env(tmp_path, CRYPTOCITY_WALLET_PASSWORD="not the password")
        ),
        without_password,
        lambda: wallet(tmp_path, "address", "--wallet", str(tmp_path / "none.json")),
    )
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip().splitlines() == [f"wallet: wrong password for the wallet {path}"]
    assert nothing.returncode == 2 and "no wallet password" in nothing.stderr
    assert missing.returncode == 2 and "wallet new" in missing.stderr

    document = json.loads(path.read_text())
    document["indexes"]["bitcoin_receive"] = 7  # metadata is authenticated
    path.write_text(json.dumps(document))
    tampered = wallet(tmp_path, "address")
    assert tampered.returncode == 2 and "failed authentication" in tampered.stderr
    assert len(tampered.stderr.strip().splitlines()) == 1

    path.write_text("{not json")
    broken = wallet(tmp_path, "address")
    assert broken.returncode == 2 and "not a wallet file" in broken.stderr


def test_mainnet_and_bad_settings_are_refused_at_creation(tmp_path: Path) -> None:
    chain_one, bad_prefix, mainnet, short = parallel(
        lambda: wallet(tmp_path, "new", "--eth-chain-id", "1"),
        lambda: wallet(tmp_path, "new", "--btc-network", "signet", "--btc-hrp", "bc"),
        lambda: wallet(tmp_path, "new", "--btc-network", "mainnet"),
        lambda: wallet(tmp_path, "new", env=wallet_env(tmp_path, CRYPTOCITY_WALLET_PASSWORD="short")),
    )
    assert chain_one.returncode == 2 and "mainnet" in chain_one.stderr
    assert bad_prefix.returncode == 2 and "start with tb" in bad_prefix.stderr
    assert mainnet.returncode == 2  # not even a choice
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert not (tmp_path / ".cryptocity" / "wallet.json").exists()
    signet = wallet(tmp_path, "new", "--btc-network", "signet")
    assert signet.returncode == 0, signet.stderr
    assert " tb1q" in signet.stdout
