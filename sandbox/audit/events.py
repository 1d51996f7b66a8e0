"""What the audit log keeps of an outbox event: its type, its ids, its time, and a small summary.

The outbox holds whole resources (an invoice with its payment methods, QR links and metadata); the audit
log keeps only what a regulator reconstructs the story from, so entries stay small and hold no merchant
business data beyond ids and amounts:

- an invoice (``data.invoice``) becomes its id, merchant_id, status, flags, version, amount_tiyn and
  amount_paid_tiyn;
- a payment resource (``data.payment``) its id, chain, asset, amount_minor (as a decimal string: wei
  exceeds JSON's exact integers), value_tiyn, status, hold_reason and late;
- a webhook endpoint its id, status, event types, disabled reason and its URL without credentials, query
  or fragment (receivers often put tokens there);
- a merchant (``merchant.created``) its public view;
- everything else in ``data`` (payment_key, reason, changes, ``sandbox.*`` decisions and regulator
  actions) is kept as is, except keys that look secret, which are dropped.

Integers beyond ±(2**53 - 1) become decimal strings; floats are refused when the entry is sealed
(:mod:`sandbox.audit.canonical`), which stops the audit consumer until the producer is fixed, rather than
recording a rounded value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.outbox import OutboxEvent
from sandbox.audit.canonical import safe_integers
from sandbox.audit.chain import EntryDraft

AUDITED_PREFIXES = ("invoice.", "payment.", "merchant.", "webhook_endpoint.", "sandbox.")
_INVOICE_FIELDS = ("id", "merchant_id", "status", "flags", "version", "amount_tiyn", "amount_paid_tiyn")
_PAYMENT_FIELDS = ("id", "chain", "asset", "payment_key", "value_tiyn", "status", "hold_reason", "late")
_ENDPOINT_FIELDS = ("id", "status", "event_types", "disabled_reason")
# Keys whose values are credentials wherever they appear (config, event data): the secret word ends the key
# ("rpc_password", "api_key") or "secret" starts it ("secret_hash"). "token_address", "token_symbol" and
# "api_key_environment" are not secrets and do not match.
SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|secrets|api_key|apikey|private_key|mnemonic|credentials?|token)$|^secret_",
    re.IGNORECASE,
)
# Ids a subject may be taken from when the event row has no invoice id, in this order: the invoice first, so
# that a sandbox decision on a payment sits with the invoice's own entries.
_SUBJECT_KEYS = (
    "invoice_id",
    "webhook_endpoint_id",
    "endpoint_id",
    "resident_id",
    "merchant_id",
    "token_id",
    "id",
)


def is_audited(event_type: str) -> bool:
    return event_type.startswith(AUDITED_PREFIXES)


def draft_for_event(event: OutboxEvent) -> EntryDraft | None:
    """The entry for ``event``, or None for an event type the audit log does not record."""
    if not is_audited(event.type):
        return None
    data = event.payload.get("data")
    summary = summarise_data(data) if isinstance(data, Mapping) else {}
    body: dict[str, Any] = {
        "event_type": event.type,
        "event_created_at": event.created_at,
        "merchant_id": event.merchant_id,
        "invoice_id": event.invoice_id,
        "invoice_version": event.invoice_version,
        "data": summary,
    }
    return EntryDraft(
        kind=event.type, subject=_subject(event, summary), event_id=event.id, body=safe_integers(body)
    )


def summarise_data(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if SECRET_KEY.search(key):
            continue
        if key == "invoice" and isinstance(value, Mapping):
            out[key] = _pick(value, _INVOICE_FIELDS)
        elif key == "payment" and isinstance(value, Mapping):
            out[key] = _payment(value)
        elif key == "webhook_endpoint" and isinstance(value, Mapping):
            out[key] = _endpoint(value)
        else:
            out[key] = without_secrets(value)
    return out


def without_secrets(value: Any) -> Any:
    """A copy of ``value`` without the keys :data:`SECRET_KEY` matches, at any depth."""
    if isinstance(value, Mapping):
        return {k: without_secrets(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    return value


def url_without_credentials(url: str, *, keep_path: bool = True) -> str:
    """Scheme, host, port (and path): no user:password, query or fragment, which is where secrets go."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or not parts.hostname:
        return url if "@" not in url and "?" not in url else "<redacted>"
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path if keep_path else ("/<redacted>" if parts.path not in ("", "/") else parts.path)
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _pick(value: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: without_secrets(value[name]) for name in fields if name in value}


def _payment(value: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(value, _PAYMENT_FIELDS)
    if "amount_minor" in value:
        out["amount_minor"] = str(value["amount_minor"])
    return out


def _endpoint(value: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(value, _ENDPOINT_FIELDS)
    if isinstance(value.get("url"), str):
        out["url"] = url_without_credentials(value["url"])
    return out


def _subject(event: OutboxEvent, summary: Mapping[str, Any]) -> str | None:
    if event.invoice_id is not None:
        return event.invoice_id
    for nested in ("webhook_endpoint", "merchant", "resident"):
        inner = summary.get(nested)
        if isinstance(inner, Mapping) and isinstance(inner.get("id"), str):
            return str(inner["id"])
    for key in _SUBJECT_KEYS:
        if isinstance(summary.get(key), str):
            return str(summary[key])
    return event.merchant_id
