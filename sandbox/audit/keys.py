"""The regulator's audit key: where it comes from, how it is written, and the only two things done with it.

The key authenticates the chain head (``HMAC-SHA256(key, "<seq>:<hash>")``): whoever holds it can tell a
genuine head from one an attacker recomputed after rewriting the log. The regulator generates it (32
random bytes, e.g. ``openssl rand -hex 32``) and gives it to the gateway's operator, so the gateway can sign
but an attacker who copies the database file cannot.

Sources, first match wins: ``--key-file PATH`` (a command option), ``$CRYPTOCITY_AUDIT_KEY_FILE``,
``$CRYPTOCITY_AUDIT_KEY``. A file (or the variable) holds the key as text: ``hex:<hex>``, ``base64:<b64>``,
or bare hex / base64 (bare text that is all hex digits of even length is read as hex). Surrounding white
space is ignored. At least 32 bytes, the HMAC-SHA256 output size.

The key never appears in a log line, an error message, a ``repr`` or the audit log itself; what does is its
``key_id``: the first 16 hex digits of ``HMAC-SHA256(key, "cryptocity audit key id")``, which tells two keys
apart without revealing either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("sandbox.audit")

KEY_ENV = "CRYPTOCITY_AUDIT_KEY"
KEY_FILE_ENV = "CRYPTOCITY_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 32
_KEY_ID_MESSAGE = b"cryptocity audit key id"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class AuditKeyError(ValueError):
    """The key could not be loaded; the message names the source, never the key."""


class AuditKey:
    """An HMAC-SHA256 key for chain heads. Create with :meth:`parse`, :meth:`from_file` or :meth:`load`."""

    __slots__ = ("_secret", "key_id", "source")

    def __init__(self, secret: bytes, source: str = "memory") -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise AuditKeyError(
                f"audit key from {source} is {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed"
            )
        self._secret = bytes(secret)
        self.source = source
        self.key_id = hmac.new(self._secret, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id!r}, source={self.source!r})"

    @classmethod
    def parse(cls, text: str, source: str = "memory") -> AuditKey:
        """Read ``hex:…``, ``base64:…``, bare hex or bare base64 (see the module docstring)."""
        value = text.strip()
        scheme, sep, rest = value.partition(":")
        if sep and scheme.lower() in ("hex", "base64"):
            kind, value = scheme.lower(), rest.strip()
        else:
            kind = "hex" if _HEX.match(value) and len(value) % 2 == 0 else "base64"
        if not value:
            raise AuditKeyError(f"audit key from {source} is empty")
        try:
            secret = bytes.fromhex(value) if kind == "hex" else _b64decode(value)
        except ValueError:
            raise AuditKeyError(f"audit key from {source} is not valid {kind}") from None
        return cls(secret, source)

    @classmethod
    def from_file(cls, path: Path | str) -> AuditKey:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            raise AuditKeyError(f"cannot read the audit key file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AuditKeyError(f"audit key file {path} is not text (hex or base64 expected)") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("audit.key_file_open_to_others", path=str(path), mode=oct(stat.S_IMODE(mode)))
        return cls.parse(text, f"file {path}")

    @classmethod
    def load(
        cls, key_file: Path | str | None = None, environ: Mapping[str, str] | None = None
    ) -> AuditKey | None:
        """The configured key, or None when none is configured (the log is then kept without head MACs)."""
        environ = os.environ if environ is None else environ
        if key_file is not None:
            return cls.from_file(key_file)
        if environ.get(KEY_FILE_ENV):
            return cls.from_file(environ[KEY_FILE_ENV])
        if environ.get(KEY_ENV):
            return cls.parse(environ[KEY_ENV], f"environment variable {KEY_ENV}")
        return None

    def sign_head(self, seq: int, entry_hash: str) -> str:
        """``HMAC-SHA256(key, "<seq>:<hash>")`` in lower-case hex: the head's authenticator."""
        return hmac.new(self._secret, head_message(seq, entry_hash), hashlib.sha256).hexdigest()

    def head_is_genuine(self, seq: int, entry_hash: str, mac: object) -> bool:
        """Constant-time check of a stored MAC, which (read from a tampered file) may hold anything."""
        if not isinstance(mac, str) or not isinstance(entry_hash, str):
            return False
        # Bytes, not str: compare_digest refuses non-ASCII text.
        return hmac.compare_digest(self.sign_head(seq, entry_hash).encode(), mac.lower().encode())


def head_message(seq: int, entry_hash: str) -> bytes:
    """The bytes the head MAC covers: decimal seq, a colon, the 64 lower-case hex digits of the hash."""
    return f"{int(seq)}:{entry_hash.lower()}".encode("ascii")


def _b64decode(value: str) -> bytes:
    """Standard or URL-safe alphabet, padding optional; anything else is an error, not silently skipped."""
    padded = value + "=" * (-len(value) % 4)
    alphabet = b"-_" if ("-" in value or "_" in value) else None
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
