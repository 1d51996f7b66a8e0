"""BIP21 and EIP-681 payment requests: the examples of both texts, round-trip properties, every refusal."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payment_uri import (
    MAX_CHAIN_ID,
    MAX_SAT,
    MAX_UINT256,
    Bip21Request,
    Eip681Native,
    Eip681TokenTransfer,
    PaymentUriError,
    build_bip21,
    build_eip681,
    parse_bip21,
    parse_eip681,
    parse_payment_uri,
)

LEGACY = "175tWpb8K1S7NmH4Zx6rewF9WQrcZv245W"  # the address BIP21's examples use
BECH32 = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
ETH_TO = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

# --- BIP21 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"bitcoin:{LEGACY}", Bip21Request(LEGACY, None)),
        (f"bitcoin:{LEGACY}?label=Luke-Jr", Bip21Request(LEGACY, None, label="Luke-Jr")),
        (f"bitcoin:{LEGACY}?amount=20.3&label=Luke-Jr", Bip21Request(LEGACY, 2_030_000_000, label="Luke-Jr")),
        (
            f"bitcoin:{LEGACY}?amount=50&label=Luke-Jr&message=Donation%20for%20project%20xyz",
            Bip21Request(LEGACY, 5_000_000_000, label="Luke-Jr", message="Donation for project xyz"),
        ),
        (  # parameters a wallet does not know, without req-, are kept (and may be ignored)
            f"bitcoin:{LEGACY}?somethingyoudontunderstand=50&somethingelseyoudontget=999",
            Bip21Request(
                LEGACY,
                None,
                params=(("somethingyoudontunderstand", "50"), ("somethingelseyoudontget", "999")),
            ),
        ),
        (f"BITCOIN:{BECH32.upper()}?amount=0.001", Bip21Request(BECH32.upper(), 100_000)),
        (f"BitCoin:{BECH32}?amount=0.00000001", Bip21Request(BECH32, 1)),
        (f"bitcoin:{BECH32}?amount=21000000", Bip21Request(BECH32, MAX_SAT)),
        (f"bitcoin:{BECH32}?amount=0.10000000", Bip21Request(BECH32, 10_000_000)),
        (f"bitcoin:{BECH32}?&amount=1&&", Bip21Request(BECH32, 100_000_000)),  # empty params are allowed
        (f"bitcoin:{BECH32}?label=a+b", Bip21Request(BECH32, None, label="a+b")),  # '+' is not a space
        (f"bitcoin:{BECH32}?label=", Bip21Request(BECH32, None, label="")),
        (f"bitcoin:{BECH32}?flag", Bip21Request(BECH32, None, params=(("flag", ""),))),
        (f"  bitcoin:{BECH32}?amount=1\n", Bip21Request(BECH32, 100_000_000)),
        (
            f"bitcoin:{BECH32}?label=%D0%90%D0%BB%D0%B0%D1%82%D0%B0%D1%83%20%D2%9A%D0%B0%D0%BB%D0%B0%D1%81%D1%8B",
            Bip21Request(BECH32, None, label="Алатау Қаласы"),
        ),
    ],
)
def test_parse_bip21_examples(uri: str, expected: Bip21Request) -> None:
    assert parse_bip21(uri) == expected
    assert parse_payment_uri(uri) == expected


@pytest.mark.parametrize(
    ("request_", "uri"),
    [
        (Bip21Request(BECH32, None), f"bitcoin:{BECH32}"),
        (Bip21Request(BECH32, 150_000), f"bitcoin:{BECH32}?amount=0.0015"),
        (Bip21Request(BECH32, 1), f"bitcoin:{BECH32}?amount=0.00000001"),
        (Bip21Request(BECH32, 100_000_000), f"bitcoin:{BECH32}?amount=1"),
        (Bip21Request(BECH32, 123_456_789_012), f"bitcoin:{BECH32}?amount=1234.56789012"),
        (
            Bip21Request(BECH32, 5_000_000_000, "Luke-Jr", "Donation for project xyz"),
            f"bitcoin:{BECH32}?amount=50&label=Luke-Jr&message=Donation%20for%20project%20xyz",
        ),
        (
            Bip21Request(BECH32, 250_000, "Кофе & чай", "Заказ #7: 1+1=2?"),
            f"bitcoin:{BECH32}?amount=0.0025&label=%D0%9A%D0%BE%D1%84%D0%B5%20%26%20%D1%87%D0%B0%D0%B9"
            "&message=%D0%97%D0%B0%D0%BA%D0%B0%D0%B7%20%237%3A%201%2B1%3D2%3F",
        ),
        (
            Bip21Request(BECH32, None, params=(("lightning", "lnbc1"), ("x y", "50%"))),
            f"bitcoin:{BECH32}?lightning=lnbc1&x%20y=50%25",
        ),
    ],
)
def test_build_bip21_examples(request_: Bip21Request, uri: str) -> None:
    assert build_bip21(request_) == uri
    assert parse_bip21(uri) == request_


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            f"bitcoin:{LEGACY}?req-somethingyoudontunderstand=50&req-somethingelseyoudontget=999",
            "unsupported required parameter 'req-somethingyoudontunderstand'",
        ),
        (f"bitcoin:{BECH32}?REQ-x=1", "unsupported required parameter 'REQ-x'"),
        (f"bitcoin:{BECH32}?amount=1&req-x", "unsupported required parameter 'req-x'"),
        (f"bitcoin:{BECH32}?amount=0.000000001", "has more than 8 decimal places"),
        (f"bitcoin:{BECH32}?amount=1e-3", "uses exponent notation"),
        (f"bitcoin:{BECH32}?amount=1E3", "uses exponent notation"),
        (f"bitcoin:{BECH32}?amount=-1", "must not have a sign"),
        (f"bitcoin:{BECH32}?amount=+1", "must not have a sign"),
        (f"bitcoin:{BECH32}?amount=1,5", "contains a comma"),
        (f"bitcoin:{BECH32}?amount=.5", "is not a plain decimal number"),
        (f"bitcoin:{BECH32}?amount=1.", "is not a plain decimal number"),
        (f"bitcoin:{BECH32}?amount=0x10", "is not a plain decimal number"),
        (f"bitcoin:{BECH32}?amount=1%30", "is not a plain decimal number"),
        (f"bitcoin:{BECH32}?amount=", "amount is empty"),
        (f"bitcoin:{BECH32}?amount", "'amount' has no value"),
        (f"bitcoin:{BECH32}?amount=0", "amount is zero"),
        (f"bitcoin:{BECH32}?amount=21000000.00000001", "more than will ever exist"),
        (f"bitcoin:{BECH32}?amount=1&amount=1", "'amount' appears more than once"),
        (f"bitcoin:{BECH32}?label=a&label=b", "'label' appears more than once"),
        (f"bitcoin:{BECH32}?message=a&message=a", "'message' appears more than once"),
        (f"bitcoin:{BECH32}?AMOUNT=1", "parameter names are case-sensitive: write 'amount', not 'AMOUNT'"),
        (f"bitcoin:{BECH32}?Label=x", "write 'label', not 'Label'"),
        (f"bitcoin:{BECH32}?=x", "has no name"),
        (f"bitcoin:{BECH32}?label=100%", "'%' must be followed by two hex digits"),
        (f"bitcoin:{BECH32}?label=%zz", "'%' must be followed by two hex digits"),
        (f"bitcoin:{BECH32}?message=%FF%FE", "percent-encoded bytes are not valid UTF-8"),
        (f"bitcoin:{BECH32}?label=a#b", "unexpected '#'"),
        (f"bitcoin://{BECH32}", "no '//' after the colon"),
        ("bitcoin:", "no address after 'bitcoin:'"),
        ("bitcoin:?amount=1", "no address after 'bitcoin:'"),
        ("bitcoin:bc1q-not-an-address", "is not a bitcoin address (letters and digits only)"),
        (f"litecoin:{BECH32}", "not a bitcoin: URI"),
        (BECH32, "not a bitcoin: URI"),
        ("", "empty payment URI"),
        (f"bitcoin:{BECH32}?message=" + "x" * 5000, "payment URI too long"),
    ],
)
def test_parse_bip21_refusals(uri: str, message: str) -> None:
    with pytest.raises(PaymentUriError) as excinfo:
        parse_bip21(uri)
    assert message in str(excinfo.value)


def test_parse_bip21_needs_text() -> None:
    with pytest.raises(PaymentUriError, match="must be text"):
        parse_bip21(b"bitcoin:x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount_sat": 0}, "out of range: it must be positive"),
        ({"amount_sat": -1}, "out of range"),
        ({"amount_sat": MAX_SAT + 1}, "at most 21 million BTC"),
        ({"amount_sat": True}, "amount_sat must be an integer, not bool"),
        ({"amount_sat": 1.5}, "amount_sat must be an integer, not float"),
        ({"address": "bc1q?amount=1"}, "is not a bitcoin address"),
        ({"address": ""}, "is not a bitcoin address"),
        ({"label": 5}, "label must be text"),
        ({"message": "\ud800"}, "message contains characters that cannot be encoded as UTF-8"),
        ({"params": (("amount", "1"),)}, "'amount' has its own field"),
        ({"params": (("Label", "1"),)}, "'Label' has its own field"),
        ({"params": (("req-pay", "1"),)}, "a req- parameter makes every wallet"),
        ({"params": (("", "1"),)}, "a parameter name must not be empty"),
        ({"params": (("a", "b", "c"),)}, "(key, value) pairs of strings"),
        ({"params": (("a", 1),)}, "(key, value) pairs of strings"),
    ],
)
def test_bip21_request_refusals(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"address": BECH32, "amount_sat": 1000} | kwargs
    with pytest.raises(PaymentUriError) as excinfo:
        Bip21Request(**fields)  # type: ignore[arg-type]
    assert message in str(excinfo.value)


def test_bip21_params_given_as_lists_become_tuples() -> None:
    request = Bip21Request(BECH32, None, params=[["k", "v"]])  # type: ignore[arg-type]
    assert request.params == (("k", "v"),)
    assert hash(request)  # frozen and hashable: usable as a cache key


_RESERVED = "&=?#%+ /:;,@!$'()*[]"
_TEXTS = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(_RESERVED), max_size=40)
_NAMES = _TEXTS.filter(
    lambda k: k != "" and k.lower() not in {"amount", "label", "message"} and not k.lower().startswith("req-")
)
_BIP21_REQUESTS = st.builds(
    Bip21Request,
    address=st.sampled_from([BECH32, BECH32.upper(), LEGACY, "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"]),
    amount_sat=st.none() | st.integers(1, MAX_SAT - 1) | st.sampled_from([1, 10, 100_000_000, MAX_SAT]),
    label=st.none() | _TEXTS,
    message=st.none() | _TEXTS,
    params=st.lists(st.tuples(_NAMES, _TEXTS), max_size=3).map(tuple),
)


@settings(deadline=None)
@given(_BIP21_REQUESTS)
def test_bip21_round_trip(request_: Bip21Request) -> None:
    uri = build_bip21(request_)
    assert parse_bip21(uri) == request_
    assert parse_payment_uri(uri) == request_
    assert uri.isascii()
    assert " " not in uri
    assert "#" not in uri
    amount = re.search(r"[?&]amount=([^&]*)", uri)
    if request_.amount_sat is None:
        assert amount is None
    else:
        assert amount is not None
        assert re.fullmatch(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?", amount[1])  # plain, trailing zeros trimmed
        assert "e" not in amount[1].lower()


# --- EIP-681 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (  # EIP-681's ether example (its mixed-case address is not valid EIP-55, so given in lower case)
            "ethereum:0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359?value=2.014e18",
            Eip681Native("0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359", 1, 2_014_000_000_000_000_000),
        ),
        (  # EIP-681's ERC-20 example
            "ethereum:0x89205a3a3b2a69de6dbf7f01ed13b2108b2c43e7/transfer"
            "?address=0x8e23ee67d1332ad560396262c48ffbb01f93d052&uint256=1",
            Eip681TokenTransfer(
                "0x89205A3A3b2A69De6Dbf7f01ED13B2108B2c43e7",
                1,
                "0x8e23Ee67d1332aD560396262C48ffbB01F93D052",
                1,
            ),
        ),
        (f"ethereum:pay-{ETH_TO}@31337?value=1e18", Eip681Native(ETH_TO, 31337, 10**18)),
        (f"ETHEREUM:{ETH_TO.lower()}@11155111?value=1000", Eip681Native(ETH_TO, 11155111, 1000)),
        (f"ethereum:0x{ETH_TO[2:].upper()}@1?value=1", Eip681Native(ETH_TO, 1, 1)),
        (f"ethereum:{ETH_TO}?value=2.014E18", Eip681Native(ETH_TO, 1, 2_014_000_000_000_000_000)),
        (f"ethereum:{ETH_TO}?value=+5", Eip681Native(ETH_TO, 1, 5)),
        (f"ethereum:{ETH_TO}?value=.5e1", Eip681Native(ETH_TO, 1, 5)),
        (f"ethereum:{ETH_TO}?value=1.0e0", Eip681Native(ETH_TO, 1, 1)),
        (f"ethereum:{ETH_TO}?value=0.000001e24", Eip681Native(ETH_TO, 1, 10**18)),
        (f"ethereum:{ETH_TO}?value=1e77", Eip681Native(ETH_TO, 1, 10**77)),
        (f"ethereum:{ETH_TO}?value=007", Eip681Native(ETH_TO, 1, 7)),
        (
            f"ethereum:{ETH_TO}@1?value=1e18&gas=21000&gasPrice=2e9&gasLimit=21000",
            Eip681Native(ETH_TO, 1, 10**18),
        ),
        (
            f"ethereum:{TOKEN}@31337/transfer?address={ETH_TO}&uint256=2.5e6&value=0",
            Eip681TokenTransfer(TOKEN, 31337, ETH_TO, 2_500_000),
        ),
        (
            f"ethereum:pay-{TOKEN.lower()}@5/transfer?uint256=12&address={ETH_TO.lower()}&gas=65000",
            Eip681TokenTransfer(TOKEN, 5, ETH_TO, 12),
        ),
    ],
)
def test_parse_eip681_examples(uri: str, expected: Eip681Native | Eip681TokenTransfer) -> None:
    assert parse_eip681(uri) == expected
    assert parse_payment_uri(uri) == expected


@pytest.mark.parametrize(
    ("request_", "uri"),
    [
        (Eip681Native(ETH_TO, 31337, 10**18), f"ethereum:{ETH_TO}@31337?value=1000000000000000000"),
        (Eip681Native(ETH_TO.lower(), 1, 1), f"ethereum:{ETH_TO}@1?value=1"),
        (
            Eip681TokenTransfer(TOKEN, 11155111, ETH_TO, 25_000_000),
            f"ethereum:{TOKEN}@11155111/transfer?address={ETH_TO}&uint256=25000000",
        ),
    ],
)
def test_build_eip681_examples(request_: Eip681Native | Eip681TokenTransfer, uri: str) -> None:
    assert build_eip681(request_) == uri
    assert parse_eip681(uri) == request_


def test_build_eip681_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        build_eip681(Bip21Request(BECH32, None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ethereum:0xfb6916095ca1df60bb79Ce92ce3ea74c37c5d359?value=2.014e18", "bad EIP-55 checksum"),
        (f"ethereum:{ETH_TO}?value=2.0145e3", "is not a whole number of base units"),
        (f"ethereum:{ETH_TO}?value=1.5", "is not a whole number of base units"),
        (f"ethereum:{ETH_TO}?value=-1", "value='-1' is negative"),
        (f"ethereum:{ETH_TO}?value=1e", "the exponent after 'e' has no digits"),
        (f"ethereum:{ETH_TO}?value=abc", "value='abc' is not a number"),
        (f"ethereum:{ETH_TO}?value=", "value='' is not a number"),
        (f"ethereum:{ETH_TO}?value=.", "is not a number"),
        (f"ethereum:{ETH_TO}?value=0x10", "is not a number"),
        (f"ethereum:{ETH_TO}?value=1e-3", "is not a number"),
        (f"ethereum:{ETH_TO}?value=1 000", "is not a number"),
        (f"ethereum:{ETH_TO}?value=2e77", "does not fit in uint256"),
        (f"ethereum:{ETH_TO}?value=1e999999999", "does not fit in uint256"),
        (f"ethereum:{ETH_TO}?value=" + "9" * 101, "number too long"),
        (f"ethereum:{ETH_TO}?value=0", "value is zero"),
        (f"ethereum:{ETH_TO}?value=0e18", "value is zero"),
        (f"ethereum:{ETH_TO}", "no value= parameter"),
        (f"ethereum:{ETH_TO}@1?gas=21000", "no value= parameter"),
        (f"ethereum:{ETH_TO}?value=1&value=1", "'value' appears more than once"),
        (f"ethereum:{ETH_TO}?value=1&label=shop", "unexpected parameter 'label' in an ether payment request"),
        (f"ethereum:{ETH_TO}?value=1&gas=lots", "gas='lots' is not a number"),
        (f"ethereum:{ETH_TO}?value=1&", "empty parameter"),
        (f"ethereum:{ETH_TO}?", "empty parameter"),
        (f"ethereum:{ETH_TO}?value", "parameter 'value' has no value"),
        (f"ethereum:{TOKEN}/approve?address={ETH_TO}&uint256=1", "unsupported function 'approve'"),
        (f"ethereum:{TOKEN}/?address={ETH_TO}&uint256=1", "unsupported function ''"),
        (f"ethereum:{TOKEN}/transfer?uint256=1", "a transfer request needs address="),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO}", "a transfer request needs uint256="),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO}&uint256=0", "uint256 is zero"),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO}&uint256=1&value=1", "must not also send ether"),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO}&uint256=1&amount=1", "unexpected parameter 'amount'"),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO}&uint256=1.5", "not a whole number"),
        (f"ethereum:{TOKEN}/transfer?address=alice.eth&uint256=1", "address: ENS names such as 'alice.eth'"),
        (f"ethereum:{TOKEN}/transfer?address={ETH_TO[:-1]}7&uint256=1", "address: '0x"),
        ("ethereum:vitalik.eth?value=1", "ENS names such as 'vitalik.eth' are not supported"),
        ("ethereum:pay-vitalik.eth@1?value=1", "ENS names such as 'vitalik.eth' are not supported"),
        (f"ethereum:foo-{ETH_TO}?value=1", "unsupported EIP-681 prefix 'foo-'"),
        (f"ethereum:{ETH_TO}@0?value=1", "chain id 0 is out of range"),
        (f"ethereum:{ETH_TO}@{MAX_CHAIN_ID + 1}?value=1", "is out of range"),
        (f"ethereum:{ETH_TO}@abc?value=1", "chain id 'abc' is not a decimal number"),
        (f"ethereum:{ETH_TO}@?value=1", "chain id '' is not a decimal number"),
        (f"ethereum:{ETH_TO}@-1?value=1", "chain id '-1' is not a decimal number"),
        (f"ethereum:{ETH_TO}@１?value=1", "is not a decimal number"),  # a full-width digit
        ("ethereum:0x1234?value=1", "expected 0x followed by 40 hex digits"),
        ("ethereum:", "no address after 'ethereum:'"),
        ("ethereum:?value=1", "no address after 'ethereum:'"),
        (f"ethereum://{ETH_TO}?value=1", "no '//' after the colon"),
        (f"ethereum:{ETH_TO}?value=1#x", "unexpected '#'"),
        (f"bitcoin:{ETH_TO}?value=1", "not a ethereum: URI"),
    ],
)
def test_parse_eip681_refusals(uri: str, message: str) -> None:
    with pytest.raises(PaymentUriError) as excinfo:
        parse_eip681(uri)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Eip681Native("0x1234", 1, 1), "address: '0x1234' is not an Ethereum address"),
        (lambda: Eip681Native(ETH_TO.replace("f", "F", 1), 1, 1), "bad EIP-55 checksum"),
        (lambda: Eip681Native(ETH_TO, 0, 1), "chain id 0 is out of range"),
        (lambda: Eip681Native(ETH_TO, 1, 0), "value_wei must be positive"),
        (lambda: Eip681Native(ETH_TO, 1, MAX_UINT256 + 1), "fit in uint256"),
        (lambda: Eip681Native(ETH_TO, True, 1), "chain_id must be an integer, not bool"),
        (lambda: Eip681Native(ETH_TO, 1, 1.0), "value_wei must be an integer, not float"),  # type: ignore[arg-type]
        (lambda: Eip681Native(None, 1, 1), "address must be text"),  # type: ignore[arg-type]
        (lambda: Eip681TokenTransfer(TOKEN, 1, "alice.eth", 1), "to: ENS names"),
        (lambda: Eip681TokenTransfer("0x", 1, ETH_TO, 1), "token: '0x' is not an Ethereum address"),
        (lambda: Eip681TokenTransfer(TOKEN, 1, ETH_TO, 0), "amount_units must be positive"),
    ],
)
def test_eip681_request_refusals(build: Callable[[], object], message: str) -> None:
    with pytest.raises(PaymentUriError) as excinfo:
        build()
    assert message in str(excinfo.value)


_ETH_ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
_CHAIN_IDS = st.integers(1, MAX_CHAIN_ID) | st.sampled_from([1, 5, 31337, 11155111])
_WEI = st.integers(1, 10**30) | st.integers(1, MAX_UINT256)


@settings(deadline=None)
@given(address=_ETH_ADDRESSES, chain_id=_CHAIN_IDS, value=_WEI)
def test_eip681_native_round_trip(address: str, chain_id: int, value: int) -> None:
    request_ = Eip681Native(address, chain_id, value)
    uri = build_eip681(request_)
    assert parse_eip681(uri) == request_ == parse_payment_uri(uri)
    assert request_.address.lower() == address
    built_value = uri.rpartition("value=")[2]
    assert built_value == str(value)
    assert "e" not in built_value.lower()


@settings(deadline=None)
@given(token=_ETH_ADDRESSES, to=_ETH_ADDRESSES, chain_id=_CHAIN_IDS, units=_WEI)
def test_eip681_transfer_round_trip(token: str, to: str, chain_id: int, units: int) -> None:
    request_ = Eip681TokenTransfer(token, chain_id, to, units)
    uri = build_eip681(request_)
    assert parse_eip681(uri) == request_ == parse_payment_uri(uri)
    assert re.fullmatch(
        r"ethereum:0x[0-9a-fA-F]{40}@[0-9]+/transfer\?address=0x[0-9a-fA-F]{40}&uint256=[0-9]+", uri
    )


@settings(deadline=None)
@given(value=_WEI, data=st.data())
def test_eip681_scientific_notation_reads_the_same_amount(value: int, data: st.DataObject) -> None:
    digits = str(value)
    point = data.draw(st.integers(0, len(digits) - 1))  # digits after the decimal point
    trailing = data.draw(st.sampled_from(["", "0", "00"]))
    whole, fraction = digits[: len(digits) - point], digits[len(digits) - point :]
    mantissa = whole + ("." + fraction + trailing if point else "")
    exponent = point  # trailing zeros in the fraction do not change the mantissa
    uri = f"ethereum:{ETH_TO}?value={mantissa}e{exponent}"
    assert parse_eip681(uri) == Eip681Native(ETH_TO, 1, value)


# --- dispatch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"litecoin:{LEGACY}", "unsupported payment scheme 'litecoin': expected bitcoin: or ethereum:"),
        ("https://example.com/pay", "unsupported payment scheme 'https'"),
        (BECH32, "not a payment URI: expected one starting with bitcoin: or ethereum:"),
        ("   ", "empty payment URI"),
    ],
)
def test_parse_payment_uri_refusals(uri: str, message: str) -> None:
    with pytest.raises(PaymentUriError) as excinfo:
        parse_payment_uri(uri)
    assert message in str(excinfo.value)


def test_payment_uri_error_is_a_value_error() -> None:
    assert issubclass(PaymentUriError, ValueError)
