"""Payment requests as URIs: BIP21 (``bitcoin:``) and EIP-681 (``ethereum:``), built and parsed.

The gateway builds these for the checkout page's QR codes and the resident wallet parses them, so both
directions live here and are tested against each other (build then parse gives back the same request).

Amounts are integers in the smallest unit everywhere in the code; the only decimal string is BIP21's BTC
amount, produced and parsed by :mod:`gateway.money` so that no float and no exponent ever appears in it.
EIP-681 amounts are emitted as plain integers (wallets must accept them), while the parser also accepts the
scientific notation EIP-681 encourages (``2.014e18``) as long as the result is an exact integer.

The parsers are strict where a lenient reading could move money wrongly (amounts, duplicate keys, unknown
``req-`` parameters, bad checksums) and every refusal says exactly what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from gateway.addresses import AddressError, checksum_eth_address
from gateway.money import ASSETS, AmountError, Asset, format_minor_units, parse_decimal_amount

__all__ = [
    "MAX_CHAIN_ID",
    "MAX_SAT",
    "MAX_UINT256",
    "Bip21Request",
    "Eip681Native",
    "Eip681TokenTransfer",
    "PaymentRequest",
    "PaymentUriError",
    "build_bip21",
    "build_eip681",
    "parse_bip21",
    "parse_eip681",
    "parse_payment_uri",
]

BTC_DECIMALS: Final = ASSETS[Asset.BTC].decimals
MAX_SAT: Final = 21_000_000 * 10**BTC_DECIMALS
MAX_UINT256: Final = 2**256 - 1
MAX_CHAIN_ID: Final = (2**64 - 1) // 2 - 36  # the largest chain id EIP-2294 allows
# A version-40 QR code holds at most 4296 alphanumeric characters, so nothing scanned is longer; the limit
# keeps hostile input from costing more than a scan could.
MAX_URI_LENGTH: Final = 4296

_BIP21_KNOWN: Final = frozenset({"amount", "label", "message"})
_ETH_GAS_KEYS: Final = frozenset({"gas", "gasLimit", "gasPrice"})
_BTC_ADDRESS_CHARS: Final = re.compile(r"[A-Za-z0-9]+")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_EIP681_NUMBER: Final = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]+))?(?:[eE]([0-9]*))?")
_MAX_NUMBER_CHARS: Final = 100


class PaymentUriError(ValueError):
    """A payment request that cannot be built or parsed; the message says which part is wrong and why."""


# --- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bip21Request:
    """A BIP21 request. ``amount_sat=None`` leaves the amount to the payer; ``params`` keeps other keys.

    The constructor validates, so an instance can always be built into a URI that parses back to it.
    """

    address: str
    amount_sat: int | None
    label: str | None = None
    message: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not _BTC_ADDRESS_CHARS.fullmatch(self.address):
            raise PaymentUriError(
                f"address {self.address!r} is not a bitcoin address (letters and digits only)"
            )
        if self.amount_sat is not None and not 0 < _as_int(self.amount_sat, "amount_sat") <= MAX_SAT:
            raise PaymentUriError(
                f"amount of {self.amount_sat} sat is out of range: it must be positive (leave it out for "
                "an open amount) and at most 21 million BTC"
            )
        _check_text(self.label, "label")
        _check_text(self.message, "message")
        params = tuple(tuple(pair) for pair in self.params)
        for pair in params:
            if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                raise PaymentUriError("params must be (key, value) pairs of strings")
            key, value = pair
            _check_text(key, "parameter name")
            _check_text(value, f"parameter {key!r}")
            if not key:
                raise PaymentUriError("a parameter name must not be empty")
            if key.lower() in _BIP21_KNOWN:
                raise PaymentUriError(f"{key!r} has its own field; do not pass it in params")
            if key.lower().startswith("req-"):
                raise PaymentUriError(
                    f"{key!r}: a req- parameter makes every wallet that does not know it refuse the "
                    "request, and none is supported"
                )
        object.__setattr__(self, "params", params)


@dataclass(frozen=True, slots=True)
class Eip681Native:
    """An ether payment: send ``value_wei`` to ``address`` on ``chain_id`` (address kept in EIP-55 form)."""

    address: str
    chain_id: int
    value_wei: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _eth_address(self.address, "address"))
        _check_chain_id(self.chain_id)
        _check_positive_uint256(self.value_wei, "value_wei")


@dataclass(frozen=True, slots=True)
class Eip681TokenTransfer:
    """An ERC-20 payment: call ``token.transfer(to, amount_units)`` on ``chain_id``."""

    token: str
    chain_id: int
    to: str
    amount_units: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _eth_address(self.token, "token"))
        object.__setattr__(self, "to", _eth_address(self.to, "to"))
        _check_chain_id(self.chain_id)
        _check_positive_uint256(self.amount_units, "amount_units")


PaymentRequest = Bip21Request | Eip681Native | Eip681TokenTransfer


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PaymentUriError(f"{what} must be an integer, not {type(value).__name__}")
    return value


def _check_text(value: object, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise PaymentUriError(f"{what} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PaymentUriError(f"{what} contains characters that cannot be encoded as UTF-8") from None


def _check_chain_id(chain_id: object) -> None:
    if not 1 <= _as_int(chain_id, "chain_id") <= MAX_CHAIN_ID:
        raise PaymentUriError(f"chain id {chain_id} is out of range (1 to {MAX_CHAIN_ID})")


def _check_positive_uint256(value: object, what: str) -> None:
    if not 0 < _as_int(value, what) <= MAX_UINT256:
        raise PaymentUriError(f"{what} must be positive and fit in uint256, got {value}")


def _eth_address(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise PaymentUriError(f"{what} must be text, not {type(text).__name__}")
    if not text.startswith("0x") and "." in text:
        raise PaymentUriError(f"{what}: ENS names such as {text!r} are not supported; use a 0x address")
    try:
        return checksum_eth_address(text)
    except AddressError as err:
        raise PaymentUriError(f"{what}: {err}") from None


# --- BIP21 -------------------------------------------------------------------------------------------------


def _pct(text: str) -> str:
    """RFC 3986 percent-encoding of UTF-8: everything but unreserved characters, so a space is %20."""
    return quote(text, safe="", encoding="utf-8", errors="strict")


def build_bip21(req: Bip21Request) -> str:
    """``bitcoin:<address>?amount=<BTC>&label=…&message=…``: plain decimal amount, trailing zeros trimmed."""
    parts: list[str] = []
    if req.amount_sat is not None:
        parts.append("amount=" + format_minor_units(req.amount_sat, BTC_DECIMALS))
    if req.label is not None:
        parts.append("label=" + _pct(req.label))
    if req.message is not None:
        parts.append("message=" + _pct(req.message))
    parts.extend(f"{_pct(key)}={_pct(value)}" for key, value in req.params)
    return f"bitcoin:{req.address}" + ("?" + "&".join(parts) if parts else "")


def _prepare(uri: object) -> str:
    if not isinstance(uri, str):
        raise PaymentUriError("a payment URI must be text")
    text = uri.strip()  # scanners and clipboards add trailing newlines
    if not text:
        raise PaymentUriError("empty payment URI")
    if len(text) > MAX_URI_LENGTH:
        raise PaymentUriError(f"payment URI too long ({len(text)} characters, at most {MAX_URI_LENGTH})")
    return text


def _split_scheme(text: str, scheme: str) -> str:
    got, sep, rest = text.partition(":")
    if not sep or got.lower() != scheme:
        raise PaymentUriError(f"not a {scheme}: URI")
    if rest.startswith("//"):
        raise PaymentUriError(f"a {scheme}: URI has no '//' after the colon")
    if "#" in rest:
        raise PaymentUriError("unexpected '#' in a payment URI (a '#' in a value must be sent as %23)")
    return rest


def _pct_decode(raw: str, what: str) -> str:
    if "%" not in raw:
        return raw
    if _BAD_PERCENT.search(raw):
        raise PaymentUriError(f"{what}: '%' must be followed by two hex digits (a literal % is %25)")
    try:
        return unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise PaymentUriError(f"{what}: percent-encoded bytes are not valid UTF-8") from None


def _parse_btc_amount(raw: str) -> int:
    if not raw:
        raise PaymentUriError("amount is empty")
    if raw[0] in "+-":
        raise PaymentUriError(f"amount {raw!r} must not have a sign")
    if "e" in raw.lower():
        raise PaymentUriError(f"amount {raw!r} uses exponent notation; BIP21 amounts are plain decimals")
    if "," in raw:
        raise PaymentUriError(f"amount {raw!r} contains a comma; BIP21 amounts use '.' and no separators")
    try:
        amount_sat = parse_decimal_amount(raw, BTC_DECIMALS)
    except AmountError as err:
        raise PaymentUriError(f"amount (in BTC): {err}") from None
    if amount_sat == 0:
        raise PaymentUriError("amount is zero; a request without an amount simply leaves it out")
    if amount_sat > MAX_SAT:
        raise PaymentUriError(f"amount {raw!r} BTC is more than will ever exist (21 million)")
    return amount_sat


def parse_bip21(uri: str) -> Bip21Request:
    """Parse a ``bitcoin:`` URI (scheme in any case) into a :class:`Bip21Request`.

    Refuses: amounts that are not plain decimals with at most 8 places, duplicate or differently-cased
    ``amount``/``label``/``message``, and any ``req-`` parameter (BIP21: a wallet must refuse a request whose
    required parameter it does not understand, and we understand none). Other parameters are kept in order.
    A ``+`` is a literal plus sign (RFC 3986), not a space. The address is returned as written; check it
    with :func:`gateway.addresses.btc_script_for_address` for the network at hand.
    """
    rest = _split_scheme(_prepare(uri), "bitcoin")
    address, _, query = rest.partition("?")
    if not address:
        raise PaymentUriError("no address after 'bitcoin:'")
    if not _BTC_ADDRESS_CHARS.fullmatch(address):
        raise PaymentUriError(f"address {address!r} is not a bitcoin address (letters and digits only)")
    known: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    for segment in query.split("&") if query else ():
        if not segment:
            continue  # BIP21's grammar allows empty parameters ("?&amount=1")
        raw_key, has_value, raw_value = segment.partition("=")
        key = _pct_decode(raw_key, "parameter name")
        if not key:
            raise PaymentUriError(f"parameter {segment!r} has no name")
        lowered = key.lower()
        if lowered in _BIP21_KNOWN:
            if key != lowered:
                raise PaymentUriError(f"parameter names are case-sensitive: write {lowered!r}, not {key!r}")
            if key in known:
                raise PaymentUriError(f"{key!r} appears more than once")
            if not has_value:
                raise PaymentUriError(f"{key!r} has no value ('{key}=…')")
            known[key] = raw_value
        elif lowered.startswith("req-"):
            raise PaymentUriError(
                f"unsupported required parameter {key!r}: BIP21 says a wallet must refuse a request with a "
                "req- parameter it does not understand"
            )
        else:
            params.append((key, _pct_decode(raw_value, f"parameter {key!r}")))
    amount = _parse_btc_amount(known["amount"]) if "amount" in known else None
    label = _pct_decode(known["label"], "label") if "label" in known else None
    message = _pct_decode(known["message"], "message") if "message" in known else None
    return Bip21Request(address, amount, label, message, tuple(params))


# --- EIP-681 -----------------------------------------------------------------------------------------------


def build_eip681(req: Eip681Native | Eip681TokenTransfer) -> str:
    """``ethereum:<addr>@<id>?value=<wei>`` or ``ethereum:<token>@<id>/transfer?address=<to>&uint256=<n>``.

    Amounts are plain integers (no exponent) and the chain id is always written, so a wallet on the wrong
    network can tell.
    """
    if isinstance(req, Eip681Native):
        return f"ethereum:{req.address}@{req.chain_id}?value={req.value_wei}"
    if isinstance(req, Eip681TokenTransfer):
        return f"ethereum:{req.token}@{req.chain_id}/transfer?address={req.to}&uint256={req.amount_units}"
    raise TypeError(f"not an EIP-681 request: {type(req).__name__}")


def _parse_number(text: str, what: str) -> int:
    """An EIP-681 ``number`` that must be a non-negative integer within uint256."""
    if len(text) > _MAX_NUMBER_CHARS:
        raise PaymentUriError(f"{what}: number too long ({len(text)} characters)")
    match = _EIP681_NUMBER.fullmatch(text)
    if match is None or (not match[2] and match[3] is None):
        raise PaymentUriError(f"{what}={text!r} is not a number (e.g. 2014000000000000000 or 2.014e18)")
    sign, whole, frac, exp = match.groups()
    if sign == "-":
        raise PaymentUriError(f"{what}={text!r} is negative")
    if exp == "":
        raise PaymentUriError(f"{what}={text!r}: the exponent after 'e' has no digits")
    frac = frac or ""
    digits = int(whole + frac or "0")
    shift = int(exp or "0") - len(frac)
    value: int  # (10 ** an int is typed Any, since a negative power would be a float)
    if shift >= 0:
        if digits and shift > 80:  # 10**80 > 2**256: too large whatever the digits (and cheap to refuse)
            raise PaymentUriError(f"{what}={text!r} does not fit in uint256")
        value = digits * 10**shift
    else:
        value, remainder = divmod(digits, 10**-shift)
        if remainder:
            raise PaymentUriError(
                f"{what}={text!r} is not a whole number of base units (EIP-681 allows integers only)"
            )
    if value > MAX_UINT256:
        raise PaymentUriError(f"{what}={text!r} does not fit in uint256")
    return value


def _parse_chain_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise PaymentUriError(f"chain id {text!r} is not a decimal number")
    chain_id = int(text)
    if not 1 <= chain_id <= MAX_CHAIN_ID:
        raise PaymentUriError(f"chain id {chain_id} is out of range (1 to {MAX_CHAIN_ID})")
    return chain_id


def _eip681_params(query: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if query is None:
        return params
    for segment in query.split("&"):
        key, has_value, value = segment.partition("=")
        if not segment:
            raise PaymentUriError("empty parameter (a stray '&' or '?')")
        if not has_value:
            raise PaymentUriError(f"parameter {key!r} has no value ('{key}=…')")
        if key in params:
            raise PaymentUriError(f"{key!r} appears more than once")
        params[key] = value
    return params


def parse_eip681(uri: str) -> Eip681Native | Eip681TokenTransfer:
    """Parse an ``ethereum:`` payment request: an ether payment or an ERC-20 ``transfer``.

    Accepts the optional ``pay-`` prefix, lower-case, upper-case or EIP-55 addresses (a mixed-case address
    must have a valid checksum; results are in EIP-55 form), integers or exact scientific notation for
    amounts, and ``gas``/``gasLimit``/``gasPrice`` hints (validated, then ignored: they are suggestions).
    A missing chain id gives ``chain_id=1``, the spec's mainnet default: callers guard against mainnet.
    Refuses ENS names, other functions, unknown or duplicate parameters and requests without an amount.
    """
    rest = _split_scheme(_prepare(uri), "ethereum")
    if rest[:4].lower() == "pay-":
        rest = rest[4:]
    head, question, query = rest.partition("?")
    target_and_chain, slash, function = head.partition("/")
    target, at, chain = target_and_chain.partition("@")
    if not target:
        raise PaymentUriError("no address after 'ethereum:'")
    prefix = re.match(r"[A-Za-z0-9]+-", target)
    if prefix and not target.startswith("0x") and "." not in target:
        # EIP-681 reserves other "<prefix>-" forms for incompatible future versions: refuse, do not guess
        raise PaymentUriError(f"unsupported EIP-681 prefix {prefix[0]!r} (only 'pay-' is defined)")
    target_address = _eth_address(target, "target address")
    chain_id = _parse_chain_id(chain) if at else 1
    params = _eip681_params(query if question else None)
    for key in params.keys() & _ETH_GAS_KEYS:
        _parse_number(params[key], key)

    if not slash:
        unknown = params.keys() - _ETH_GAS_KEYS - {"value"}
        if unknown:
            raise PaymentUriError(f"unexpected parameter {sorted(unknown)[0]!r} in an ether payment request")
        if "value" not in params:
            raise PaymentUriError("no value= parameter: the request does not say how much to pay")
        value = _parse_number(params["value"], "value")
        if value == 0:
            raise PaymentUriError("value is zero: nothing to pay")
        return Eip681Native(target_address, chain_id, value)

    if function != "transfer":
        raise PaymentUriError(
            f"unsupported function {function!r}: only ether payments and ERC-20 'transfer' are payment "
            "requests"
        )
    unknown = params.keys() - _ETH_GAS_KEYS - {"value", "address", "uint256"}
    if unknown:
        raise PaymentUriError(f"unexpected parameter {sorted(unknown)[0]!r} in a token transfer request")
    for required in ("address", "uint256"):
        if required not in params:
            raise PaymentUriError(f"a transfer request needs {required}=")
    if "value" in params and _parse_number(params["value"], "value") != 0:
        raise PaymentUriError("a token transfer must not also send ether (value= is not zero)")
    to = _eth_address(params["address"], "address")
    amount = _parse_number(params["uint256"], "uint256")
    if amount == 0:
        raise PaymentUriError("uint256 is zero: nothing to pay")
    return Eip681TokenTransfer(target_address, chain_id, to, amount)


def parse_payment_uri(uri: str) -> Bip21Request | Eip681Native | Eip681TokenTransfer:
    """Parse a scanned or pasted payment request, choosing BIP21 or EIP-681 by its scheme."""
    text = _prepare(uri)
    scheme, sep, _ = text.partition(":")
    if sep and scheme.lower() == "bitcoin":
        return parse_bip21(text)
    if sep and scheme.lower() == "ethereum":
        return parse_eip681(text)
    if sep and scheme.isalpha():
        raise PaymentUriError(f"unsupported payment scheme {scheme!r}: expected bitcoin: or ethereum:")
    raise PaymentUriError("not a payment URI: expected one starting with bitcoin: or ethereum:")
