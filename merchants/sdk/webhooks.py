"""Checking that a webhook really comes from the gateway, and signing one the same way (tests, gateway).

The gateway signs each delivery attempt with that attempt's time::

    CryptoCity-Signature: t=1732363200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

``v1`` is the hex HMAC-SHA256, keyed with the endpoint's secret (the whole ``whsec_…`` string, UTF-8), of
``"<t>." + raw body``. While a secret is being rotated the header carries one ``v1`` per live secret;
a receiver accepts the delivery if *any* of them matches *any* secret it holds. Signing the timestamp
with the body is what makes the replay window (``tolerance``, 300 s by default) enforceable: an attacker
who captured a delivery cannot resend it later with a fresh ``t``.

Verify the **raw bytes** as received, before any JSON parsing: re-serialising the parsed body changes
bytes (key order, spacing, number forms) and the signature with them.

Everything a sender controls (headers, body) can only make :func:`verify_webhook` raise
:class:`WebhookVerificationError`, whose ``reason`` is a short code to log and count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

SIGNATURE_HEADER: Final = "CryptoCity-Signature"
EVENT_ID_HEADER: Final = "CryptoCity-Event-Id"
EVENT_TYPE_HEADER: Final = "CryptoCity-Event-Type"
DEFAULT_TOLERANCE_SECONDS: Final = 300
_MAX_HEADER_CHARS: Final = 8192  # far above a header with a few signatures; refuses absurd inputs early
_SIGNATURE_HEX_CHARS: Final = 64


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh delivery; answer 401 and do not act on it.

    ``reason`` is one of: ``missing_header``, ``malformed_header``, ``no_signature``,
    ``timestamp_out_of_tolerance``, ``signature_mismatch``, ``invalid_body``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _secrets(secret: str | Sequence[str]) -> list[bytes]:
    candidates = [secret] if isinstance(secret, str) else list(secret)
    if not candidates or not all(isinstance(s, str) and s for s in candidates):
        raise ValueError("give the endpoint's webhook secret (a non-empty string, or a list of them)")
    return [s.encode("utf-8") for s in candidates]


def compute_signature(secret: str, raw_body: bytes, timestamp: int) -> str:
    """The ``v1`` value: hex HMAC-SHA256(secret, "<timestamp>.<raw body>")."""
    signed = str(timestamp).encode("ascii") + b"." + bytes(raw_body)
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | Sequence[str], raw_body: bytes, timestamp: int) -> str:
    """The ``CryptoCity-Signature`` header value for ``raw_body`` sent at ``timestamp`` (unix seconds).

    Several secrets (rotation overlap) give one ``v1`` each, in the order given.
    """
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative integer number of unix seconds")
    keys = [secret] if isinstance(secret, str) else list(secret)
    _secrets(keys)  # same validation as verification
    return ",".join([f"t={timestamp}", *(f"v1={compute_signature(k, raw_body, timestamp)}" for k in keys)])


def _header(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> str:
    """The one value of ``name``, looked up case-insensitively (plain dicts, multidicts, pair lists)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted = name.lower()
    values = [value for key, value in items if isinstance(key, str) and key.lower() == wanted]
    if not values:
        raise WebhookVerificationError("missing_header", f"no {name} header: not a CryptoCity delivery")
    if len(values) > 1:
        raise WebhookVerificationError("malformed_header", f"{name} is given {len(values)} times")
    value = values[0]
    if not isinstance(value, str):
        raise WebhookVerificationError("malformed_header", f"{name} is not text")
    return value


def parse_signature_header(value: str) -> tuple[int, list[str]]:
    """``t`` and every ``v1`` of a header; other schemes (``v0=``, a future ``v2=``) are skipped."""
    if len(value) > _MAX_HEADER_CHARS or not value.isascii():
        raise WebhookVerificationError("malformed_header", "the signature header is too long or not ASCII")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise WebhookVerificationError(
                "malformed_header", f"signature header item {item.strip()[:40]!r} is not key=value"
            )
        if key == "t":
            timestamps.append(val.strip())
        elif key == "v1":
            signatures.append(val.strip().lower())
    if len(timestamps) != 1 or not timestamps[0].isdigit() or len(timestamps[0]) > 12:
        raise WebhookVerificationError(
            "malformed_header", "the signature header needs exactly one t=<unix seconds>"
        )
    valid = [s for s in signatures if len(s) == _SIGNATURE_HEX_CHARS and _is_hex(s)]
    if not valid:
        raise WebhookVerificationError(
            "no_signature", "the signature header has no v1=<64 hex digits> signature"
        )
    return int(timestamps[0]), valid


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    raw_body: bytes,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The parsed event if the delivery is signed by one of ``secret`` and fresh; raises otherwise.

    ``secret``: the endpoint's secret, or several (keep the old one listed while you roll out a new one).
    ``now``: unix seconds, for tests; default the system clock. The check is ``|now - t| <= tolerance``:
    a timestamp from the future beyond the tolerance is refused too (a badly wrong clock on either side).
    """
    keys = _secrets(secret)
    timestamp, signatures = parse_signature_header(_header(headers, SIGNATURE_HEADER))
    if not isinstance(raw_body, bytes | bytearray | memoryview):
        raise TypeError("raw_body must be the request's raw bytes, before any JSON parsing")
    body = bytes(raw_body)
    signed = str(timestamp).encode("ascii") + b"." + body
    expected = [hmac.new(key, signed, hashlib.sha256).hexdigest() for key in keys]
    # Compare every pair, without stopping at the first match: the time taken says nothing useful.
    matched = False
    for candidate in signatures:
        for digest in expected:
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise WebhookVerificationError(
            "signature_mismatch",
            "no v1 signature matches: wrong secret, or the body was changed after signing",
        )
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            "timestamp_out_of_tolerance",
            f"signed at t={timestamp}, {abs(current - timestamp):.0f} s from now; the limit is {tolerance:g} s"
            " (a replayed delivery, or a wrong clock)",
        )
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookVerificationError("invalid_body", "the signed body is not valid JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("invalid_body", "the signed body is not a JSON object")
    return event
