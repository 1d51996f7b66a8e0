"""Receive addresses derived from merchants' watch-only account keys.

The gateway never holds a private key: a merchant registers the *account-level* extended public key of
their wallet (BIP84 ``m/84'/coin'/0'`` for bitcoin, BIP44 ``m/44'/60'/0'`` for Ethereum) and every invoice
gets the next non-hardened child of its external chain (``…/0/index``). Funds therefore land in the
merchant's own wallet, which can spend them without talking to us.

Why the key is parsed by hand here instead of through ``embit.bip32.HDKey``:

* merchants paste keys into a form, so every refusal must say what is wrong in words they understand
  (a private key, the wrong depth, a typo) rather than "Invalid version";
* a private key must be recognised and refused *before* anything else happens to it;
* derivation sits on the invoice-creation path (or the pool refill behind it), so it should be cheap: the
  key is parsed once, the external-chain node ``/0`` is derived once and cached, and each address costs one
  HMAC-SHA512, one point tweak in libsecp256k1 (through embit's ctypes binding) and one hash — none of the
  parent-fingerprint bookkeeping a general-purpose BIP32 implementation does for every child.

Bitcoin addresses are BIP84 P2WPKH (native SegWit v0, bech32); Ethereum addresses are EIP-55 checksummed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import operator
import re
from dataclasses import dataclass
from typing import Final

from embit import base58 as _base58
from embit import bech32 as _bech32
from embit.util import secp256k1 as _secp
from eth_hash.auto import keccak

__all__ = [
    "AccountKeyError",
    "AddressError",
    "BitcoinAccount",
    "DerivationError",
    "EthereumAccount",
    "btc_script_for_address",
    "checksum_eth_address",
    "is_valid_eth_address",
]

MAX_NON_HARDENED_INDEX: Final = 2**31 - 1
_HARDENED: Final = 2**31


class AccountKeyError(ValueError):
    """An extended key a merchant supplied cannot be used; the message tells them what to send instead."""


class AddressError(ValueError):
    """A blockchain address that is malformed or belongs to another network or script type."""


class DerivationError(ValueError):
    """A child index outside the non-hardened range, or (with probability < 2**-127) an invalid child."""


# --- extended key versions (SLIP-132) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Version:
    name: str  # the four-character prefix the base58 string starts with
    private: bool
    testnet: bool
    script: str  # what the wallet that exported it pays to: "any" (plain BIP32), "p2wpkh", "p2sh-p2wpkh", …


_VERSIONS: Final[dict[bytes, _Version]] = {
    bytes.fromhex(hex_version): _Version(name, name.endswith("prv"), testnet, script)
    for hex_version, name, testnet, script in (
        ("0488B21E", "xpub", False, "any"),
        ("0488ADE4", "xprv", False, "any"),
        ("043587CF", "tpub", True, "any"),
        ("04358394", "tprv", True, "any"),
        ("04B24746", "zpub", False, "p2wpkh"),
        ("04B2430C", "zprv", False, "p2wpkh"),
        ("045F1CF6", "vpub", True, "p2wpkh"),
        ("045F18BC", "vprv", True, "p2wpkh"),
        ("049D7CB2", "ypub", False, "p2sh-p2wpkh"),
        ("049D7878", "yprv", False, "p2sh-p2wpkh"),
        ("044A5262", "upub", True, "p2sh-p2wpkh"),
        ("044A4E28", "uprv", True, "p2sh-p2wpkh"),
        ("02AA7ED3", "Zpub", False, "multisig"),
        ("02AA7A99", "Zprv", False, "multisig"),
        ("02575483", "Vpub", True, "multisig"),
        ("02575048", "Vprv", True, "multisig"),
        ("0295B43F", "Ypub", False, "multisig"),
        ("0295B005", "Yprv", False, "multisig"),
        ("024289EF", "Upub", True, "multisig"),
        ("024285B5", "Uprv", True, "multisig"),
    )
}

_B58_ALPHABET: Final = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
_EXTENDED_KEY_BYTES: Final = 78
_EXTENDED_KEY_CHARS: Final = 111  # base58check of 78 bytes with a 0x02/0x04 version
_ACCOUNT_DEPTH: Final = 3
_DEPTH_NAMES: Final = {
    0: "a master (root) key",
    1: "a purpose-level key",
    2: "a coin-level key",
    4: "a chain-level key such as …/0",
    5: "a single address's key",
}


@dataclass(frozen=True, slots=True)
class _Purpose:
    """What one kind of account accepts, and how to explain it."""

    accepted: frozenset[str]
    path_main: str
    path_test: str
    public_hint_main: str
    public_hint_test: str

    def path(self, testnet: bool) -> str:
        return self.path_test if testnet else self.path_main


_BIP84: Final = _Purpose(
    frozenset({"xpub", "tpub", "zpub", "vpub"}), "m/84'/0'/0'", "m/84'/1'/0'", "xpub/zpub", "tpub/vpub"
)
_BIP44_ETH: Final = _Purpose(frozenset({"xpub", "tpub"}), "m/44'/60'/0'", "m/44'/60'/0'", "xpub", "tpub")


@dataclass(frozen=True, slots=True)
class _Node:
    """A public BIP32 node: what child derivation needs, nothing more."""

    chain_code: bytes
    point: bytes  # libsecp256k1's opaque 64-byte secp256k1_pubkey
    sec: bytes  # the 33-byte compressed serialisation (the HMAC input for children)


def _parse_account_key(text: object, purpose: _Purpose) -> tuple[str, _Version, _Node]:
    """Validate an account-level extended public key; return (canonical string, version, node)."""
    if not isinstance(text, str):
        raise AccountKeyError("an extended public key must be given as text")
    # base58 never contains whitespace, so removing all of it only undoes line breaks from copy and paste
    compact = "".join(text.split())
    if not compact:
        raise AccountKeyError("no extended public key given")
    if any(c in compact for c in "[]()/*#,"):
        raise AccountKeyError(
            "this looks like an output descriptor or a key with a derivation path; send only the account's "
            f"extended public key ({purpose.public_hint_main} or {purpose.public_hint_test}…)"
        )
    if len(compact) > 2 * _EXTENDED_KEY_CHARS:  # also bounds the quadratic base58 decoding below
        raise AccountKeyError(
            f"not a valid extended public key: it is {len(compact)} characters long, an extended key has "
            f"{_EXTENDED_KEY_CHARS}"
        )
    bad = next((c for c in compact if c not in _B58_ALPHABET), None)
    if bad is not None:
        raise AccountKeyError(
            f"not a valid extended public key: {bad!r} is not a base58 character (base58 has no 0, O, I or l)"
        )
    raw = bytes(_base58.decode(compact))
    if len(raw) != _EXTENDED_KEY_BYTES + 4:
        raise AccountKeyError(
            f"not a valid extended public key: it is {len(compact)} characters long, an extended key has "
            f"{_EXTENDED_KEY_CHARS} (was it cut off or joined with something else?)"
        )
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise AccountKeyError(
            "not a valid extended public key: bad checksum (a character was mistyped or changed)"
        )

    version_bytes, depth = payload[:4], payload[4]
    child_number = int.from_bytes(payload[9:13], "big")
    chain_code, key_data = payload[13:45], payload[45:78]
    version = _VERSIONS.get(version_bytes)
    if version is None or version.private or key_data[0] == 0:
        if (version is not None and version.private) or key_data[0] == 0:
            shown = version.name if version is not None else compact[:4]
            testnet = version is not None and version.testnet
            hint = purpose.public_hint_test if testnet else purpose.public_hint_main
            raise AccountKeyError(
                f"this is a private key ({shown}…); it can spend the funds, so do not send it anywhere. "
                f"Send the account's public key ({hint}) instead"
            )
        raise AccountKeyError(
            f"not a valid extended public key: unknown key type {compact[:4]!r}; expected one of "
            f"{', '.join(sorted(purpose.accepted))}"
        )
    if version.name not in purpose.accepted:
        raise AccountKeyError(_wrong_kind_message(version, purpose))
    if depth != _ACCOUNT_DEPTH:
        what = _DEPTH_NAMES.get(depth)
        raise AccountKeyError(
            f"expected an account-level key (depth 3, {purpose.path(version.testnet)}), got depth {depth}"
            + (f" ({what})" if what else "")
        )
    if child_number < _HARDENED:
        raise AccountKeyError(
            f"expected an account-level key ({purpose.path(version.testnet)}) whose last step is hardened, "
            f"but this key's last step is /{child_number} (not hardened); export the account key instead"
        )
    try:
        point = bytes(_secp.ec_pubkey_parse(key_data))
    except ValueError:
        raise AccountKeyError(
            "not a valid extended public key: its public key is not a point on the secp256k1 curve"
        ) from None
    canonical = str(_base58.encode(raw))  # base58 of the same bytes: the input without whitespace
    return canonical, version, _Node(chain_code, point, key_data)


def _wrong_kind_message(version: _Version, purpose: _Purpose) -> str:
    hint = purpose.public_hint_test if version.testnet else purpose.public_hint_main
    if purpose is _BIP44_ETH:
        return (
            f"{version.name} is a Bitcoin key format; an Ethereum account key ({purpose.path_main}) is "
            f"serialised as {hint}"
        )
    if version.script == "p2sh-p2wpkh":
        return (
            f"{version.name} is for wrapped SegWit (BIP49, addresses starting with 3/2); this gateway "
            f"pays to native SegWit (BIP84) addresses: send the BIP84 account key ({hint}) instead"
        )
    if version.script == "multisig":
        return f"{version.name} is a multisig key; multisig wallets are not supported, send a {hint} key"
    return f"unsupported key type {version.name}; send the account's public key ({hint})"


def _check_index(index: int) -> int:
    if isinstance(index, bool):
        raise TypeError("an address index must be an int, not a bool")
    index = operator.index(index)
    if not 0 <= index <= MAX_NON_HARDENED_INDEX:
        raise DerivationError(
            f"address index {index} is out of range: non-hardened indexes run from 0 to "
            f"{MAX_NON_HARDENED_INDEX}"
        )
    return index


def _child_point(node: _Node, index: int) -> tuple[bytes, bytes]:
    """BIP32 CKDpub: (child point, child chain code) for a non-hardened ``index`` already checked."""
    digest = hmac.digest(node.chain_code, node.sec + index.to_bytes(4, "big"), "sha512")
    try:
        # fails iff IL >= n or the result is the point at infinity (BIP32: skip such an index)
        point = bytes(_secp.ec_pubkey_add(node.point, digest[:32]))
    except ValueError:
        raise DerivationError(
            f"child {index} is invalid under BIP32 (probability below 2**-127); use the next index"
        ) from None
    return point, digest[32:]


def _child_node(node: _Node, index: int) -> _Node:
    point, chain_code = _child_point(node, index)
    return _Node(chain_code, point, bytes(_secp.ec_pubkey_serialize(point, _secp.EC_COMPRESSED)))


def _hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


# --- Bitcoin ---------------------------------------------------------------------------------------------

_HRP: Final = re.compile(r"[a-z0-9]{1,40}")


def _check_hrp(hrp: str) -> None:
    if not isinstance(hrp, str) or not _HRP.fullmatch(hrp):
        raise AddressError(
            f"{hrp!r} is not a bech32 human-readable part; use lower-case letters and digits such as "
            "'bc', 'tb', 'bcrt' or 'rb'"
        )


class BitcoinAccount:
    """A merchant's BIP84 account (``m/84'/coin'/account'``) known only by its extended public key.

    Accepts xpub, tpub, zpub and vpub serialisations: the version bytes only say how the key was exported,
    the derivation is the same. The network is chosen by the bech32 human-readable part passed to
    :meth:`address`, never by the key's version bytes (the mainnet guard lives with the chain id/genesis).
    """

    __slots__ = ("_external", "_normalised", "_version")

    def __init__(self, extended_public_key: str) -> None:
        self._normalised, self._version, account = _parse_account_key(extended_public_key, _BIP84)
        self._external = _child_node(account, 0)  # m/84'/coin'/account'/0, derived once

    @property
    def normalised(self) -> str:
        """The key as stored: the same serialisation (and version) it came in, without whitespace."""
        return self._normalised

    @property
    def version_name(self) -> str:
        """``xpub``, ``tpub``, ``zpub`` or ``vpub``: how the merchant's wallet exported the key."""
        return self._version.name

    def public_key(self, index: int) -> bytes:
        """Compressed public key (33 bytes) of ``…/0/index``."""
        point, _ = _child_point(self._external, _check_index(index))
        return bytes(_secp.ec_pubkey_serialize(point, _secp.EC_COMPRESSED))

    def script_pubkey(self, index: int) -> bytes:
        """``OP_0 <20-byte key hash>``: what the chain watcher matches outputs against."""
        return b"\x00\x14" + _hash160(self.public_key(index))

    def address(self, index: int, hrp: str) -> str:
        """BIP84 P2WPKH address of ``…/0/index`` for a bech32 prefix (``bc``, ``tb``, ``bcrt``, ``rb``…)."""
        _check_hrp(hrp)
        program = _hash160(self.public_key(index))
        words = [0, *_bech32.convertbits(program, 8, 5)]
        return str(_bech32.bech32_encode(_bech32.Encoding.BECH32, hrp, words))

    def __repr__(self) -> str:
        # the whole key would let anyone list the merchant's addresses; logs get a recognisable stub
        return f"BitcoinAccount({self._normalised[:8]}…{self._normalised[-4:]})"


def btc_script_for_address(address: str, hrp: str) -> bytes:
    """scriptPubKey of a native SegWit address (P2WPKH, P2WSH or P2TR) of the network ``hrp``.

    Used for addresses people type (refund addresses, resident wallets), so each refusal says what is wrong.
    Legacy base58 addresses and future witness versions are refused: we only pay to scripts we understand.
    """
    _check_hrp(hrp)
    if not isinstance(address, str) or not address:
        raise AddressError("no address given")
    text = address.lower()
    sep = text.rfind("1")
    encoding, got_hrp, data = _bech32.bech32_decode(text)
    # legacy addresses are 25-35 base58 characters
    if encoding is None and 25 <= len(address) <= 35 and all(c in _B58_ALPHABET for c in address):
        raise AddressError(
            f"{address!r} looks like a legacy (base58) address; only native SegWit addresses starting "
            f"with '{hrp}1' are supported"
        )
    if address != text and address != address.upper():
        raise AddressError("a bech32 address is either all lower case or all upper case, not mixed")
    if encoding is None:
        if sep < 1:
            raise AddressError(f"{address!r} is not a bech32 address")
        got_hrp = text[:sep]
    if got_hrp != hrp:
        raise AddressError(
            f"this address is for another network (it starts with '{got_hrp}1'); expected one starting "
            f"with '{hrp}1'"
        )
    if encoding is None:
        bad = next((c for c in text[sep + 1 :] if c not in _bech32.CHARSET), None)
        if bad is not None:
            raise AddressError(f"{bad!r} cannot appear in a bech32 address (1, b, i and o are never used)")
        if len(text) > 90:  # the BIP173 limit
            raise AddressError("not a valid address: longer than 90 characters")
        raise AddressError("not a valid address: bad checksum (a character was mistyped or changed)")
    if not data:
        raise AddressError("not a valid address: no witness version")
    version = data[0]
    program = _bech32.convertbits(data[1:], 5, 8, False)
    if version > 16 or program is None:
        raise AddressError("not a valid address: malformed witness program")
    if version == 0 and encoding != _bech32.Encoding.BECH32:
        raise AddressError("not a valid address: SegWit v0 addresses use bech32, not bech32m")
    if version != 0 and encoding != _bech32.Encoding.BECH32M:
        raise AddressError(f"not a valid address: SegWit v{version} addresses use bech32m (BIP350)")
    size = len(program)
    if (version, size) not in ((0, 20), (0, 32), (1, 32)):
        raise AddressError(
            f"unsupported address type (SegWit v{version}, {size}-byte program); use P2WPKH, P2WSH or P2TR"
        )
    opcode = 0x00 if version == 0 else 0x50 + version
    return bytes([opcode, size, *program])


# --- Ethereum --------------------------------------------------------------------------------------------

_ETH_HEX: Final = re.compile(r"0x[0-9a-fA-F]{40}")


@functools.lru_cache(maxsize=16384)
def _eip55(hex40_lower: str) -> str:
    """EIP-55: upper-case each letter whose nibble in keccak(lower-case hex) is >= 8."""
    nibbles = keccak(hex40_lower.encode("ascii")).hex()[:40]
    return "0x" + "".join(c.upper() if n >= "8" else c for c, n in zip(hex40_lower, nibbles, strict=True))


def checksum_eth_address(text: str) -> str:
    """The EIP-55 form of an Ethereum address; refuses a mixed-case address whose checksum is wrong.

    All-lower and all-upper hex carry no checksum and are accepted as they are (EIP-55 rule).
    """
    if not isinstance(text, str) or not _ETH_HEX.fullmatch(text):
        raise AddressError(f"{text!r} is not an Ethereum address: expected 0x followed by 40 hex digits")
    digits = text[2:]
    checksummed = _eip55(digits.lower())
    if digits != digits.lower() and digits != digits.upper() and checksummed != text:
        raise AddressError(f"{text!r} has a bad EIP-55 checksum (a mistyped character?); check the address")
    return checksummed


def is_valid_eth_address(text: object) -> bool:
    """True for ``0x`` + 40 hex digits whose mixed case, if any, is a correct EIP-55 checksum."""
    if not isinstance(text, str):
        return False
    try:
        checksum_eth_address(text)
    except AddressError:
        return False
    return True


class EthereumAccount:
    """A merchant's BIP44 Ethereum account ``m/44'/60'/account'`` known only by its extended public key.

    Ethereum wallets export this key with bitcoin's xpub (or tpub) version bytes; those bytes say nothing
    about which EVM chain is meant, so the mainnet guard is by chain id, elsewhere.
    """

    __slots__ = ("_external", "_normalised")

    def __init__(self, extended_public_key: str) -> None:
        self._normalised, _, account = _parse_account_key(extended_public_key, _BIP44_ETH)
        self._external = _child_node(account, 0)  # m/44'/60'/account'/0, derived once

    @property
    def normalised(self) -> str:
        """The key as stored: the same serialisation it came in, without whitespace."""
        return self._normalised

    def address_bytes(self, index: int) -> bytes:
        """The 20-byte address of ``…/0/index``: last 20 bytes of keccak256(uncompressed public key)."""
        point, _ = _child_point(self._external, _check_index(index))
        uncompressed = bytes(_secp.ec_pubkey_serialize(point, _secp.EC_UNCOMPRESSED))
        return keccak(uncompressed[1:])[-20:]

    def address(self, index: int) -> str:
        """EIP-55 checksummed address of ``m/44'/60'/account'/0/index``."""
        return _eip55(self.address_bytes(index).hex())

    def __repr__(self) -> str:
        return f"EthereumAccount({self._normalised[:8]}…{self._normalised[-4:]})"
