"""The resident wallet's file: a BIP39 mnemonic encrypted with a password, and the wallet's public settings.

One JSON document, versioned (docs/wallet.md shows one)::

    {"format": "cryptocity-wallet", "version": 1, "created_at": "...",
     "kdf": "scrypt", "kdf_params": {"n": 131072, "r": 8, "p": 1, "dklen": 64, "salt": "<32 bytes hex>"},
     "password_check": "<hex>", "cipher": "aes-256-gcm", "nonce": "<12 bytes hex>", "ciphertext": "<hex>",
     "networks": {"bitcoin": {...}, "ethereum": {...}}, "indexes": {"bitcoin_receive": 0}}

Why it is built this way:

- scrypt (memory-hard, in the standard library) turns the password and a random 32-byte salt into 64
  bytes: the first 32 are the AES-256-GCM key, the last 32 key an HMAC-SHA256 ``password_check``. The
  check tells a wrong password (:class:`WrongPassword`) apart from a file that was modified or damaged
  (:class:`KeystoreTampered`): both would otherwise be the same failed GCM tag. It costs a guesser as
  much as trying the cipher does, so it gives nothing away.
- Everything but the nonce and the ciphertext (kdf parameters, networks, address indexes, dates) is the
  cipher's associated data, in a canonical JSON form (sorted keys, no spaces): it stays readable without
  the password, and changing any of it makes decryption fail. Reformatting the file's whitespace does not.
- The default cost is n = 2**17, r = 8, p = 1 (128 MiB, a fraction of a second). Tests and scripts may ask
  for less by passing :class:`ScryptParams` explicitly (the CLI reads ``CRYPTOCITY_WALLET_SCRYPT_N`` and
  says so when it weakens the default); parameters read from a file are bounded, so a crafted file cannot
  make opening it take gigabytes.
- Every save writes a fresh random nonce (a GCM nonce is never reused with a key), to a temporary file
  created with mode 0600 in the same folder, fsynced, then renamed over the old file (or hard-linked into
  place when creating, which refuses to overwrite an existing wallet), and the folder is fsynced. A crash
  leaves the old file or the new one, never half of one.

Errors::

    KeystoreError            base
    ├── KeystoreNotFound     no file at the path
    ├── KeystoreExists       create refused: a file is already there
    ├── KeystoreCorrupt      not a wallet file of a version this code reads (or unreadable settings)
    ├── WrongPassword        the password does not match the file's password check
    └── KeystoreTampered     the password is right but the ciphertext or its metadata was altered
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from embit import bip39

from gateway.clock import isoformat

__all__ = [
    "BITCOIN_NETWORKS",
    "DEFAULT_SCRYPT",
    "FORMAT",
    "MAX_SCRYPT_N",
    "MIN_SCRYPT_N",
    "VERSION",
    "BitcoinSettings",
    "EthereumSettings",
    "KeystoreCorrupt",
    "KeystoreError",
    "KeystoreExists",
    "KeystoreNotFound",
    "KeystoreTampered",
    "Networks",
    "ScryptParams",
    "UnlockedWallet",
    "WrongPassword",
    "create_keystore",
    "default_hrp",
    "new_mnemonic",
    "normalise_mnemonic",
    "open_keystore",
    "read_public",
    "save_keystore",
]

FORMAT: Final = "cryptocity-wallet"
VERSION: Final = 1
CIPHER: Final = "aes-256-gcm"
KDF: Final = "scrypt"
MIN_SCRYPT_N: Final = 2**10  # tests only; the CLI warns whenever a wallet is made weaker than the default
MAX_SCRYPT_N: Final = 2**20
_MAX_SCRYPT_R: Final = 32
_MAX_SCRYPT_P: Final = 16
_MAX_SCRYPT_MEMORY: Final = 1 << 30  # bytes scrypt may use (128 * n * r): 1 GiB at most
_SALT_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_DKLEN: Final = 64  # 32 bytes of AES key, 32 bytes of password-check key
_CHECK_LABEL: Final = b"cryptocity-wallet/password-check/v1"
_MIN_PASSWORD_CHARS: Final = 8
_MAX_FILE_BYTES: Final = 1 << 20
_HARDENED: Final = 0x80000000

# The test networks a resident wallet may be for; mainnet is not among them, on purpose.
BITCOIN_NETWORKS: Final = ("regtest", "testnet", "testnet4", "signet")
_HRPS: Final = {"regtest": ("rb", "bcrt"), "testnet": ("tb",), "testnet4": ("tb",), "signet": ("tb",)}
MAINNET_CHAIN_IDS: Final = frozenset({1})


class KeystoreError(Exception):
    """The wallet file cannot be created, read or unlocked (the message says why, never a secret)."""


class KeystoreNotFound(KeystoreError):
    pass


class KeystoreExists(KeystoreError):
    pass


class KeystoreCorrupt(KeystoreError):
    pass


class WrongPassword(KeystoreError):
    pass


class KeystoreTampered(KeystoreError):
    pass


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost: ``n`` (a power of two), block size ``r`` and parallelism ``p``."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        for name in ("n", "r", "p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise KeystoreError(f"scrypt {name} must be a whole number, not {value!r}")
        if not MIN_SCRYPT_N <= self.n <= MAX_SCRYPT_N or self.n & (self.n - 1):
            raise KeystoreError(f"scrypt n must be a power of two from 2**10 to 2**20, got {self.n}")
        if not 1 <= self.r <= _MAX_SCRYPT_R or not 1 <= self.p <= _MAX_SCRYPT_P:
            raise KeystoreError(
                f"scrypt r must be 1 to {_MAX_SCRYPT_R} and p 1 to {_MAX_SCRYPT_P}, got r={self.r} p={self.p}"
            )
        if self.memory_bytes > _MAX_SCRYPT_MEMORY:
            raise KeystoreError(f"scrypt n={self.n} r={self.r} would need more than 1 GiB of memory")

    @property
    def memory_bytes(self) -> int:
        return 128 * self.n * self.r

    def weaker_than(self, other: ScryptParams) -> bool:
        return self.n * self.r * self.p < other.n * other.r * other.p


DEFAULT_SCRYPT: Final = ScryptParams()


def default_hrp(network: str) -> str:
    """The bech32 prefix of a test network (``rb``: bcoin's regtest; Bitcoin Core's is ``bcrt``)."""
    _check_network(network)
    return _HRPS[network][0]


def _check_network(network: str) -> None:
    if network == "mainnet" or network == "main":
        raise KeystoreError(
            "this wallet is for the pilot's test networks only: Bitcoin mainnet is refused, so that no real "
            "money is ever moved by accident"
        )
    if network not in BITCOIN_NETWORKS:
        raise KeystoreError(f"bitcoin network must be one of {', '.join(BITCOIN_NETWORKS)}, not {network!r}")


@dataclass(frozen=True, slots=True)
class BitcoinSettings:
    """Which Bitcoin network the wallet is for (BIP84 ``m/84'/1'/account'``: coin type 1 on every test
    network), its address prefix, and the height its first scan starts from."""

    network: str = "regtest"
    hrp: str = "rb"
    birth_height: int = 0
    account: int = 0

    def __post_init__(self) -> None:
        _check_network(self.network)
        if self.hrp not in _HRPS[self.network]:
            allowed = " or ".join(_HRPS[self.network])
            raise KeystoreError(f"bitcoin {self.network} addresses start with {allowed}, not {self.hrp!r}")
        _check_count(self.birth_height, "bitcoin birth height")
        _check_count(self.account, "bitcoin account", below=_HARDENED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "hrp": self.hrp,
            "birth_height": self.birth_height,
            "account": self.account,
        }


@dataclass(frozen=True, slots=True)
class EthereumSettings:
    """The EVM chain the wallet pays on (checked against the node's ``eth_chainId``) and its USDT token.

    The account is BIP44 ``m/44'/60'/0'/0/0``, the address anvil, MetaMask and the gateway derive.
    """

    chain_id: int = 31337
    usdt_token: str | None = None

    def __post_init__(self) -> None:
        _check_count(self.chain_id, "ethereum chain id")
        if self.chain_id == 0:
            raise KeystoreError("ethereum chain id must be positive")
        if self.chain_id in MAINNET_CHAIN_IDS:
            raise KeystoreError(
                f"chain id {self.chain_id} is Ethereum mainnet: this wallet is for test chains only, so that "
                "no real money is ever moved by accident"
            )
        if self.usdt_token is not None:
            body = self.usdt_token.lower().removeprefix("0x")
            if len(body) != 40 or any(c not in "0123456789abcdef" for c in body):
                raise KeystoreError(f"USDT token {self.usdt_token!r} is not a 0x address of 40 hex digits")

    def as_dict(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "usdt_token": self.usdt_token}


@dataclass(frozen=True, slots=True)
class Networks:
    bitcoin: BitcoinSettings = field(default_factory=BitcoinSettings)
    ethereum: EthereumSettings = field(default_factory=EthereumSettings)

    def as_dict(self) -> dict[str, Any]:
        return {"bitcoin": self.bitcoin.as_dict(), "ethereum": self.ethereum.as_dict()}


def _check_count(value: object, what: str, *, below: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeystoreError(f"{what} must be a whole number >= 0, not {value!r}")
    if below is not None and value >= below:
        raise KeystoreError(f"{what} must be below {below}, got {value}")


@dataclass(frozen=True, slots=True)
class UnlockedWallet:
    """A keystore opened with its password. ``repr`` never shows the mnemonic or the key."""

    path: Path
    mnemonic: str = field(repr=False)
    networks: Networks
    receive_index: int  # the BIP84 receive index ``wallet address`` shows (…/0/receive_index)
    created_at: str
    scrypt: ScryptParams
    _salt: bytes = field(repr=False)
    _key: bytes = field(repr=False)  # the AES key derived from the password (kept to save without asking)
    _check: str = field(repr=False)

    def with_receive_index(self, index: int) -> UnlockedWallet:
        _check_count(index, "receive index", below=_HARDENED)
        return replace(self, receive_index=index)


def normalise_mnemonic(text: str) -> str:
    """The words of a BIP39 mnemonic, single-spaced and lower case; KeystoreError unless the checksum holds."""
    words = " ".join(unicodedata.normalize("NFKD", text).lower().split())
    if len(words.split()) not in (12, 15, 18, 21, 24) or not bip39.mnemonic_is_valid(words):
        raise KeystoreError("not a valid BIP39 mnemonic (12 to 24 English words with a matching checksum)")
    return words


def new_mnemonic(words: int = 12) -> str:
    """A fresh BIP39 mnemonic of 12 (128 bits) or 24 (256 bits) words from the OS's random source."""
    if words not in (12, 24):
        raise KeystoreError(f"a new mnemonic has 12 or 24 words, not {words}")
    return str(bip39.mnemonic_from_bytes(secrets.token_bytes(16 if words == 12 else 32)))


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str) or len(password) < _MIN_PASSWORD_CHARS:
        raise KeystoreError(f"a wallet password needs at least {_MIN_PASSWORD_CHARS} characters")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _derive(password: str, salt: bytes, params: ScryptParams) -> tuple[bytes, str]:
    """(AES key, password check hex) for ``password``."""
    derived = hashlib.scrypt(
        _password_bytes(password),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.memory_bytes + (16 << 20),
        dklen=_DKLEN,
    )
    check = hmac.new(derived[32:], _CHECK_LABEL, hashlib.sha256).hexdigest()
    return derived[:32], check


def _public_document(wallet: UnlockedWallet) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": wallet.created_at,
        "kdf": KDF,
        "kdf_params": {
            "n": wallet.scrypt.n,
            "r": wallet.scrypt.r,
            "p": wallet.scrypt.p,
            "dklen": _DKLEN,
            "salt": wallet._salt.hex(),
        },
        "password_check": wallet._check,
        "cipher": CIPHER,
        "networks": wallet.networks.as_dict(),
        "indexes": {"bitcoin_receive": wallet.receive_index},
    }


def _associated_data(public: dict[str, Any]) -> bytes:
    """The canonical bytes the cipher authenticates: every field but the nonce and the ciphertext."""
    fields = {k: v for k, v in public.items() if k not in ("nonce", "ciphertext")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _encrypt(wallet: UnlockedWallet) -> bytes:
    public = _public_document(wallet)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    secret = json.dumps({"mnemonic": wallet.mnemonic}).encode("utf-8")
    ciphertext = AESGCM(wallet._key).encrypt(nonce, secret, _associated_data(public))
    document = {**public, "nonce": nonce.hex(), "ciphertext": ciphertext.hex()}
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def create_keystore(
    path: Path,
    mnemonic: str,
    password: str,
    *,
    created_at: datetime,
    networks: Networks | None = None,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> UnlockedWallet:
    """Write a new wallet file at ``path`` (mode 0600); KeystoreExists if there is one already."""
    words = normalise_mnemonic(mnemonic)
    salt = secrets.token_bytes(_SALT_BYTES)
    key, check = _derive(password, salt, scrypt)
    wallet = UnlockedWallet(
        Path(path), words, networks or Networks(), 0, isoformat(created_at), scrypt, salt, key, check
    )
    _write_new(wallet.path, _encrypt(wallet))
    return wallet


def save_keystore(wallet: UnlockedWallet) -> None:
    """Write ``wallet`` back over its file (new nonce, same password), atomically."""
    _replace(wallet.path, _encrypt(wallet))


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeystoreNotFound(
            f"no wallet file at {path}; create one with `cryptocity wallet new` or pass --wallet PATH"
        ) from None
    except OSError as exc:
        raise KeystoreError(f"cannot read the wallet file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise KeystoreCorrupt(f"{path} is too large to be a wallet file")
    try:
        document = json.loads(data)
    except ValueError:
        raise KeystoreCorrupt(f"{path} is not a wallet file (not JSON): damaged or the wrong file") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeystoreCorrupt(f"{path} is not a CryptoCity wallet file")
    if document.get("version") != VERSION:
        raise KeystoreCorrupt(
            f"{path} is a wallet file of version {document.get('version')!r}; this program reads version {VERSION}"
        )
    return document


def _field(document: dict[str, Any], *keys: str) -> Any:
    value: Any = document
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise KeystoreCorrupt(f"the wallet file has no {'.'.join(keys)}: damaged or edited")
        value = value[key]
    return value


def _hex_field(document: dict[str, Any], *keys: str) -> bytes:
    value = _field(document, *keys)
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise KeystoreCorrupt(f"the wallet file's {'.'.join(keys)} is not hex: damaged or edited") from None


def _public_settings(document: dict[str, Any]) -> tuple[Networks, int, ScryptParams]:
    try:
        btc = _field(document, "networks", "bitcoin")
        eth = _field(document, "networks", "ethereum")
        networks = Networks(
            BitcoinSettings(btc["network"], btc["hrp"], btc["birth_height"], btc["account"]),
            EthereumSettings(eth["chain_id"], eth["usdt_token"]),
        )
        index = _field(document, "indexes", "bitcoin_receive")
        _check_count(index, "indexes.bitcoin_receive", below=_HARDENED)
        params = _field(document, "kdf_params")
        scrypt = ScryptParams(params["n"], params["r"], params["p"])
    except (KeyError, TypeError) as exc:
        raise KeystoreCorrupt(
            f"the wallet file's settings are incomplete ({exc}): damaged or edited"
        ) from None
    except KeystoreCorrupt:
        raise
    except KeystoreError as exc:
        raise KeystoreCorrupt(f"the wallet file's settings are invalid: {exc}") from None
    return networks, index, scrypt


def read_public(path: Path) -> tuple[Networks, int]:
    """The wallet's networks and receive index, read without the password (and not yet authenticated)."""
    networks, index, _ = _public_settings(_load(path))
    return networks, index


def open_keystore(path: Path, password: str) -> UnlockedWallet:
    """Decrypt the wallet at ``path``: WrongPassword, KeystoreTampered or KeystoreCorrupt if it cannot."""
    document = _load(path)
    if _field(document, "kdf") != KDF or _field(document, "cipher") != CIPHER:
        raise KeystoreCorrupt(
            f"the wallet file uses {document.get('kdf')!r} and {document.get('cipher')!r}; this program knows "
            f"{KDF} with {CIPHER}"
        )
    if _field(document, "kdf_params", "dklen") != _DKLEN:
        raise KeystoreCorrupt("the wallet file's kdf_params.dklen is not 64: damaged or edited")
    networks, index, scrypt = _public_settings(document)
    salt = _hex_field(document, "kdf_params", "salt")
    nonce = _hex_field(document, "nonce")
    ciphertext = _hex_field(document, "ciphertext")
    stored_check = _field(document, "password_check")
    if len(salt) != _SALT_BYTES or len(nonce) != _NONCE_BYTES or not isinstance(stored_check, str):
        raise KeystoreCorrupt("the wallet file's salt, nonce or password check has the wrong size")
    key, check = _derive(password, salt, scrypt)
    if not hmac.compare_digest(check, stored_check):
        raise WrongPassword(f"wrong password for the wallet {path}")
    try:
        secret = AESGCM(key).decrypt(nonce, ciphertext, _associated_data(document))
    except InvalidTag:
        raise KeystoreTampered(
            f"the wallet file {path} failed authentication: the password is right, but its encrypted part "
            "or its settings were changed or damaged since it was written; restore it from a backup or "
            "from the recovery words"
        ) from None
    try:
        mnemonic = normalise_mnemonic(json.loads(secret)["mnemonic"])
    except (ValueError, KeyError, TypeError, KeystoreError):
        raise KeystoreCorrupt("the wallet file decrypts to something that is not a mnemonic") from None
    created_at = _field(document, "created_at")
    return UnlockedWallet(
        Path(path), mnemonic, networks, index, str(created_at), scrypt, salt, key, stored_check
    )


# -- atomic files ------------------------------------------------------------------------------------------


def _write_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path``, flushed to disk; its name."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temporary


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    try:
        temporary = _write_temporary(path, data)
    except OSError as exc:
        raise KeystoreError(f"cannot write the wallet file {path}: {exc.strerror or exc}") from None
    try:
        os.link(temporary, path)  # fails if a file is there: a wallet is never overwritten by `new`
    except FileExistsError:
        raise KeystoreExists(
            f"{path} already exists; a wallet is never overwritten (choose another --wallet PATH)"
        ) from None
    except OSError as exc:
        raise KeystoreError(f"cannot write the wallet file {path}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _replace(path: Path, data: bytes) -> None:
    try:
        temporary = _write_temporary(path, data)
        try:
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)
    except OSError as exc:
        raise KeystoreError(f"cannot write the wallet file {path}: {exc.strerror or exc}") from None
