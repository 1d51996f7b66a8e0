"""The ``config.startup`` entry: which software ran with which settings, from which moment.

A regulator reading the log needs to know that the limits, confirmation rules or rate sources changed
between two days, and when; so every start of the gateway appends its whole configuration. Credentials are
left out, because the log is exported to people who must not be able to reach the nodes:

- values under keys that look secret (``password``, ``api_key``, ``…_token``, ``secret…``) become
  ``"<redacted>"`` when set and stay ``""`` when empty, so the entry still shows whether one was configured;
- every URL loses its user:password, query and fragment; RPC URLs (under an ``rpc`` section) and the store
  DSN also lose their path, where node providers put API keys (``https://host/v3/<key>``);
- a DSN in keyword form (``host=… password=…``) is redacted whole.

Floats in the configuration (timeouts, jitter) are written as their shortest round-trip decimal text
(``repr``): configuration is not money, and the audit log refuses floats.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.clock import Clock
from gateway.config import Config
from gateway.store import Store, Tx
from sandbox.audit.chain import AuditEntry, EntryDraft
from sandbox.audit.events import SECRET_KEY, url_without_credentials
from sandbox.audit.keys import AuditKey
from sandbox.audit.store import append

STARTUP_KIND = "config.startup"
REDACTED = "<redacted>"


def software_version() -> str:
    try:
        return version("cryptocity")
    except PackageNotFoundError:
        return "0+unknown"


def redacted_config(config: Config) -> dict[str, Any]:
    """``config.model_dump`` in JSON form, without credentials and without floats (see the module doc)."""
    redacted = _redact(config.model_dump(mode="json"), ())
    assert isinstance(redacted, dict)
    return redacted


def startup_draft(config: Config, key: AuditKey | None, software: str | None = None) -> EntryDraft:
    return EntryDraft(
        kind=STARTUP_KIND,
        subject=None,
        event_id=None,
        body={
            "software": "cryptocity",
            "version": software or software_version(),
            "python": platform.python_version(),
            "audit_key_id": None if key is None else key.key_id,
            "config": redacted_config(config),
        },
    )


async def record_startup(
    store: Store, clock: Clock, config: Config, key: AuditKey | None, *, software: str | None = None
) -> AuditEntry:
    """Append the ``config.startup`` entry (and a new head) in its own transaction; returns it."""
    draft = startup_draft(config, key, software)

    async def unit(tx: Tx) -> AuditEntry:
        (entry,) = await append(tx, [draft], clock.now(), key)
        return entry

    return await store.transaction(unit)


def _redact(value: Any, path: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _redact_item(k, v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, path) for v in value]
    if isinstance(value, float):
        return repr(value)
    return value


def _redact_item(key: str, value: Any, path: tuple[str, ...]) -> Any:
    if SECRET_KEY.search(key) and not isinstance(value, dict | list):
        return REDACTED if value not in ("", None) else value
    if isinstance(value, str):
        if key == "dsn" and value and "://" not in value:
            return REDACTED  # keyword form: host=… user=… password=…
        if "://" in value:
            behind_a_key = key == "dsn" or "rpc" in path[:-1]
            return url_without_credentials(value, keep_path=not behind_a_key)
    return _redact(value, path)
