"""``cryptocity wallet …``: a resident's wallet on the command line (docs/wallet.md).

Commands: ``new`` (create the encrypted wallet file, show the recovery words once), ``address`` (the
receiving addresses), ``balance``, ``history``, ``pay <uri-or-qr.png>`` and ``register --resident <id>``
(record the wallet's scripts and address with the sandbox's registry).

Keys come from the password-encrypted wallet file (:mod:`wallets.keystore`; ``--wallet PATH``, default
``~/.cryptocity/wallet.json``), unlocked with a password typed at a prompt, read from ``--password-file`` or
taken from ``$CRYPTOCITY_WALLET_PASSWORD``. ``pay`` also still takes a plain mnemonic
(``--mnemonic-file`` or ``$CRYPTOCITY_WALLET_MNEMONIC``) for the devnet demo's throw-away residents.

Payment requests are ``bitcoin:`` (BIP21) or ``ethereum:`` (EIP-681) URIs, given as text or as a QR code
image (decoded with zxing-cpp, as a phone's camera would). Before paying, the command shows what will be
paid, in crypto and (when ``--gateway`` gives rates) in tenge, and asks y/N unless ``--yes``. Bitcoin is
scanned from the node's blocks by :class:`wallets.bitcoin.BitcoinWallet` and its mempool adopted, so two
payments in a row never spend the same coin; Ethereum is paid with :class:`wallets.ethereum.EthereumWallet`
after checking the node's chain id. Mainnet is refused on both chains.

``pay`` prints only the transaction id on stdout, so scripts can capture it. Exit status: 0 done; 1 not
done (the node refused or is unreachable, funds too low, declined at the prompt, the resident unknown); 2
bad input (wrong password, a damaged or altered wallet file, an unreadable URI or image, wrong chain or
network). The mnemonic is printed by ``wallet new`` only, once, and never appears in an error or a log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin import CHAIN_NAMES, MAINNET_GENESIS
from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcError, RpcUnavailable
from gateway.clock import SystemClock
from gateway.money import format_minor_units
from gateway.payment_uri import (
    Bip21Request,
    Eip681Native,
    Eip681TokenTransfer,
    PaymentUriError,
    parse_payment_uri,
)
from wallets import bitcoin as btc
from wallets import ethereum as eth
from wallets import keystore as ks
from wallets.ethereum_history import MAX_NATIVE_SCAN_BLOCKS, EthereumTransfer, ethereum_history
from wallets.qr import QrReadError, read_qr_text
from wallets.tenge import GATEWAY_KEY_ENV, RatesUnavailable, gateway_rates, kzt_text

__all__ = [
    "MNEMONIC_ENV",
    "PASSWORD_ENV",
    "RPC_PASSWORD_ENV",
    "SCRYPT_N_ENV",
    "WALLET_FILE_ENV",
    "RegistrationRefused",
    "RegistrationReport",
    "WalletRegistrar",
    "add_wallet_commands",
    "default_wallet_path",
    "run_wallet_command",
]

MNEMONIC_ENV = "CRYPTOCITY_WALLET_MNEMONIC"
PASSWORD_ENV = "CRYPTOCITY_WALLET_PASSWORD"  # noqa: S105 - the variable name, not a password
RPC_PASSWORD_ENV = "CRYPTOCITY_WALLET_RPC_PASSWORD"  # noqa: S105 - the variable name, not a password
SCRYPT_N_ENV = "CRYPTOCITY_WALLET_SCRYPT_N"
WALLET_FILE_ENV = "CRYPTOCITY_WALLET_FILE"
DEFAULT_HRP = "rb"  # bcoin regtest
DEFAULT_REGISTER_COUNT = 20
_RPC_USER = "cryptocity"  # bcoin ignores the user name; Bitcoin Core's rpcauth would need the real one
EXIT_OK, EXIT_NOT_DONE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_PAID, EXIT_NOT_PAID = EXIT_OK, EXIT_NOT_DONE
_BTC_DECIMALS = 8
_ETH_PATH = "m/44'/60'/0'/0/0"

Request = Bip21Request | Eip681Native | Eip681TokenTransfer


class _Usage(Exception):
    """Bad input: one line on stderr, exit status 2."""


class _NotPaid(Exception):
    """The command could not do what was asked: one line on stderr, exit status 1."""


# -- registering with the sandbox (the composition root provides the store) ----------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationReport:
    added: int
    already: int


class RegistrationRefused(Exception):
    """The sandbox did not register the wallet; ``exit_code`` 1 (e.g. unknown resident) or 2 (bad input)."""

    def __init__(self, message: str, exit_code: int = EXIT_NOT_DONE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class WalletRegistrar(Protocol):
    """Registers ``(chain, owner, label)`` wallets with a resident of the sandbox registry, idempotently.

    ``sandbox/cli.py`` provides it (the wallet package does not import the sandbox): it raises
    :class:`RegistrationRefused` when the resident is unknown or a wallet belongs to someone else.
    """

    async def __call__(
        self, resident_id: str, wallets: Sequence[tuple[str, str, str]]
    ) -> RegistrationReport: ...


# -- the parser ----------------------------------------------------------------------------------------------


def default_wallet_path() -> Path:
    """``$CRYPTOCITY_WALLET_FILE``, else ``$XDG_DATA_HOME/cryptocity/wallet.json`` when XDG_DATA_HOME is
    set, else ``~/.cryptocity/wallet.json``."""
    explicit = os.environ.get(WALLET_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "cryptocity" / "wallet.json"
    return Path.home() / ".cryptocity" / "wallet.json"


def _common_parsers() -> dict[str, argparse.ArgumentParser]:
    keyfile = argparse.ArgumentParser(add_help=False)
    keyfile.add_argument(
        "--wallet",
        type=Path,
        metavar="PATH",
        help=f"the wallet file (default ${WALLET_FILE_ENV} or ~/.cryptocity/wallet.json)",
    )
    keyfile.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help=f"read the wallet password from the first line of FILE (default ${PASSWORD_ENV}, else a prompt)",
    )
    bitcoin = argparse.ArgumentParser(add_help=False)
    bitcoin.add_argument("--btc-rpc", metavar="URL", help="bitcoin node JSON-RPC URL (bcoin or Bitcoin Core)")
    bitcoin.add_argument(
        "--btc-rpc-password",
        "--rpc-password",
        dest="rpc_password",
        metavar="KEY",
        help=f"bitcoin RPC password (bcoin's API key); default ${RPC_PASSWORD_ENV}",
    )
    bitcoin.add_argument(
        "--from-height",
        type=int,
        help="bitcoin: scan the chain from this height (default: the wallet's birth height, 0)",
    )
    ethereum = argparse.ArgumentParser(add_help=False)
    ethereum.add_argument("--eth-rpc", metavar="URL", help="Ethereum JSON-RPC URL")
    ethereum.add_argument(
        "--usdt-token", metavar="ADDRESS", help="the USDT token contract (default: the one the wallet names)"
    )
    rates = argparse.ArgumentParser(add_help=False)
    rates.add_argument(
        "--gateway", metavar="URL", help="a CryptoCity gateway whose GET /v1/rates gives tenge values"
    )
    rates.add_argument(
        "--gateway-key",
        metavar="KEY",
        help=f"API key for the gateway's /v1/rates (default ${GATEWAY_KEY_ENV})",
    )
    return {"keyfile": keyfile, "bitcoin": bitcoin, "ethereum": ethereum, "rates": rates}


def add_wallet_commands(sub: Any) -> None:
    """Add ``wallet new|address|balance|history|pay|register`` to ``cryptocity`` (``sub``: argparse's
    subparsers action)."""
    common = _common_parsers()
    keyfile, bitcoin, ethereum, rates = (common[k] for k in ("keyfile", "bitcoin", "ethereum", "rates"))
    wallet = sub.add_parser(
        "wallet", help="a resident's wallet: create, show addresses and balance, pay, register"
    )
    wsub = wallet.add_subparsers(dest="wallet_action", required=True)

    new = wsub.add_parser(
        "new",
        parents=[keyfile],
        help="create an encrypted wallet file; shows the recovery words once",
        description="Create a BIP39 wallet (BIP84 bitcoin, BIP44 ethereum) in a password-encrypted file. "
        "The recovery words are printed once, at creation; write them down.",
    )
    new.add_argument("--words", type=int, choices=(12, 24), default=12, help="mnemonic length (12)")
    new.add_argument(
        "--from-mnemonic-file",
        type=Path,
        metavar="FILE",
        help="restore from the recovery words in FILE instead of making new ones",
    )
    new.add_argument(
        "--btc-network", choices=ks.BITCOIN_NETWORKS, default="regtest", help="bitcoin network (regtest)"
    )
    new.add_argument("--btc-hrp", help="bech32 prefix (default rb on regtest: bcoin; bcrt for Bitcoin Core)")
    new.add_argument(
        "--birth-height", type=int, default=0, help="bitcoin: first block that can hold its coins (0)"
    )
    new.add_argument("--eth-chain-id", type=int, default=31337, help="ethereum chain id (31337: anvil)")
    new.add_argument("--usdt-token", metavar="ADDRESS", help="the USDT token contract on that chain")

    address = wsub.add_parser(
        "address", parents=[keyfile], help="show the receiving addresses (or a fresh bitcoin one)"
    )
    address.add_argument("--asset", choices=("BTC", "ETH", "USDT"), help="print only this asset's address")
    address.add_argument(
        "--new", action="store_true", help="bitcoin: move on to the next unused receive address"
    )

    balance = wsub.add_parser(
        "balance",
        parents=[keyfile, bitcoin, ethereum, rates],
        help="the wallet's BTC, ETH and USDT balances, from the nodes",
    )
    balance.add_argument("--json", action="store_true", help="print JSON (amounts in base units, as text)")

    history = wsub.add_parser(
        "history", parents=[keyfile, bitcoin, ethereum], help="the wallet's transactions, from the nodes"
    )
    history.add_argument(
        "--limit", type=int, default=50, help="show the newest N of each chain (0: all; default 50)"
    )
    history.add_argument(
        "--eth-from-block", type=int, default=0, help="ethereum: look from this block on (0)"
    )
    history.add_argument("--json", action="store_true", help="print JSON")

    pay = wsub.add_parser(
        "pay",
        parents=[keyfile, bitcoin, ethereum, rates],
        help="pay a bitcoin: or ethereum: request, given as a URI or a QR code image",
        description="Pay a BIP21 (bitcoin:) or EIP-681 (ethereum:) payment request. Prints the transaction "
        "id on stdout. Exit status 0 paid, 1 not paid (node refused, funds too low, declined), 2 bad input.",
    )
    pay.add_argument("request", metavar="URI-OR-PNG", help="the payment URI, or a QR code image file of it")
    pay.add_argument(
        "--rpc", metavar="URL", help="the node of the request's chain (or use --btc-rpc / --eth-rpc)"
    )
    pay.add_argument(
        "--mnemonic-file",
        type=Path,
        metavar="FILE",
        help=f"pay from a plain BIP39 mnemonic file instead of the wallet file (or ${MNEMONIC_ENV})",
    )
    pay.add_argument("--index", type=int, default=0, help="ethereum: address index of m/44'/60'/0'/0/i (0)")
    pay.add_argument("--hrp", help=f"bitcoin: bech32 prefix (the wallet's; {DEFAULT_HRP} with a mnemonic)")
    pay.add_argument("--fee-rate", type=int, default=2, help="bitcoin: fee rate in sat/vB (2)")
    pay.add_argument("--no-wait", action="store_true", help="ethereum: do not wait for the receipt")
    pay.add_argument("--timeout", type=float, default=120.0, help="ethereum: seconds to wait for the receipt")
    pay.add_argument("--yes", "-y", action="store_true", help="pay without asking for confirmation")

    register = wsub.add_parser(
        "register",
        parents=[keyfile],
        help="register the wallet's scripts and address with a resident of the sandbox",
        description="Record the wallet's bitcoin receive and change scripts (the first N of each) and its "
        "ethereum address with the sandbox's resident registry, so its payments count as the resident's. "
        "Running it again adds only what is missing.",
    )
    register.add_argument("--resident", required=True, metavar="ID", help="the resident's id (res_…)")
    register.add_argument(
        "--count",
        type=int,
        default=DEFAULT_REGISTER_COUNT,
        help=f"bitcoin scripts per chain, receive and change ({DEFAULT_REGISTER_COUNT})",
    )


# -- running -------------------------------------------------------------------------------------------------


async def run_wallet_command(
    args: argparse.Namespace,
    *,
    registrar: WalletRegistrar | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> int:
    """Run ``wallet <action>``; the exit status. ``confirm`` asks y/N (default: the terminal)."""
    ask = confirm or _ask_terminal
    try:
        action = args.wallet_action
        if action == "new":
            return _new(args)
        if action == "address":
            return _address(args)
        if action == "balance":
            return await _balance(args)
        if action == "history":
            return await _history(args)
        if action == "pay":
            txid = await _pay(args, ask)
            print(txid, flush=True)
            return EXIT_OK
        if action == "register":
            if registrar is None:
                raise _Usage("registering needs the sandbox: run it as `cryptocity wallet register`")
            return await _register(args, registrar)
        raise _Usage(f"unknown wallet action {action!r}")
    except (_Usage, ks.KeystoreError) as exc:
        print(f"wallet: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _NotPaid as exc:
        verb = "not paid" if args.wallet_action == "pay" else "failed"
        print(f"wallet: {verb}: {exc}", file=sys.stderr)
        return EXIT_NOT_DONE
    except RegistrationRefused as exc:
        print(f"wallet: not registered: {exc}", file=sys.stderr)
        return exc.exit_code


def _ask_terminal(question: str) -> bool:
    """Ask on stderr and read y/N from stdin (anything but y or yes, or end of input, is no)."""
    print(question + " [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _warn(text: str) -> None:
    print(f"wallet: {text}", file=sys.stderr, flush=True)


# -- secrets -------------------------------------------------------------------------------------------------


def _wallet_path(args: argparse.Namespace) -> Path:
    return Path(args.wallet).expanduser() if args.wallet is not None else default_wallet_path()


def _password(args: argparse.Namespace, *, new: bool = False) -> str:
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _Usage(f"cannot read the password file {args.password_file}: {reason}") from None
        password = text.splitlines()[0] if text else ""
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass("wallet password: ", stream=sys.stderr)
        if new and getpass.getpass("the same password again: ", stream=sys.stderr) != password:
            raise _Usage("the two passwords differ; nothing was written")
    else:
        raise _Usage(
            f"no wallet password: pass --password-file FILE or set {PASSWORD_ENV} (no terminal to ask)"
        )
    if not password:
        raise _Usage("the wallet password is empty")
    return password


def _unlock(args: argparse.Namespace) -> ks.UnlockedWallet:
    path = _wallet_path(args)
    if not path.exists():
        raise ks.KeystoreNotFound(
            f"no wallet file at {path}; create one with `cryptocity wallet new` or pass --wallet PATH"
        )
    with_mode = path.stat().st_mode
    if stat.S_IMODE(with_mode) & 0o077:
        _warn(f"warning: {path} can be read by other users (mode {stat.S_IMODE(with_mode):o}); chmod 600 it")
    return ks.open_keystore(path, _password(args))


def _scrypt_from_env() -> ks.ScryptParams:
    raw = os.environ.get(SCRYPT_N_ENV)
    if not raw:
        return ks.DEFAULT_SCRYPT
    try:
        params = ks.ScryptParams(n=int(raw))
    except ValueError:
        raise _Usage(f"{SCRYPT_N_ENV}={raw!r} is not a whole number") from None
    if params.weaker_than(ks.DEFAULT_SCRYPT):
        _warn(
            f"warning: {SCRYPT_N_ENV} sets scrypt n={params.n}, weaker than the default n={ks.DEFAULT_SCRYPT.n}: "
            "a stolen file is easier to crack; use it for tests only"
        )
    return params


@dataclass(frozen=True, slots=True)
class _Keys:
    """The keys a command pays or reads with: the wallet file's, or a plain mnemonic's (pay only)."""

    mnemonic: str
    unlocked: ks.UnlockedWallet | None

    @property
    def networks(self) -> ks.Networks | None:
        return None if self.unlocked is None else self.unlocked.networks


def _keys(args: argparse.Namespace) -> _Keys:
    mnemonic_file = getattr(args, "mnemonic_file", None)
    if mnemonic_file is not None and args.wallet is not None:
        raise _Usage("pass either --wallet or --mnemonic-file, not both")
    if mnemonic_file is not None:
        try:
            words = Path(mnemonic_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _Usage(f"cannot read the mnemonic file {mnemonic_file}: {reason}") from None
        return _Keys(_plain_mnemonic(words), None)
    if args.wallet is None and hasattr(args, "mnemonic_file") and os.environ.get(MNEMONIC_ENV, "").strip():
        return _Keys(_plain_mnemonic(os.environ[MNEMONIC_ENV]), None)
    unlocked = _unlock(args)
    return _Keys(unlocked.mnemonic, unlocked)


def _plain_mnemonic(words: str) -> str:
    if not words.strip():
        raise _Usage(f"no mnemonic: pass --mnemonic-file FILE or set {MNEMONIC_ENV}")
    return " ".join(words.split())


# -- new and address -----------------------------------------------------------------------------------------


def _new(args: argparse.Namespace) -> int:
    path = _wallet_path(args)
    if path.exists():
        raise ks.KeystoreExists(
            f"{path} already exists; a wallet is never overwritten (choose another --wallet)"
        )
    restoring = args.from_mnemonic_file is not None
    if restoring:
        try:
            mnemonic = ks.normalise_mnemonic(Path(args.from_mnemonic_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _Usage(f"cannot read the mnemonic file {args.from_mnemonic_file}: {reason}") from None
    else:
        mnemonic = ks.new_mnemonic(args.words)
    network = args.btc_network
    networks = ks.Networks(
        ks.BitcoinSettings(network, args.btc_hrp or ks.default_hrp(network), args.birth_height),
        ks.EthereumSettings(args.eth_chain_id, _eth_address_or_none(args.usdt_token, "--usdt-token")),
    )
    scrypt = _scrypt_from_env()
    password = _password(args, new=True)
    unlocked = ks.create_keystore(
        path, mnemonic, password, created_at=SystemClock().now(), networks=networks, scrypt=scrypt
    )
    bitcoin = btc.BitcoinWallet.from_mnemonic(mnemonic, networks.bitcoin.hrp, gap=1)
    ether = eth.EthereumWallet.from_mnemonic(mnemonic)
    if not restoring:
        _warn(
            "the recovery words below are shown only this once. Write them down on paper and keep them "
            "safe: anyone who has them can spend this wallet, and without them a lost password or file "
            "cannot be recovered. Never type them into a website or a message."
        )
        print(f"recovery words: {mnemonic}")
    print(f"wallet file: {path} (mode 600; scrypt n={scrypt.n} r={scrypt.r} p={scrypt.p}, {ks.CIPHER})")
    print(f"BTC {bitcoin.address(unlocked.receive_index)}  bitcoin {network}, m/84'/1'/0'/0/0")
    print(f"ETH {ether.address}  chain id {networks.ethereum.chain_id}, {_ETH_PATH}")
    return EXIT_OK


def _eth_address_or_none(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    try:
        return eth._address(text, what)
    except eth.EthereumWalletError as exc:
        raise _Usage(str(exc)) from None


def _address(args: argparse.Namespace) -> int:
    unlocked = _unlock(args)
    networks = unlocked.networks
    if args.new:
        if args.asset in ("ETH", "USDT"):
            raise _Usage(f"{args.asset} has one address per wallet ({_ETH_PATH}); --new is for BTC")
        unlocked = unlocked.with_receive_index(unlocked.receive_index + 1)
        ks.save_keystore(unlocked)
    index = unlocked.receive_index
    account = networks.bitcoin.account
    bitcoin = btc.BitcoinWallet.from_mnemonic(unlocked.mnemonic, networks.bitcoin.hrp, account=account, gap=1)
    btc_address = bitcoin.address(index)
    eth_address = eth.EthereumWallet.from_mnemonic(unlocked.mnemonic).address
    if args.asset == "BTC" or (args.new and args.asset is None):
        print(btc_address)
    elif args.asset in ("ETH", "USDT"):
        print(eth_address)
    else:
        print(f"BTC  {btc_address}  bitcoin {networks.bitcoin.network}, m/84'/1'/{account}'/0/{index}")
        print(f"ETH  {eth_address}  chain id {networks.ethereum.chain_id}, {_ETH_PATH}")
        token = networks.ethereum.usdt_token
        print(f"USDT {eth_address}  the ETH address" + (f"; token {token}" if token else ""))
    return EXIT_OK


# -- nodes ---------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _bitcoin_rpc(url: str, args: argparse.Namespace) -> AsyncIterator[BitcoinRpc]:
    password = args.rpc_password if args.rpc_password is not None else os.environ.get(RPC_PASSWORD_ENV, "")
    async with aiohttp.ClientSession() as session:
        yield BitcoinRpc(session, RpcEndpoint(url, _RPC_USER, password), retries=1)


async def _check_bitcoin_node(rpc: BitcoinRpc, network: str | None) -> None:
    """Refuse a mainnet node, and a node on another network than the wallet's."""
    chain = str((await rpc.blockchain_info()).get("chain", ""))
    genesis = await rpc.block_hash(0)
    if chain == "main" or genesis == MAINNET_GENESIS:
        raise _Usage("the bitcoin node is on mainnet; this wallet never pays or reads there")
    if network is not None and chain != CHAIN_NAMES[network]:
        raise _Usage(f"the bitcoin node is on {chain!r}, but the wallet is for {network}")


async def _scanned_bitcoin(
    keys: _Keys, args: argparse.Namespace, rpc: BitcoinRpc, hrp: str
) -> tuple[btc.BitcoinWallet, list[btc.HistoryEntry]]:
    """The wallet restored from the keys and brought up to the node's tip and mempool."""
    settings = keys.networks.bitcoin if keys.networks is not None else None
    try:
        wallet = btc.BitcoinWallet.from_mnemonic(
            keys.mnemonic, hrp, account=settings.account if settings is not None else 0
        )
    except btc.WalletError as exc:
        raise _Usage(str(exc)) from None
    if keys.unlocked is not None:  # watch every address handed out, and a gap beyond the last one
        wallet.script_pubkey(keys.unlocked.receive_index + wallet.gap - 1)
    await _check_bitcoin_node(rpc, settings.network if settings is not None else None)
    from_height = args.from_height
    if from_height is None:
        from_height = settings.birth_height if settings is not None else 0
    await wallet.scan(rpc, max(0, from_height))
    return wallet, await wallet.scan_mempool(rpc)


@asynccontextmanager
async def _ethereum_node(url: str) -> AsyncIterator[AsyncWeb3[Any]]:
    w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=30)}))
    try:
        yield w3
    finally:
        await w3.provider.disconnect()


async def _check_ethereum_node(w3: AsyncWeb3[Any], wallet: eth.EthereumWallet, keys: _Keys) -> int:
    chain_id = await wallet.chain_id(w3)
    if chain_id in ks.MAINNET_CHAIN_IDS:
        raise _Usage(f"the Ethereum node is on mainnet (chain id {chain_id}); this wallet never pays there")
    expected = keys.networks.ethereum.chain_id if keys.networks is not None else None
    if expected is not None and chain_id != expected:
        raise _Usage(
            f"the Ethereum node is on chain id {chain_id}, but the wallet is for chain id {expected}"
        )
    return chain_id


def _usdt_token(args: argparse.Namespace, keys: _Keys) -> str | None:
    explicit = _eth_address_or_none(getattr(args, "usdt_token", None), "--usdt-token")
    if explicit is not None:
        return explicit
    stored = keys.networks.ethereum.usdt_token if keys.networks is not None else None
    return _eth_address_or_none(stored, "the wallet's USDT token")


async def _rates(args: argparse.Namespace) -> dict[str, Decimal]:
    """The gateway's KZT rates, or none (with a note on stderr) when no gateway is named or it fails."""
    if not args.gateway:
        return {}
    key = args.gateway_key or os.environ.get(GATEWAY_KEY_ENV) or None
    try:
        return await gateway_rates(args.gateway, key)
    except RatesUnavailable as exc:
        _warn(f"no tenge values: {exc}")
        return {}


def _with_kzt(amount_minor: int, decimals: int | None, rate: Decimal | None) -> str:
    if rate is None or decimals is None:
        return ""
    return f" (≈ {kzt_text(amount_minor, rate, decimals)})"


# -- balance -------------------------------------------------------------------------------------------------


def _need_a_node(args: argparse.Namespace) -> None:
    if not args.btc_rpc and not args.eth_rpc:
        raise _Usage("name a node: --btc-rpc URL (with --btc-rpc-password) and/or --eth-rpc URL")


async def _balance(args: argparse.Namespace) -> int:
    _need_a_node(args)
    keys = _keys(args)
    assert keys.networks is not None
    rates = await _rates(args)
    lines: list[str] = []
    report: dict[str, Any] = {}
    try:
        if args.btc_rpc:
            async with _bitcoin_rpc(args.btc_rpc, args) as rpc:
                wallet, mempool = await _scanned_bitcoin(keys, args, rpc, keys.networks.bitcoin.hrp)
            tip = wallet.tip_height
            spendable = wallet.balance()
            coins = wallet.utxos()
            immature = sum(c.amount_sat for c in coins if not c.is_mature(tip))
            own_unconfirmed = sum(c.amount_sat for c in coins if c.height is None and c.spent_by is None)
            incoming = sum(e.received_sat for e in mempool if e.sent_sat == 0)
            unconfirmed = own_unconfirmed + incoming
            rate = rates.get("BTC")
            lines.append(
                f"BTC  {format_minor_units(spendable, _BTC_DECIMALS)}{_with_kzt(spendable, _BTC_DECIMALS, rate)}"
                f"  spendable, bitcoin {keys.networks.bitcoin.network} at height {tip}"
            )
            if unconfirmed:
                lines.append(f"BTC  {format_minor_units(unconfirmed, _BTC_DECIMALS)}  unconfirmed (mempool)")
            if immature:
                lines.append(f"BTC  {format_minor_units(immature, _BTC_DECIMALS)}  immature coinbase")
            report["BTC"] = {
                "spendable_sat": str(spendable),
                "unconfirmed_sat": str(unconfirmed),
                "immature_sat": str(immature),
                "height": tip,
                "kzt": kzt_text(spendable, rate, _BTC_DECIMALS).removesuffix(" KZT") if rate else None,
            }
        if args.eth_rpc:
            ether = eth.EthereumWallet.from_mnemonic(keys.mnemonic)
            async with _ethereum_node(args.eth_rpc) as w3:
                chain_id = await _check_ethereum_node(w3, ether, keys)
                wei = await ether.balance(w3)
                token = _usdt_token(args, keys)
                held = symbol = decimals = None
                if token is not None:
                    held = await ether.token_balance(w3, token)
                    symbol, decimals = await ether.token_metadata(w3, token)
            rate = rates.get("ETH")
            lines.append(
                f"ETH  {format_minor_units(wei, eth.ETH_DECIMALS)}{_with_kzt(wei, eth.ETH_DECIMALS, rate)}"
                f"  chain id {chain_id}, {ether.address}"
            )
            report["ETH"] = {
                "wei": str(wei),
                "chain_id": chain_id,
                "kzt": kzt_text(wei, rate, eth.ETH_DECIMALS).removesuffix(" KZT") if rate else None,
            }
            if token is None:
                lines.append("USDT no token contract known: pass --usdt-token ADDRESS")
            else:
                assert held is not None
                rate = rates.get("USDT")
                shown = f"{held} base units" if decimals is None else format_minor_units(held, decimals)
                lines.append(f"USDT {shown}{_with_kzt(held, decimals, rate)}  {symbol or 'token'} {token}")
                report["USDT"] = {
                    "units": str(held),
                    "decimals": decimals,
                    "token": token,
                    "kzt": kzt_text(held, rate, decimals).removesuffix(" KZT")
                    if rate and decimals is not None
                    else None,
                }
    except (RpcError, RpcUnavailable, btc.WalletError, eth.EthereumWalletError) as exc:
        raise _NotPaid(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
    return EXIT_OK


# -- history -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    asset: str
    txid: str
    direction: str
    amount: str  # signed, in whole units
    where: str  # "block N (M confirmations)" or "mempool"
    fee: str | None
    block: int | None  # for sorting (None: mempool, newest)
    confirmations: int

    def line(self) -> str:
        fee = f"  fee {self.fee}" if self.fee is not None else ""
        return f"{self.asset:<4} {self.txid}  {self.direction:<4} {self.amount:>20}  {self.where}{fee}"

    def view(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "txid": self.txid,
            "direction": self.direction,
            "amount": self.amount,
            "block": self.block,
            "confirmations": self.confirmations,
            "fee": self.fee,
        }


def _signed(amount: int, decimals: int) -> str:
    text = format_minor_units(abs(amount), decimals)
    return f"-{text}" if amount < 0 else f"+{text}"


def _bitcoin_rows(entries: list[btc.HistoryEntry], tip: int) -> list[_Row]:
    rows = []
    for e in entries:
        confirmations = e.confirmations(tip)
        where = "mempool" if e.height is None else f"block {e.height} ({confirmations} conf.)"
        if e.coinbase:
            where += ", coinbase"
        # what left the wallet for others (fee excluded), or what came in
        amount = e.net_sat if e.direction == "in" else -(e.external_sat if e.direction == "out" else 0)
        fee = format_minor_units(e.fee_sat, _BTC_DECIMALS) if e.fee_sat is not None else None
        rows.append(
            _Row(
                "BTC",
                e.txid,
                e.direction,
                _signed(amount, _BTC_DECIMALS),
                where,
                fee,
                e.height,
                confirmations,
            )
        )
    return rows


def _ethereum_rows(
    transfers: list[EthereumTransfer], tip: int, token: str | None, token_name: str, decimals: int | None
) -> list[_Row]:
    rows = []
    for t in transfers:
        is_eth = t.asset == "ETH"
        places = eth.ETH_DECIMALS if is_eth else decimals
        signed = t.amount_units if t.direction == "in" else -t.amount_units if t.direction == "out" else 0
        amount = _signed(signed, places) if places is not None else f"{signed:+d} units"
        confirmations = t.confirmations(tip)
        where = f"block {t.block} ({confirmations} conf.)" + (", FAILED" if t.failed else "")
        fee = format_minor_units(t.fee_wei, eth.ETH_DECIMALS) if t.fee_wei is not None else None
        asset = "ETH" if is_eth else ("USDT" if token is not None and t.asset == token else token_name)
        rows.append(_Row(asset, t.tx_hash, t.direction, amount, where, fee, t.block, confirmations))
    return rows


async def _history(args: argparse.Namespace) -> int:
    _need_a_node(args)
    keys = _keys(args)
    assert keys.networks is not None
    chains: list[list[_Row]] = []
    try:
        if args.btc_rpc:
            async with _bitcoin_rpc(args.btc_rpc, args) as rpc:
                wallet, mempool = await _scanned_bitcoin(keys, args, rpc, keys.networks.bitcoin.hrp)
            chains.append(_bitcoin_rows([*wallet.history(), *mempool], wallet.tip_height))
        if args.eth_rpc:
            ether = eth.EthereumWallet.from_mnemonic(keys.mnemonic)
            async with _ethereum_node(args.eth_rpc) as w3:
                await _check_ethereum_node(w3, ether, keys)
                token = _usdt_token(args, keys)
                symbol, decimals = (None, None) if token is None else await ether.token_metadata(w3, token)
                transfers, tip, first = await ethereum_history(
                    w3, ether.address, tokens=(token,) if token else (), from_block=args.eth_from_block
                )
            if first > args.eth_from_block:
                _warn(
                    f"ether transfers are read from the last {MAX_NATIVE_SCAN_BLOCKS} blocks only "
                    f"(from block {first}); token transfers from block {args.eth_from_block}"
                )
            chains.append(_ethereum_rows(transfers, tip, token, symbol or "token", decimals))
    except (RpcError, RpcUnavailable, btc.WalletError, eth.EthereumWalletError) as exc:
        raise _NotPaid(str(exc)) from None
    rows: list[_Row] = []
    for chain_rows in chains:  # each chain on its own (block heights of two chains do not compare)
        chain_rows.sort(key=lambda r: (r.block is None, r.block or 0), reverse=True)  # mempool, then newest
        rows += chain_rows[: args.limit] if args.limit > 0 else chain_rows
    if args.json:
        print(json.dumps([r.view() for r in rows], indent=2))
    elif rows:
        print("\n".join(r.line() for r in rows))
    else:
        print("no transactions yet")
    return EXIT_OK


# -- pay -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Summary:
    asset: str
    amount: str  # in whole units, e.g. "0.0125"
    to: str
    chain: str
    payer: str
    tenge: str = ""  # " (≈ 72.68 KZT)" when a rate is known
    purpose: str = ""  # ' for "Invoice inv_…" (Alatau Coffee)' when the request says

    def line(self) -> str:
        return (
            f"pay {self.amount} {self.asset}{self.tenge} to {self.to}{self.purpose} on {self.chain} "
            f"from {self.payer}"
        )

    def announcement(self) -> str:
        return f"You will {self.line()}."


def _read_request(text: str) -> tuple[str, Request]:
    """The URI (read from the image if ``text`` names one) and the request it makes."""
    path = Path(text)
    scheme = text.partition(":")[0].lower()
    if scheme not in ("bitcoin", "ethereum") and (path.suffix.lower() == ".png" or path.is_file()):
        try:
            text = read_qr_text(path)
        except QrReadError as exc:
            raise _Usage(str(exc)) from None
    try:
        return text, parse_payment_uri(text)
    except PaymentUriError as exc:
        raise _Usage(f"bad payment request: {exc}") from None


def _node_url(args: argparse.Namespace, chain: str) -> str:
    url = (args.btc_rpc if chain == "bitcoin" else args.eth_rpc) or args.rpc
    if not url:
        option = "--btc-rpc" if chain == "bitcoin" else "--eth-rpc"
        raise _Usage(f"a {chain} request needs its node: pass {option} URL (or --rpc URL)")
    return str(url)


async def _pay(args: argparse.Namespace, confirm: Callable[[str], bool]) -> str:
    _, request = _read_request(args.request)
    if isinstance(request, Bip21Request):
        url = _node_url(args, "bitcoin")
        return await _pay_bitcoin(args, url, request, confirm)
    return await _pay_ethereum(args, _node_url(args, "ethereum"), request, confirm)


def _confirmed(args: argparse.Namespace, summary: _Summary, confirm: Callable[[str], bool]) -> None:
    if args.yes:
        print(f"{summary.announcement()} (--yes: not asking)", file=sys.stderr, flush=True)
        return
    if not confirm(f"{summary.announcement()} Pay?"):
        raise _NotPaid("declined at the prompt; nothing was sent")


async def _pay_ethereum(
    args: argparse.Namespace,
    url: str,
    request: Eip681Native | Eip681TokenTransfer,
    confirm: Callable[[str], bool],
) -> str:
    keys = _keys(args)
    try:
        wallet = eth.EthereumWallet.from_mnemonic(keys.mnemonic, index=args.index)
    except eth.EthereumWalletError as exc:
        raise _Usage(str(exc)) from None
    rates = await _rates(args)
    async with _ethereum_node(url) as w3:
        try:
            node_chain_id = await _check_ethereum_node(w3, wallet, keys)
            if request.chain_id != node_chain_id:
                raise _Usage(str(eth.WrongChain(request.chain_id, node_chain_id)))
            summary = await _ethereum_summary(
                w3, wallet, request, node_chain_id, rates, _usdt_token(args, keys)
            )
            _confirmed(args, summary, confirm)
            payment = await wallet.pay_request(w3, request, wait=not args.no_wait, timeout=args.timeout)
        except eth.WrongChain as exc:  # the node changed between the check and the payment
            raise _Usage(str(exc)) from None
        except (
            eth.EthereumWalletError
        ) as exc:  # refused, reverted, not mined in time, funds too low, unreachable
            raise _NotPaid(str(exc)) from None
    if payment.receipt is not None:
        print(f"paid: {summary.line()}; mined in block {payment.receipt['blockNumber']}", file=sys.stderr)
    else:
        print(f"sent: {summary.line()}; not waiting for a block", file=sys.stderr)
    return payment.tx_hash


async def _ethereum_summary(
    w3: AsyncWeb3[Any],
    wallet: eth.EthereumWallet,
    request: Eip681Native | Eip681TokenTransfer,
    chain_id: int,
    rates: dict[str, Decimal],
    usdt_token: str | None,
) -> _Summary:
    chain = f"Ethereum chain id {chain_id}"
    if isinstance(request, Eip681Native):
        amount = format_minor_units(request.value_wei, eth.ETH_DECIMALS)
        tenge = _with_kzt(request.value_wei, eth.ETH_DECIMALS, rates.get("ETH"))
        return _Summary("ETH", amount, request.address, chain, wallet.address, tenge)
    symbol, decimals = await wallet.token_metadata(w3, request.token)
    label = f"{symbol or 'tokens'} (ERC-20 {request.token})"
    if decimals is None:
        return _Summary(label, f"{request.amount_units} base units of", request.to, chain, wallet.address)
    # the USDT rate is for the wallet's USDT contract only: another token's price is unknown here
    rate = rates.get("USDT") if usdt_token is not None and request.token == usdt_token else None
    return _Summary(
        label,
        format_minor_units(request.amount_units, decimals),
        request.to,
        chain,
        wallet.address,
        _with_kzt(request.amount_units, decimals, rate),
    )


def _purpose(request: Bip21Request) -> str:
    text = f' for "{request.message}"' if request.message else ""
    if request.label:
        text += f" ({request.label})" if text else f" for {request.label}"
    return text


async def _pay_bitcoin(
    args: argparse.Namespace, url: str, request: Bip21Request, confirm: Callable[[str], bool]
) -> str:
    if request.amount_sat is None:
        raise _Usage("the bitcoin request names no amount; ask the merchant for a request with one")
    keys = _keys(args)
    settings = keys.networks.bitcoin if keys.networks is not None else None
    hrp = args.hrp or (settings.hrp if settings is not None else DEFAULT_HRP)
    if settings is not None and hrp != settings.hrp:
        raise _Usage(f"the wallet is for bitcoin {settings.network} (addresses {settings.hrp}1…), not {hrp}")
    try:
        btc_script_for_address(request.address, hrp)
    except ValueError as exc:
        raise _Usage(f"cannot pay {request.address} on network {hrp}: {exc}") from None
    rates = await _rates(args)
    network = f"bitcoin {settings.network}" if settings is not None else f"bitcoin network {hrp}"
    async with _bitcoin_rpc(url, args) as rpc:
        try:
            wallet, _ = await _scanned_bitcoin(keys, args, rpc, hrp)
            summary = _Summary(
                "BTC",
                format_minor_units(request.amount_sat, _BTC_DECIMALS),
                request.address,
                network,
                wallet.address(keys.unlocked.receive_index if keys.unlocked is not None else 0),
                _with_kzt(request.amount_sat, _BTC_DECIMALS, rates.get("BTC")),
                _purpose(request),
            )
            _confirmed(args, summary, confirm)
            payment = await wallet.pay(
                rpc, request.address, request.amount_sat, fee_rate_sat_vb=args.fee_rate
            )
        except (btc.WalletError, RpcError, RpcUnavailable) as exc:
            raise _NotPaid(str(exc)) from None
    print(f"paid: {summary.line()}; fee {payment.fee_sat} sat, in the mempool", file=sys.stderr)
    return payment.txid


# -- register ------------------------------------------------------------------------------------------------


def registration_wallets(
    mnemonic: str, networks: ks.Networks, count: int, receive_index: int = 0
) -> list[tuple[str, str, str]]:
    """``(chain, owner, label)`` of what the sandbox should know: the first ``count`` receive and change
    scripts (at least up to the receive index in use) as hex, and the Ethereum address."""
    settings = networks.bitcoin
    wallet = btc.BitcoinWallet.from_mnemonic(mnemonic, settings.hrp, account=settings.account, gap=1)
    wallets = []
    for chain, name in ((btc.EXTERNAL, "receive"), (btc.CHANGE, "change")):
        upto = max(count, receive_index + 1) if chain == btc.EXTERNAL else count
        for index in range(upto):
            path = f"m/84'/1'/{settings.account}'/{chain}/{index}"
            wallets.append(
                ("bitcoin", wallet.script_pubkey(index, chain=chain).hex(), f"wallet {name} {path}")
            )
    ether = eth.EthereumWallet.from_mnemonic(mnemonic)
    wallets.append(("ethereum", ether.address, f"wallet {_ETH_PATH}"))
    return wallets


async def _register(args: argparse.Namespace, registrar: WalletRegistrar) -> int:
    if not 1 <= args.count <= 1000:
        raise _Usage("--count must be 1 to 1000")
    unlocked = _unlock(args)
    wallets = registration_wallets(unlocked.mnemonic, unlocked.networks, args.count, unlocked.receive_index)
    report = await registrar(args.resident, wallets)
    scripts = sum(1 for chain, _, _ in wallets if chain == "bitcoin")
    print(
        f"resident {args.resident}: {report.added} wallet entries added, {report.already} already registered "
        f"({scripts} bitcoin scripts, 1 ethereum address)"
    )
    return EXIT_OK
