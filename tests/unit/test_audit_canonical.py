"""Canonical JSON and the entry hash: what the regulator's own tool must reproduce.

Properties: neither key order nor whitespace changes an entry's hash, every field of the entry does, and
floats are refused wherever they hide. Known answers pin the encoding to RFC 8785 and the hash to the
definition in docs/audit-log.md.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.audit.canonical import (
    MAX_SAFE_INTEGER,
    FloatRefused,
    NotCanonical,
    canonical_json,
    safe_integers,
)
from sandbox.audit.chain import GENESIS_HASH, EntryDraft, entry_hash, seal

# JSON values without floats, integers inside the exact range, as the audit log stores them.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def reordered(value: Any) -> Any:
    """The same JSON value with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def fields(body: Any, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": 7,
        "id": "aud_01example",
        "recorded_at": "2026-11-23T12:00:00.000Z",
        "kind": "invoice.settled",
        "subject": "inv_01example",
        "event_id": "evt_01example",
        "body": body,
        "prev_hash": GENESIS_HASH,
    }
    return {**base, **changes}


@given(json_objects)
def test_key_order_does_not_change_the_hash(body: dict[str, Any]) -> None:
    assert entry_hash(**fields(body)) == entry_hash(**fields(reordered(body)))
    assert canonical_json(body) == canonical_json(reordered(body))


@given(
    json_objects,
    st.sampled_from([None, 0, 2, "\t"]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
)
def test_whitespace_does_not_change_the_hash(
    body: dict[str, Any], indent: int | str | None, separators: tuple[str, str]
) -> None:
    """A body re-serialised any way (as an editor or another tool would) parses to the same hash."""
    text = json.dumps(body, indent=indent, separators=separators, ensure_ascii=False, sort_keys=False)
    assert entry_hash(**fields(json.loads(text))) == entry_hash(**fields(body))


@given(
    json_objects, st.sampled_from(["seq", "id", "recorded_at", "kind", "subject", "event_id", "prev_hash"])
)
def test_every_field_is_covered(body: dict[str, Any], name: str) -> None:
    changed: Any = 8 if name == "seq" else ("1" * 64 if name == "prev_hash" else "other")
    assert entry_hash(**fields(body)) != entry_hash(**fields(body, **{name: changed}))


@given(json_objects, st.floats(allow_nan=True, allow_infinity=True), st.data())
def test_floats_are_refused_wherever_they_are(
    body: dict[str, Any], number: float, data: st.DataObject
) -> None:
    where = data.draw(st.sampled_from(["top", "nested", "list"]))
    spoiled: dict[str, Any] = dict(body)
    if where == "top":
        spoiled["rate"] = number
    elif where == "nested":
        spoiled["data"] = {"inner": {"rate": number}}
    else:
        spoiled["rates"] = [1, "2", number]
    with pytest.raises(FloatRefused, match=r"float .* refused"):
        canonical_json(spoiled)
    with pytest.raises(FloatRefused):
        seal(
            EntryDraft("sandbox.x", None, None, spoiled),
            seq=1,
            id="aud_1",
            recorded_at="t",
            prev_hash=GENESIS_HASH,
        )


@given(
    json_objects,
    st.integers(min_value=1, max_value=MAX_SAFE_INTEGER),
    st.text(max_size=10),
    st.none() | st.text(max_size=10),
    st.none() | st.text(max_size=10),
)
def test_sealing_splices_the_body_into_the_same_hash(
    body: dict[str, Any], seq: int, text: str, subject: str | None, event_id: str | None
) -> None:
    """seal() encodes the body once and splices it in; the result must be the defined entry_hash."""
    entry = seal(
        EntryDraft(text, subject, event_id, body), seq=seq, id=text, recorded_at=text, prev_hash=text
    )
    assert entry.body == canonical_json(body).decode()
    assert entry.hash == entry_hash(
        seq=seq,
        id=text,
        recorded_at=text,
        kind=text,
        subject=subject,
        event_id=event_id,
        body=json.loads(entry.body),
        prev_hash=text,
    )


def test_a_refusal_names_the_path_of_the_value() -> None:
    with pytest.raises(FloatRefused) as caught:
        canonical_json({"data": {"rates": [1, 2.5]}})
    assert caught.value.path == "$.data.rates[1]"
    assert str(caught.value).startswith("$.data.rates[1]: float 2.5 refused")


def test_integral_floats_are_refused_too() -> None:
    """1.0 == 1 in Python, but a float in a body means a producer computed money in binary floating point."""
    with pytest.raises(FloatRefused):
        canonical_json({"amount": 1.0})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"wei": 2**64}, "outside"),
        ({1: "x"}, "not a string"),
        ({"when": object()}, "not a JSON value"),
        ({"s": "\ud800"}, "non-UTF-8"),
    ],
)
def test_other_non_json_values_are_refused(value: Any, problem: str) -> None:
    with pytest.raises(NotCanonical, match=problem):
        canonical_json(value)


def test_big_integers_become_decimal_strings_before_sealing() -> None:
    body = safe_integers(
        {"amount_minor": 10**21, "small": MAX_SAFE_INTEGER, "flag": True, "list": [-(2**60)]}
    )
    assert body == {
        "amount_minor": str(10**21),
        "small": MAX_SAFE_INTEGER,
        "flag": True,
        "list": [str(-(2**60))],
    }
    canonical_json(body)


def test_known_answer_rfc8785_and_the_entry_hash() -> None:
    """Pinned bytes: sorted keys, no whitespace, minimal escapes, UTF-8 as is; the hash is SHA-256 of them."""
    body = {"z": [True, None], "a": "ü\n", "n": -5, "b": {"y": 1, "x": "é"}}
    assert canonical_json(body) == '{"a":"ü\\n","b":{"x":"é","y":1},"n":-5,"z":[true,null]}'.encode()
    whole = fields(body)
    expected_bytes = (
        '{"body":{"a":"ü\\n","b":{"x":"é","y":1},"n":-5,"z":[true,null]},"event_id":"evt_01example",'
        '"id":"aud_01example","kind":"invoice.settled","prev_hash":"' + GENESIS_HASH + '",'
        '"recorded_at":"2026-11-23T12:00:00.000Z","seq":7,"subject":"inv_01example"}'
    ).encode()
    assert canonical_json(whole) == expected_bytes
    assert entry_hash(**whole) == hashlib.sha256(expected_bytes).hexdigest()


def test_key_order_is_by_utf16_code_units() -> None:
    """RFC 8785 sorts by UTF-16, not by code point: U+1F600 (a surrogate pair, D83D) sorts before U+FFFD."""
    assert canonical_json({"\ufffd": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufffd":1}'.encode()


def test_a_body_must_be_an_object() -> None:
    with pytest.raises(NotCanonical, match="object"):
        EntryDraft("sandbox.x", None, None, [1, 2])  # type: ignore[arg-type]
