"""Webhook signatures: ``CryptoCity-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

The timestamp is the attempt's own time (injected clock), so a receiver can refuse replays of an old
request; the body is the event exactly as stored in the outbox, byte for byte the same on every attempt.
While a secret is being rotated, the header carries one ``v1`` per secret still valid (new first), so a
receiver that knows either one verifies. The receiving side lives in merchants/sdk/webhooks.py, which
does not import the gateway: the format is the contract, written down in docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

SIGNATURE_HEADER = "CryptoCity-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_secret() -> str:
    """256 random bits, URL-safe, prefixed so a leaked one is recognisable (and maskable in logs)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets_in_use: Sequence[str], timestamp: int, body: bytes) -> str:
    """The header value: the timestamp, then one ``v1`` per secret (rotation overlap)."""
    if not secrets_in_use:
        raise ValueError("at least one secret is needed to sign")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative integer (Unix seconds)")
    parts = [f"t={timestamp}", *(f"v1={sign(secret, timestamp, body)}" for secret in secrets_in_use)]
    return ",".join(parts)
