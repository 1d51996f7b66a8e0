"""The resident wallet's encrypted file (wallets.keystore): round trip, wrong password, tampering, file
mode, atomic writes, and that the mnemonic is never in the file in plaintext.

scrypt runs with n=2**10 here (fast); one test checks that the default stays the strong 2**17.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wallets import keystore as ks

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PASSWORD = "correct horse battery staple"
FAST = ks.ScryptParams(n=2**10, r=8, p=1)
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NETWORKS = ks.Networks(
    ks.BitcoinSettings("regtest", "rb", birth_height=7),
    ks.EthereumSettings(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3"),
)


def make(tmp_path: Path, **kwargs: Any) -> ks.UnlockedWallet:
    options: dict[str, Any] = {"created_at": WHEN, "networks": NETWORKS, "scrypt": FAST, **kwargs}
    return ks.create_keystore(tmp_path / "wallet.json", MNEMONIC, PASSWORD, **options)


def edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))


def test_round_trip_gives_back_the_mnemonic_and_the_settings(tmp_path: Path) -> None:
    created = make(tmp_path)
    opened = ks.open_keystore(created.path, PASSWORD)
    assert opened.mnemonic == MNEMONIC
    assert opened.networks == NETWORKS
    assert opened.receive_index == 0
    assert opened.created_at == "2026-03-01T12:00:00.000Z"
    assert opened.scrypt == FAST
    assert MNEMONIC.split()[0] not in repr(opened)  # repr never shows the words or the key
    assert ks.read_public(created.path) == (NETWORKS, 0)


def test_mnemonic_is_normalised_and_its_checksum_checked(tmp_path: Path) -> None:
    messy = "  " + MNEMONIC.upper().replace(" ", "\n  ") + "\n"
    wallet = ks.create_keystore(tmp_path / "a.json", messy, PASSWORD, created_at=WHEN, scrypt=FAST)
    assert ks.open_keystore(wallet.path, PASSWORD).mnemonic == MNEMONIC
    bad_checksum = MNEMONIC.replace("yellow", "legal")
    with pytest.raises(ks.KeystoreError, match="checksum"):
        ks.create_keystore(tmp_path / "b.json", bad_checksum, PASSWORD, created_at=WHEN, scrypt=FAST)
    assert not (tmp_path / "b.json").exists()


def test_new_mnemonics_are_valid_and_different() -> None:
    twelve, other, twenty_four = ks.new_mnemonic(12), ks.new_mnemonic(12), ks.new_mnemonic(24)
    assert len(twelve.split()) == 12 and len(twenty_four.split()) == 24 and twelve != other
    assert ks.normalise_mnemonic(twelve) == twelve and ks.normalise_mnemonic(twenty_four) == twenty_four
    with pytest.raises(ks.KeystoreError):
        ks.new_mnemonic(13)


def test_a_wrong_password_is_told_apart_from_tampering(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    with pytest.raises(ks.WrongPassword, match="wrong password"):
        ks.open_keystore(wallet.path, "correct horse battery stapler")
    with pytest.raises(ks.KeystoreError, match="at least 8 characters"):
        ks.open_keystore(wallet.path, "short")


def test_a_tampered_ciphertext_fails_authentication(tmp_path: Path) -> None:
    wallet = make(tmp_path)

    def flip_last_digit(document: dict[str, Any]) -> None:
        text = document["ciphertext"]
        document["ciphertext"] = text[:-1] + ("0" if text[-1] != "0" else "1")

    edit(wallet.path, flip_last_digit)
    with pytest.raises(ks.KeystoreTampered, match="failed authentication"):
        ks.open_keystore(wallet.path, PASSWORD)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["networks"]["bitcoin"].update(birth_height=8),
        lambda d: d["networks"]["ethereum"].update(usdt_token="0x" + "11" * 20),
        lambda d: d["networks"]["ethereum"].update(chain_id=11155111),
        lambda d: d["indexes"].update(bitcoin_receive=5),
        lambda d: d.update(created_at="2020-01-01T00:00:00.000Z"),
        lambda d: d.update(comment="an added field is metadata too"),
        lambda d: d.update(nonce="00" * 12),
    ],
    ids=["birth-height", "token", "chain-id", "receive-index", "created-at", "added-field", "nonce"],
)
def test_tampered_metadata_fails_authentication(tmp_path: Path, change: Any) -> None:
    wallet = make(tmp_path)
    edit(wallet.path, change)
    with pytest.raises(ks.KeystoreTampered):
        ks.open_keystore(wallet.path, PASSWORD)


def test_altered_key_derivation_parameters_cannot_unlock(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    original = wallet.path.read_text()
    edit(wallet.path, lambda d: d["kdf_params"].update(salt="ab" * 32))
    with pytest.raises(ks.WrongPassword):
        ks.open_keystore(wallet.path, PASSWORD)
    wallet.path.write_text(original)
    edit(wallet.path, lambda d: d["kdf_params"].update(n=2**11))
    with pytest.raises(ks.WrongPassword):
        ks.open_keystore(wallet.path, PASSWORD)


def test_reformatting_the_json_keeps_it_readable(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    document = json.loads(wallet.path.read_text())
    wallet.path.write_text(json.dumps(dict(reversed(list(document.items()))), separators=(",", ":")))
    assert ks.open_keystore(wallet.path, PASSWORD).mnemonic == MNEMONIC


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00garbage", "not JSON"),
        (b"[]", "not a CryptoCity wallet file"),
        (b'{"format": "cryptocity-wallet", "version": 2}', "version 2"),
    ],
)
def test_files_that_are_not_wallets_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "wallet.json"
    path.write_bytes(content)
    with pytest.raises(ks.KeystoreCorrupt, match=message):
        ks.open_keystore(path, PASSWORD)


def test_a_truncated_wallet_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    edit(wallet.path, lambda d: d.pop("password_check"))
    with pytest.raises(ks.KeystoreCorrupt, match="password_check"):
        ks.open_keystore(wallet.path, PASSWORD)
    edit(wallet.path, lambda d: d.update(password_check="00", nonce="zz"))
    with pytest.raises(ks.KeystoreCorrupt, match="not hex"):
        ks.open_keystore(wallet.path, PASSWORD)


def test_hostile_scrypt_parameters_in_a_file_are_refused_before_any_work(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    edit(wallet.path, lambda d: d["kdf_params"].update(n=2**30))
    with pytest.raises(ks.KeystoreCorrupt, match="power of two"):
        ks.open_keystore(wallet.path, PASSWORD)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ks.KeystoreNotFound, match="wallet new"):
        ks.open_keystore(tmp_path / "nothing.json", PASSWORD)


def test_the_file_and_its_new_folder_are_private(tmp_path: Path) -> None:
    wallet = ks.create_keystore(
        tmp_path / "home" / ".cryptocity" / "wallet.json", MNEMONIC, PASSWORD, created_at=WHEN, scrypt=FAST
    )
    assert stat.S_IMODE(wallet.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(wallet.path.parent.stat().st_mode) == 0o700
    ks.save_keystore(wallet.with_receive_index(3))
    assert stat.S_IMODE(wallet.path.stat().st_mode) == 0o600


def test_the_mnemonic_is_never_in_the_file(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    ks.save_keystore(wallet.with_receive_index(1))
    text = wallet.path.read_text()
    assert MNEMONIC not in text
    for word in set(MNEMONIC.split()):
        assert word not in text, word
    assert PASSWORD not in text


def test_create_never_overwrites_a_wallet(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    before = wallet.path.read_bytes()
    other = "abandon " * 11 + "about"
    with pytest.raises(ks.KeystoreExists, match="never overwritten"):
        ks.create_keystore(wallet.path, other, PASSWORD, created_at=WHEN, scrypt=FAST)
    assert wallet.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]  # no temporary file left behind


def test_saving_replaces_the_file_atomically_with_a_fresh_nonce(tmp_path: Path) -> None:
    wallet = make(tmp_path)
    first = json.loads(wallet.path.read_text())
    inode = wallet.path.stat().st_ino
    ks.save_keystore(wallet.with_receive_index(4))
    second = json.loads(wallet.path.read_text())
    assert wallet.path.stat().st_ino != inode  # a new file renamed into place, not rewritten in place
    assert second["nonce"] != first["nonce"] and second["ciphertext"] != first["ciphertext"]
    assert second["kdf_params"] == first["kdf_params"]  # same password, same key
    assert ks.open_keystore(wallet.path, PASSWORD).receive_index == 4
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]


def test_a_write_that_fails_midway_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = make(tmp_path)
    before = wallet.path.read_bytes()
    real_write = os.write

    def write_half_then_fail(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(ks.KeystoreError, match="No space left"):
        ks.save_keystore(wallet.with_receive_index(9))
    monkeypatch.undo()
    assert wallet.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]
    assert ks.open_keystore(wallet.path, PASSWORD).receive_index == 0


def test_the_default_cost_is_strong(tmp_path: Path) -> None:
    assert ks.ScryptParams(2**17, 8, 1) == ks.DEFAULT_SCRYPT
    wallet = ks.create_keystore(tmp_path / "wallet.json", MNEMONIC, PASSWORD, created_at=WHEN)
    params = json.loads(wallet.path.read_text())["kdf_params"]
    assert (params["n"], params["r"], params["p"], len(bytes.fromhex(params["salt"]))) == (2**17, 8, 1, 32)
    assert ks.open_keystore(wallet.path, PASSWORD).mnemonic == MNEMONIC


@pytest.mark.parametrize(
    ("n", "r", "p"), [(1000, 8, 1), (2**9, 8, 1), (2**21, 8, 1), (2**20, 16, 1), (2**10, 0, 1)]
)
def test_scrypt_parameters_are_bounded(n: int, r: int, p: int) -> None:
    with pytest.raises(ks.KeystoreError):
        ks.ScryptParams(n, r, p)


def test_mainnet_is_refused_on_both_chains() -> None:
    for network in ("mainnet", "main"):
        with pytest.raises(ks.KeystoreError, match="mainnet"):
            ks.BitcoinSettings(network, "bc")
    with pytest.raises(ks.KeystoreError, match="mainnet"):
        ks.EthereumSettings(1)
    with pytest.raises(ks.KeystoreError, match="start with tb"):
        ks.BitcoinSettings("signet", "bc")
    assert ks.default_hrp("regtest") == "rb" and ks.default_hrp("testnet") == "tb"
    assert ks.BitcoinSettings("regtest", "bcrt").hrp == "bcrt"  # Bitcoin Core's regtest prefix
