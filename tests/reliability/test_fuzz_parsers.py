"""Fuzzing of the three parsers that take bytes from outside: the payment-URI parser (what a wallet scans),
the raw Bitcoin block and transaction parser (what a node sends) and the merchant's webhook verifier
(what arrives at a shop's endpoint).

The property is the same for each: on any input the parser answers, or refuses with its own error type
(PaymentUriError, BlockParseError, WebhookVerificationError), and does so in bounded time (hypothesis's
per-example deadline catches a hang or a blow-up). Inputs are both arbitrary and *near-valid*: real URIs,
blocks and signed deliveries with bytes flipped, cut, inserted or repeated, because parsers break at the
edge of the grammar, where random bytes rarely reach.

Size: CRYPTOCITY_FUZZ_EXAMPLES examples per test (CI default 300; a full run, e.g. 20000, by
``CRYPTOCITY_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/reliability/test_fuzz_parsers.py -s``).
Each test prints how many inputs it ran; docs/reliability.md has the latest full run's figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from bitcoin.core import (
    CBlock,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    lx,
)
from bitcoin.core.script import CScript
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.chains.bitcoin_blocks import BlockParseError, block_facts, parse_block, parse_transaction
from gateway.payment_uri import (
    Bip21Request,
    Eip681Native,
    Eip681TokenTransfer,
    PaymentUriError,
    build_bip21,
    build_eip681,
    parse_payment_uri,
)
from merchants.sdk.webhooks import WebhookVerificationError, sign_webhook, verify_webhook

EXAMPLES = int(os.environ.get("CRYPTOCITY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(
        milliseconds=750
    ),  # generous for 2 busy cores; a hang or quadratic blow-up is far beyond
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
T = TypeVar("T")
RUNS: dict[str, int] = {}


def counted(name: str, check: Callable[..., None]) -> Callable[..., None]:
    """Count the inputs each fuzz test ran (reported at the end of the test; the fuzz execution figure)."""

    def run(*args: Any, **kwargs: Any) -> None:
        RUNS[name] = RUNS.get(name, 0) + 1
        check(*args, **kwargs)

    return run


@pytest.fixture(autouse=True)
def report_runs(request: pytest.FixtureRequest) -> Any:
    yield
    name = request.node.name
    if name in RUNS:
        print(f"\n{name}: {RUNS[name]} inputs")


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes flipped, cut off, inserted or a slice repeated."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "set"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "set" and data:
                data[at] = draw(st.sampled_from([0x00, 0xFD, 0xFE, 0xFF, 0x01]))  # CompactSize markers
            elif kind == "cut":
                data = data[:at]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=9))
            elif kind == "repeat" and data:
                end = min(len(data), at + draw(st.integers(1, 64)))
                data[at:at] = data[at:end] * draw(st.integers(1, 4))
        return bytes(data)

    return mutate()


def text_mutations(seed: str) -> st.SearchStrategy[str]:
    return mutations(seed.encode()).map(lambda b: b.decode("utf-8", errors="replace"))


# -- payment URIs -------------------------------------------------------------------------------------

BTC_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
ETH_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
VALID_URIS = [
    build_bip21(
        Bip21Request(address=BTC_ADDRESS, amount_sat=123_456, label="Canteen", message="Lunch 5300 KZT")
    ),
    build_eip681(Eip681Native(address=ETH_ADDRESS, chain_id=31337, value_wei=10**16)),
    build_eip681(Eip681TokenTransfer(token=TOKEN, to=ETH_ADDRESS, chain_id=31337, amount_units=5_300_000)),
]
URI_INPUTS = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["bitcoin:", "ethereum:", "BITCOIN:", "ethereum:pay-"]).flatmap(
        lambda scheme: st.text(max_size=200).map(lambda rest: scheme + rest)
    ),
    *(text_mutations(uri) for uri in VALID_URIS),
)


def _check_uri(uri: str) -> None:
    try:
        parsed = parse_payment_uri(uri)
    except PaymentUriError:
        return
    # Whatever parses must be a request object that builds back into a URI the parser accepts again.
    again = parse_payment_uri(
        build_eip681(parsed) if not isinstance(parsed, Bip21Request) else build_bip21(parsed)
    )
    assert again == parsed


@FUZZ
@given(URI_INPUTS)
def test_the_payment_uri_parser_answers_or_refuses_any_text(uri: str) -> None:
    counted("test_the_payment_uri_parser_answers_or_refuses_any_text", _check_uri)(uri)


def test_the_valid_seeds_parse() -> None:
    """The mutations start from URIs the parser accepts (else the fuzzing would only test refusals)."""
    assert [type(parse_payment_uri(uri)) for uri in VALID_URIS] == [
        Bip21Request,
        Eip681Native,
        Eip681TokenTransfer,
    ]


# -- raw blocks and transactions ---------------------------------------------------------------------


def _sample_transaction(n: int) -> CTransaction:
    witness = CTxInWitness(CScriptWitness([b"\x30" * 71, b"\x02" + bytes([n]) * 32]))
    return CTransaction(
        [CTxIn(COutPoint(lx("11" * 32), n), nSequence=0xFFFFFFFD)],
        [CTxOut(50_000 + n, CScript(b"\x00\x14" + bytes([n]) * 20)), CTxOut(1_000, CScript(b"\x6a\x04test"))],
        witness=CTxWitness([witness]),
    )


SAMPLE_TX = _sample_transaction(7).serialize()
_BLOCK_TXS = [_sample_transaction(i) for i in range(3)]
SAMPLE_BLOCK = CBlock(
    nVersion=0x20000000,
    hashPrevBlock=lx("22" * 32),
    hashMerkleRoot=CBlock.build_merkle_tree_from_txs(_BLOCK_TXS)[-1],
    nTime=1_795_000_000,
    nBits=0x207FFFFF,
    nNonce=1,
    vtx=_BLOCK_TXS,
).serialize()
WATCHED = {b"\x00\x14" + bytes([i]) * 20: f"watch-{i}" for i in range(3)}


def _check_block(raw: bytes) -> None:
    try:
        block = parse_block(raw)
    except BlockParseError:
        return
    for facts in block_facts(block, WATCHED):  # what the watcher does next must not crash either
        for match in facts.matches:  # a match is an output paying a watched script, tagged with its watch
            assert WATCHED[match.script_pubkey] == match.watch
            assert match.payment_key == f"{facts.txid}:{match.vout}"
        assert len(facts.txid) == 64


def _check_transaction(raw: bytes) -> None:
    try:
        parse_transaction(raw)
    except BlockParseError:
        return


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutations(SAMPLE_BLOCK)))
def test_the_block_parser_answers_or_refuses_any_bytes(raw: bytes) -> None:
    counted("test_the_block_parser_answers_or_refuses_any_bytes", _check_block)(raw)


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutations(SAMPLE_TX)))
def test_the_transaction_parser_answers_or_refuses_any_bytes(raw: bytes) -> None:
    counted("test_the_transaction_parser_answers_or_refuses_any_bytes", _check_transaction)(raw)


def test_the_block_seed_parses_and_matches() -> None:
    facts = list(block_facts(parse_block(SAMPLE_BLOCK), WATCHED))
    assert [m.watch for f in facts for m in f.matches] == ["watch-0", "watch-1", "watch-2"]
    assert parse_transaction(SAMPLE_TX).GetTxid()


# -- the webhook verifier ----------------------------------------------------------------------------

SECRET = "whsec_fuzz_0123456789abcdef"
NOW = 1_795_000_000
BODY = b'{"id":"evt_1","object":"event","type":"invoice.settled","data":{"invoice":{"id":"inv_1"}}}'
HEADER = sign_webhook(SECRET, BODY, NOW)
HEADER_NAMES = st.sampled_from(
    ["CryptoCity-Signature", "cryptocity-signature", "X-Other", "CRYPTOCITY-SIGNATURE"]
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, str]], bytes]:
    header = draw(st.one_of(st.text(max_size=300), text_mutations(HEADER), st.just(HEADER)))
    body = draw(st.one_of(st.just(BODY), mutations(BODY), st.binary(max_size=300)))
    extra = draw(
        st.lists(st.tuples(HEADER_NAMES, st.one_of(st.just(HEADER), st.text(max_size=80))), max_size=2)
    )
    return [(draw(HEADER_NAMES), header), *extra], body


def _check_delivery(delivery: tuple[list[tuple[str, str]], bytes]) -> None:
    headers, body = delivery
    try:
        event = verify_webhook(SECRET, headers, body, now=NOW)
    except WebhookVerificationError:
        return
    # Accepted only when genuine: the exact body signed, under the one signature header.
    assert body == BODY
    assert isinstance(event, dict) and event["id"] == "evt_1"


@FUZZ
@given(deliveries())
def test_the_webhook_verifier_accepts_only_genuine_deliveries(
    delivery: tuple[list[tuple[str, str]], bytes],
) -> None:
    counted("test_the_webhook_verifier_accepts_only_genuine_deliveries", _check_delivery)(delivery)


def test_the_genuine_delivery_seed_verifies() -> None:
    assert verify_webhook(SECRET, [("CryptoCity-Signature", HEADER)], BODY, now=NOW)["id"] == "evt_1"
