"""The regulator's audit key: the forms it may take, where it is looked for, and that it never leaks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey, AuditKeyError, head_message

RAW = bytes(range(32))
HEX = RAW.hex()


@pytest.mark.parametrize(
    "text",
    [
        HEX,
        HEX.upper(),
        f"hex:{HEX}",
        f"  {HEX}\n",
        base64.b64encode(RAW).decode(),
        "base64:" + base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    ],
)
def test_the_accepted_forms_give_the_same_key(text: str) -> None:
    assert AuditKey.parse(text).key_id == AuditKey(RAW).key_id


def test_the_head_mac_is_hmac_sha256_of_seq_colon_hash() -> None:
    key = AuditKey(RAW)
    digest = "ab" * 32
    expected = hmac.new(RAW, f"42:{digest}".encode(), hashlib.sha256).hexdigest()
    assert head_message(42, digest) == f"42:{digest}".encode()
    assert key.sign_head(42, digest) == expected
    assert key.head_is_genuine(42, digest, expected)
    assert key.head_is_genuine(42, digest, expected.upper())
    assert not key.head_is_genuine(43, digest, expected)
    assert not key.head_is_genuine(42, digest, "é" * 64)  # whatever a tampered file holds
    assert key.key_id == hmac.new(RAW, b"cryptocity audit key id", hashlib.sha256).hexdigest()[:16]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("hex:", "empty"),
        ("ab" * 16, "16 bytes; at least 32"),
        ("hex:zz" + "00" * 31, "not valid hex"),
        ("base64:***", "not valid base64"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(text: str, problem: str) -> None:
    with pytest.raises(AuditKeyError, match=problem) as caught:
        AuditKey.parse(text, "test")
    assert text.strip() == "" or text not in str(caught.value)


def test_the_key_is_not_in_its_repr(tmp_path: Path) -> None:
    key = AuditKey(RAW, "memory")
    assert HEX not in repr(key) and RAW.hex()[:8] not in repr(key)
    assert key.key_id in repr(key)


def test_where_the_key_is_looked_for(tmp_path: Path) -> None:
    other = bytes(reversed(RAW))
    file_key = tmp_path / "audit.key"
    file_key.write_text(f"hex:{HEX}\n")
    file_key.chmod(0o600)
    env_file = tmp_path / "env.key"
    env_file.write_text(other.hex())
    env_file.chmod(0o600)
    assert AuditKey.load(None, environ={}) is None
    from_env = AuditKey.load(None, environ={KEY_ENV: base64.b64encode(other).decode()})
    assert from_env is not None and from_env.key_id == AuditKey(other).key_id
    assert from_env.source == f"environment variable {KEY_ENV}"
    both_env = AuditKey.load(None, environ={KEY_ENV: HEX, KEY_FILE_ENV: str(env_file)})
    assert both_env is not None and both_env.key_id == AuditKey(other).key_id  # the file variable wins
    option = AuditKey.load(file_key, environ={KEY_ENV: other.hex()})
    assert option is not None and option.key_id == AuditKey(RAW).key_id  # --key-file wins over both


def test_a_missing_or_open_key_file(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError, match="cannot read the audit key file"):
        AuditKey.from_file(tmp_path / "absent.key")
    shared = tmp_path / "shared.key"
    shared.write_text(HEX)
    shared.chmod(0o644)
    with capture_logs() as logs:
        AuditKey.from_file(shared)
    assert [entry["event"] for entry in logs] == ["audit.key_file_open_to_others"]
    assert HEX not in repr(logs)
