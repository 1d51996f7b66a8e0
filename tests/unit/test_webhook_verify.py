"""The merchant-side webhook verifier: genuine fresh deliveries pass, anything else raises one error type."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from merchants.sdk.webhooks import (
    WebhookVerificationError,
    compute_signature,
    parse_signature_header,
    sign_webhook,
    verify_webhook,
)

SECRET = "whsec_test_0123456789abcdef"
OTHER = "whsec_test_fedcba9876543210"
NOW = 1_795_000_000  # unix seconds
BODY = json.dumps(
    {
        "id": "evt_01",
        "object": "event",
        "type": "invoice.settled",
        "created_at": "2026-11-23T12:00:00.000Z",
        "invoice_version": 3,
        "data": {"invoice": {"id": "inv_01", "status": "settled"}},
    }
).encode()

secrets_st = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
bodies = st.binary(min_size=0, max_size=300)


def headers(value: str) -> dict[str, str]:
    return {"CryptoCity-Signature": value, "Content-Type": "application/json"}


def test_a_genuine_delivery_verifies_and_returns_the_event() -> None:
    event = verify_webhook(SECRET, headers(sign_webhook(SECRET, BODY, NOW)), BODY, now=NOW)
    assert event["id"] == "evt_01" and event["invoice_version"] == 3


def test_the_signature_is_hex_hmac_sha256_over_timestamp_dot_body() -> None:
    # Written out independently of the module, so the gateway can mirror exactly this recipe.
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_webhook(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"
    assert compute_signature(SECRET, BODY, NOW) == expected


@pytest.mark.parametrize("name", ["cryptocity-signature", "CRYPTOCITY-SIGNATURE", "CryptoCity-Signature"])
def test_the_header_name_is_case_insensitive(name: str) -> None:
    assert verify_webhook(SECRET, {name: sign_webhook(SECRET, BODY, NOW)}, BODY, now=NOW)["id"] == "evt_01"
    pairs = [("content-type", "application/json"), (name, sign_webhook(SECRET, BODY, NOW))]
    assert verify_webhook(SECRET, pairs, BODY, now=NOW)["id"] == "evt_01"


def test_rotation_overlap_two_signatures_and_two_secrets() -> None:
    both = sign_webhook([OTHER, SECRET], BODY, NOW)
    assert both.count("v1=") == 2
    assert verify_webhook(SECRET, headers(both), BODY, now=NOW)  # receiver still on the old secret
    assert verify_webhook(OTHER, headers(both), BODY, now=NOW)  # receiver already on the new one
    new_only = sign_webhook(OTHER, BODY, NOW)
    assert verify_webhook([SECRET, OTHER], headers(new_only), BODY, now=NOW)  # receiver holding both


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_header"),
        ("", "malformed_header"),
        ("v1=abc", "malformed_header"),
        ("t=,v1=" + "0" * 64, "malformed_header"),
        ("t=12x,v1=" + "0" * 64, "malformed_header"),
        (f"t={NOW},t={NOW},v1=" + "0" * 64, "malformed_header"),
        (f"t={NOW}", "no_signature"),
        (f"t={NOW},v1=zz", "no_signature"),
        (f"t={NOW},v0=" + "0" * 64, "no_signature"),
        (f"t={NOW},v1=" + "0" * 64, "signature_mismatch"),
        (f"t={NOW},v1é", "malformed_header"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(header: str | None, reason: str) -> None:
    given_headers = {} if header is None else headers(header)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, given_headers, BODY, now=NOW)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_a_second_signature_header_is_refused_as_ambiguous() -> None:
    signature = sign_webhook(SECRET, BODY, NOW)
    pairs = [("CryptoCity-Signature", signature), ("cryptocity-signature", signature)]
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, pairs, BODY, now=NOW)
    assert caught.value.reason == "malformed_header"


def test_the_replay_window_is_symmetric_and_inclusive() -> None:
    signature = headers(sign_webhook(SECRET, BODY, NOW))
    assert verify_webhook(SECRET, signature, BODY, now=NOW + 300)
    assert verify_webhook(SECRET, signature, BODY, now=NOW - 300)
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(SECRET, signature, BODY, now=now)
        assert caught.value.reason == "timestamp_out_of_tolerance"
    assert verify_webhook(SECRET, signature, BODY, tolerance=3600, now=NOW + 3000)


def test_a_signed_body_that_is_not_a_json_object_is_refused() -> None:
    for body in (b"[1, 2]", b"not json", b"\xff\xfe"):
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(SECRET, headers(sign_webhook(SECRET, body, NOW)), body, now=NOW)
        assert caught.value.reason == "invalid_body"


def test_a_missing_secret_is_a_programming_error_not_a_bad_delivery() -> None:
    no_secrets: list[str | list[str]] = ["", []]
    for secret in no_secrets:
        with pytest.raises(ValueError, match="secret"):
            verify_webhook(secret, headers(sign_webhook(SECRET, BODY, NOW)), BODY, now=NOW)


@given(body=st.binary(min_size=1, max_size=300), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_a_tampered_byte_never_verifies(body: bytes, position: int, flip: int) -> None:
    signature = headers(sign_webhook(SECRET, body, NOW))
    tampered = bytearray(body)
    tampered[position % len(tampered)] ^= flip
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, signature, bytes(tampered), now=NOW)
    assert caught.value.reason == "signature_mismatch"


@given(body=bodies, extra=st.binary(min_size=1, max_size=50), cut=st.integers(min_value=1))
def test_appended_or_truncated_bodies_never_verify(body: bytes, extra: bytes, cut: int) -> None:
    signature = headers(sign_webhook(SECRET, body, NOW))
    changed = [body + extra, extra + body]
    if body:
        changed.append(body[: len(body) - 1 - (cut % len(body))])
    for other in changed:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(SECRET, signature, other, now=NOW)


@given(
    secrets=st.lists(secrets_st, min_size=1, max_size=4, unique=True),
    chosen=st.integers(min_value=0),
    timestamp=st.integers(min_value=0, max_value=10**12 - 1),
)
def test_any_one_of_the_v1_values_verifies(secrets: list[str], chosen: int, timestamp: int) -> None:
    body = b'{"id": "evt_x"}'
    header = sign_webhook(secrets, body, timestamp)
    receiver = secrets[chosen % len(secrets)]
    assert verify_webhook(receiver, headers(header), body, now=timestamp) == {"id": "evt_x"}
    _, values = parse_signature_header(header)
    assert len(values) == len(secrets)


@given(secret=secrets_st, wrong=secrets_st)
def test_another_secret_never_verifies(secret: str, wrong: str) -> None:
    assume(secret != wrong)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(wrong, headers(sign_webhook(secret, BODY, NOW)), BODY, now=NOW)
    assert caught.value.reason == "signature_mismatch"


@given(age=st.integers(min_value=301, max_value=10**9), future=st.booleans())
def test_stale_or_far_future_deliveries_are_refused(age: int, future: bool) -> None:
    signature = headers(sign_webhook(SECRET, BODY, NOW))
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, signature, BODY, now=NOW - age if future else NOW + age)
    assert caught.value.reason == "timestamp_out_of_tolerance"


garbage_headers = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.tuples(st.sampled_from(["t", "v1", "v0", "", " t", "v1 "]), st.text(max_size=70)), max_size=6
    ).map(lambda items: ",".join(f"{k}={v}" for k, v in items)),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@given(value=garbage_headers, body=bodies)
def test_garbage_headers_only_ever_raise_the_verification_error(value: str, body: bytes) -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, headers(value), body, now=NOW)
    assert caught.value.reason in {"malformed_header", "no_signature", "signature_mismatch"}


def test_unknown_schemes_and_spaces_around_items_are_tolerated() -> None:
    header = f" {sign_webhook(SECRET, BODY, NOW)} , v0=deadbeef , v2=something"
    assert verify_webhook(SECRET, headers(header), BODY, now=NOW)["id"] == "evt_01"


def outcome(header: str) -> str:
    """ "ok" or the refusal's reason; any other exception propagates and fails the test."""
    try:
        verify_webhook(SECRET, headers(header), BODY, now=NOW)
    except WebhookVerificationError as exc:
        return exc.reason
    return "ok"


@given(value=garbage_headers)
def test_garbage_after_a_genuine_signature_never_crashes(value: str) -> None:
    # Either still genuine (the garbage was ignorable) or refused as malformed: never another exception.
    assert outcome(f"{sign_webhook(SECRET, BODY, NOW)},{value}") in {"ok", "malformed_header"}


def test_sign_refuses_a_bad_timestamp() -> None:
    for timestamp in (-1, True, 1.5):
        with pytest.raises(ValueError, match="timestamp"):
            sign_webhook(SECRET, BODY, timestamp)  # type: ignore[arg-type]
