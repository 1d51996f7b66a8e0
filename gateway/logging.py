"""structlog set-up: JSON lines with request, merchant and invoice ids bound through contextvars.

Secrets never reach a log line: code logs ids, not keys, and as a second line of defence a processor
masks anything shaped like an API key or an extended public key before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_SHAPES = re.compile(
    r"cc_(?:test|live)_[0-9a-z]{20,}"  # API keys
    r"|whsec_[0-9A-Za-z_-]{20,}"  # webhook signing secrets
    r"|\b[xtuvyz]pub[1-9A-HJ-NP-Za-km-z]{100,112}"  # BIP32 extended public keys
    r"|\b[xtuvyz]prv[1-9A-HJ-NP-Za-km-z]{100,112}"  # and private ones, if someone pastes one
)


def _mask(value: str) -> str:
    return _SECRET_SHAPES.sub(lambda m: m.group(0)[:8] + "…[redacted]", value)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = _mask(value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
