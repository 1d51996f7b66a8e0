"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) for everything the audit log hashes.

A regulator re-computes our hashes with their own tool, so the bytes under each hash must follow a
published standard rather than whatever our serialiser happens to emit: RFC 8785 fixes key order (UTF-16
code units), whitespace (none), string escapes and number form. The ``rfc8785`` package does the encoding;
this module decides what may be encoded at all:

- floats are refused: they have no exact decimal meaning and money never is one here (it is integers or
  decimal strings), so a float in an audit body is a bug to stop at, not a value to round;
- integers must lie within ±(2**53 - 1), the range every JSON reader holds exactly (RFC 8785 refuses the
  rest); body builders turn larger integers (wei) into decimal strings with :func:`safe_integers` first;
- only JSON types (dict with str keys, list/tuple, str, int, bool, None) pass; anything else (Decimal,
  datetime) must be converted by the caller, who knows the right text form.

Every refusal names the path of the offending value (``$.data.rate``) so the fix is obvious.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1


class NotCanonical(ValueError):
    """A value cannot go into canonical JSON; ``path`` is where it sits (``$`` is the root)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class FloatRefused(NotCanonical):
    """A float reached the audit log: amounts are integers or decimal strings, never binary floats."""


def check_canonicalisable(value: Any, path: str = "$") -> None:
    """Raise :class:`NotCanonical` (or :class:`FloatRefused`) at the first value that may not be encoded."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise NotCanonical(
                path, f"integer {value} is outside ±(2**53 - 1); record it as a decimal string"
            )
        return
    if isinstance(value, float):
        raise FloatRefused(
            path, f"float {value!r} refused: record amounts as integers or decimal strings, never floats"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonical(path, f"object key {key!r} is not a string")
            check_canonicalisable(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_canonicalisable(item, f"{path}[{index}]")
        return
    raise NotCanonical(path, f"{type(value).__name__} is not a JSON value; convert it to a string first")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value`` (UTF-8), after :func:`check_canonicalisable`."""
    check_canonicalisable(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:  # e.g. a lone surrogate in a string
        raise NotCanonical("$", str(exc)) from exc


def canonical_text(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_integers(value: Any) -> Any:
    """A copy of ``value`` with integers beyond ±(2**53 - 1) as decimal strings (wei amounts, big metadata).

    Lossless and done once, when a body is built: the stored body then holds the string, so verifying
    needs nothing but RFC 8785. Floats are left in place for :func:`check_canonicalisable` to refuse.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value) if abs(value) > MAX_SAFE_INTEGER else value
    if isinstance(value, Mapping):
        return {key: safe_integers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [safe_integers(item) for item in value]
    return value


def contains_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(contains_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_float(item) for item in value)
    return False
