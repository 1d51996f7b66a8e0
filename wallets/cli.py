"""``cryptocity wallet pay``: a resident pays a scanned or pasted payment request from the command line.

The request is a ``bitcoin:`` (BIP21) or ``ethereum:`` (EIP-681) URI, given as text or as a QR code image
(as the checkout page shows it). Ethereum requests are paid with :class:`wallets.ethereum.EthereumWallet`
after checking the node's chain id; bitcoin requests with :class:`wallets.bitcoin.BitcoinWallet` after a
scan of the chain. The command registers itself on the ``cryptocity`` parser (sandbox/cli.py is the
composition root) and prints only the transaction id on stdout, so scripts can capture it.

Exit status: 0 paid, 1 not paid (the node refused, funds too low, declined at the prompt, node
unreachable), 2 bad input (unreadable URI or image, wrong chain or network, no mnemonic). The mnemonic and
keys are never printed, not even in error messages.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcError, RpcUnavailable
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
from wallets.qr import QrReadError, read_qr_text

__all__ = ["MNEMONIC_ENV", "RPC_PASSWORD_ENV", "add_wallet_commands", "run_wallet_command"]

MNEMONIC_ENV = "CRYPTOCITY_WALLET_MNEMONIC"
RPC_PASSWORD_ENV = "CRYPTOCITY_WALLET_RPC_PASSWORD"  # noqa: S105 - the variable name, not a password
DEFAULT_HRP = "rb"  # bcoin regtest
_RPC_USER = "cryptocity"  # bcoin ignores the user name; Bitcoin Core's rpcauth would need the real one
EXIT_PAID, EXIT_NOT_PAID, EXIT_BAD_INPUT = 0, 1, 2


class _Usage(Exception):
    """Bad input: one line on stderr, exit status 2."""


class _NotPaid(Exception):
    """The payment did not happen: one line on stderr, exit status 1."""


@dataclass(frozen=True, slots=True)
class _Summary:
    asset: str
    amount: str  # in whole units, e.g. "0.0125"
    to: str
    chain: str
    payer: str

    def line(self) -> str:
        return f"pay {self.amount} {self.asset} to {self.to} on {self.chain} from {self.payer}"


def add_wallet_commands(sub: Any) -> None:
    """Add ``wallet pay`` to the ``cryptocity`` subcommands (``sub`` is argparse's subparsers action)."""
    wallet = sub.add_parser("wallet", help="a resident's wallet: pay a payment request")
    wsub = wallet.add_subparsers(dest="wallet_action", required=True)
    pay = wsub.add_parser(
        "pay",
        help="pay a bitcoin: or ethereum: request, given as a URI or a QR code image",
        description="Pay a BIP21 (bitcoin:) or EIP-681 (ethereum:) payment request. Prints the transaction "
        "id on stdout. Exit status 0 paid, 1 not paid (node refused, funds too low, declined), 2 bad input.",
    )
    pay.add_argument("request", metavar="URI-OR-PNG", help="the payment URI, or a QR code image file of it")
    pay.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL or Bitcoin RPC URL")
    pay.add_argument(
        "--rpc-password",
        help=f"bitcoin RPC password (bcoin's API key); default ${RPC_PASSWORD_ENV}",
    )
    pay.add_argument(
        "--mnemonic-file", type=Path, metavar="FILE", help=f"BIP39 mnemonic file; default ${MNEMONIC_ENV}"
    )
    pay.add_argument("--index", type=int, default=0, help="ethereum: address index of m/44'/60'/0'/0/i (0)")
    pay.add_argument(
        "--hrp", default=DEFAULT_HRP, help=f"bitcoin: bech32 prefix ({DEFAULT_HRP}: bcoin regtest)"
    )
    pay.add_argument(
        "--from-height", type=int, default=0, help="bitcoin: scan the chain from this height (0)"
    )
    pay.add_argument("--fee-rate", type=int, default=2, help="bitcoin: fee rate in sat/vB (2)")
    pay.add_argument("--no-wait", action="store_true", help="ethereum: do not wait for the receipt")
    pay.add_argument("--timeout", type=float, default=120.0, help="ethereum: seconds to wait for the receipt")
    pay.add_argument("--yes", "-y", action="store_true", help="pay without asking for confirmation")


async def run_wallet_command(args: argparse.Namespace) -> int:
    """Run ``wallet <action>``; the exit status."""
    try:
        if args.wallet_action == "pay":
            txid = await _pay(args, _ask_terminal)
            print(txid, flush=True)
            return EXIT_PAID
        raise _Usage(f"unknown wallet action {args.wallet_action!r}")
    except _Usage as exc:
        print(f"wallet: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _NotPaid as exc:
        print(f"wallet: not paid: {exc}", file=sys.stderr)
        return EXIT_NOT_PAID


def _ask_terminal(summary: _Summary) -> bool:
    """Show what will be paid and read y/N (anything but y or yes, or end of input, is no)."""
    print(summary.line() + "? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _read_request(text: str) -> tuple[str, Bip21Request | Eip681Native | Eip681TokenTransfer]:
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


def _mnemonic(args: argparse.Namespace) -> str:
    if args.mnemonic_file is not None:
        try:
            words = Path(args.mnemonic_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _Usage(f"cannot read the mnemonic file {args.mnemonic_file}: {reason}") from None
    else:
        words = os.environ.get(MNEMONIC_ENV, "")
    if not words.strip():
        raise _Usage(f"no mnemonic: pass --mnemonic-file FILE or set {MNEMONIC_ENV}")
    return " ".join(words.split())


async def _pay(args: argparse.Namespace, confirm: Callable[[_Summary], bool]) -> str:
    uri, request = _read_request(args.request)
    mnemonic = _mnemonic(args)
    if isinstance(request, Bip21Request):
        return await _pay_bitcoin(args, uri, request, mnemonic, confirm)
    return await _pay_ethereum(args, request, mnemonic, confirm)


# -- ethereum ------------------------------------------------------------------------------------------------


async def _pay_ethereum(
    args: argparse.Namespace,
    request: Eip681Native | Eip681TokenTransfer,
    mnemonic: str,
    confirm: Callable[[_Summary], bool],
) -> str:
    try:
        wallet = eth.EthereumWallet.from_mnemonic(mnemonic, index=args.index)
    except eth.EthereumWalletError as exc:
        raise _Usage(str(exc)) from None
    w3 = AsyncWeb3(AsyncHTTPProvider(args.rpc, request_kwargs={"timeout": aiohttp.ClientTimeout(total=30)}))
    try:
        node_chain_id = await wallet.chain_id(w3)
        if request.chain_id != node_chain_id:
            raise _Usage(str(eth.WrongChain(request.chain_id, node_chain_id)))
        summary = await _ethereum_summary(w3, wallet, request, node_chain_id)
        if not args.yes and not confirm(summary):
            raise _NotPaid("declined at the prompt")
        payment = await wallet.pay_request(w3, request, wait=not args.no_wait, timeout=args.timeout)
    except eth.WrongChain as exc:  # the node changed between the check and the payment
        raise _Usage(str(exc)) from None
    except eth.EthereumWalletError as exc:  # refused, reverted, not mined in time, funds too low, unreachable
        raise _NotPaid(str(exc)) from None
    finally:
        await w3.provider.disconnect()
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
) -> _Summary:
    chain = f"Ethereum chain id {chain_id}"
    if isinstance(request, Eip681Native):
        amount = format_minor_units(request.value_wei, eth.ETH_DECIMALS)
        return _Summary("ETH", amount, request.address, chain, wallet.address)
    symbol, decimals = await wallet.token_metadata(w3, request.token)
    label = f"{symbol or 'tokens'} (ERC-20 {request.token})"
    if decimals is None:
        return _Summary(label, f"{request.amount_units} base units of", request.to, chain, wallet.address)
    return _Summary(
        label, format_minor_units(request.amount_units, decimals), request.to, chain, wallet.address
    )


# -- bitcoin -------------------------------------------------------------------------------------------------


async def _pay_bitcoin(
    args: argparse.Namespace,
    uri: str,
    request: Bip21Request,
    mnemonic: str,
    confirm: Callable[[_Summary], bool],
) -> str:
    if request.amount_sat is None:
        raise _Usage("the bitcoin request names no amount; ask the merchant for a request with one")
    try:
        btc_script_for_address(request.address, args.hrp)
    except ValueError as exc:
        raise _Usage(f"cannot pay {request.address} on network {args.hrp}: {exc}") from None
    try:
        wallet = btc.BitcoinWallet.from_mnemonic(mnemonic, args.hrp)
    except btc.WalletError as exc:
        raise _Usage(str(exc)) from None
    password = args.rpc_password if args.rpc_password is not None else os.environ.get(RPC_PASSWORD_ENV, "")
    async with aiohttp.ClientSession() as session:
        rpc = BitcoinRpc(session, RpcEndpoint(args.rpc, _RPC_USER, password), retries=1)
        try:
            await wallet.scan(rpc, max(0, args.from_height))
            summary = _Summary(
                "BTC",
                format_minor_units(request.amount_sat, 8),
                request.address,
                f"bitcoin network {args.hrp}",
                wallet.address(0),
            )
            if not args.yes and not confirm(summary):
                raise _NotPaid("declined at the prompt")
            payment = await wallet.pay_uri(rpc, uri, fee_rate_sat_vb=args.fee_rate)
        except (btc.WalletError, RpcError, RpcUnavailable) as exc:
            raise _NotPaid(str(exc)) from None
    print(f"paid: {summary.line()}; fee {payment.fee_sat} sat, in the mempool", file=sys.stderr)
    return payment.txid
