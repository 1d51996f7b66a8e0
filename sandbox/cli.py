"""``cryptocity``: the composition root. It builds the gateway with the pilot's extensions and runs it.

Subcommands: serve, migrate, merchants (create, list, add-key, rotate-key, revoke-key, disable), version,
wallet (new, address, balance, history, pay, register).
A configuration error ends the program with its one-line explanation and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from aiohttp import web
from embit import bip39
from rich.console import Console
from rich.table import Table

from gateway.accounts.merchants import MerchantError, MerchantNotFound, MerchantRegistry
from gateway.api.state import CLOCK, STORE
from gateway.app import create_app
from gateway.chains.bitcoin_rpc import RpcError, RpcUnavailable
from gateway.chains.watcher import WatcherRefused
from gateway.clock import SystemClock
from gateway.cluster.supervisor import Supervisor
from gateway.config import Config, ConfigError, default_config_path, load_config
from gateway.extensions import Extensions
from gateway.logging import configure_logging
from gateway.money import AmountError, Asset, format_minor_units, parse_decimal_amount
from gateway.rates.live import ConfiguredRates
from gateway.store import Store, StoreError, Tx, describe_store, open_store
from sandbox.audit import AuditKey, audit_extensions, record_startup
from sandbox.audit.cli import add_audit_commands, run_audit_command
from sandbox.audit.keys import AuditKeyError
from sandbox.demo import DEMO_MERCHANT_NAME, demo_account_keys
from sandbox.devnets.bitcoin import REGTEST_HRP, SEGWIT_HEIGHT, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from sandbox.devnets.process import DevnetError
from sandbox.extension import sandbox_extensions
from sandbox.ledger.api import ledger_extensions
from sandbox.limits import Tier
from sandbox.operator_cli import add_sandbox_commands, run_sandbox_command
from sandbox.registry import NotRegistered, Registry, RegistryError, normalise_owner, residents_of
from sandbox.simulation.cli import add_simulate_command, run_simulate_command
from sandbox.store_cli import add_store_commands, run_store_command
from wallets.bitcoin import CHANGE, EXTERNAL, BitcoinWallet, WalletError
from wallets.cli import (
    RegistrationRefused,
    RegistrationReport,
    add_wallet_commands,
    run_wallet_command,
)
from wallets.ethereum import EthereumWallet


def _version() -> str:
    try:
        return version("cryptocity")
    except PackageNotFoundError:
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptocity", description="CryptoCity payment gateway and sandbox")
    parser.add_argument(
        "--config", type=Path, help="config file (default: $CRYPTOCITY_CONFIG or ./config.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway HTTP server")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    serve.add_argument("--demo", action="store_true", help="create a demo merchant and print what to curl")
    serve.add_argument(
        "--devnets",
        action="store_true",
        help="also run local chains (bcoin regtest, anvil with tUSDT), watch them, and fund a demo resident",
    )
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway processes on the same host:port (SO_REUSEPORT), supervised; needs PostgreSQL (store.dsn)",
    )
    # Set by the supervisor of --processes on the workers it starts (not for people).
    serve.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, default=0, help=argparse.SUPPRESS)

    sub.add_parser("migrate", help="apply database migrations and exit")

    devnet = sub.add_parser("devnet", help="run a local chain node for development")
    dsub = devnet.add_subparsers(dest="chain", required=True)
    btc = dsub.add_parser("bitcoin", help="a bcoin regtest node on loopback, mined to segwit activation")
    btc.add_argument("--port", type=int, help="RPC port (default: a free one)")
    btc.add_argument("--mine-every", type=float, default=0.0, help="mine a block every N seconds (0: never)")
    btc.add_argument("--address", help="coinbase address for scheduled blocks (default: the faucet's)")
    btc.add_argument(
        "--fund",
        action="append",
        default=[],
        metavar="ADDRESS=BTC",
        help="send BTC to an rb1 address from the faucet at start (repeatable), e.g. rb1q...=0.5",
    )
    eth = dsub.add_parser("ethereum", help="an anvil node on loopback with the TestUSDT token deployed")
    eth.add_argument("--port", type=int, help="RPC port (default: a free one)")
    eth.add_argument(
        "--block-time", type=float, help="mine a block every S seconds (default: automine, a block per tx)"
    )
    eth.add_argument(
        "--fund",
        action="append",
        default=[],
        metavar="ADDRESS=ETH",
        help="send ETH to an address from dev account 0 at start (repeatable), e.g. 0x...=1.5",
    )
    eth.add_argument(
        "--mint",
        action="append",
        default=[],
        metavar="ADDRESS=USDT",
        help="mint TestUSDT (6 decimals) to an address at start (repeatable), e.g. 0x...=250.75",
    )
    rates = sub.add_parser("rates", help="print current KZT rates, their sources and the providers' health")
    rates.add_argument("--json", action="store_true", help="print the same view as GET /v1/rates, as JSON")
    rates.add_argument(
        "--wait", type=float, default=15.0, help="seconds to wait for the providers' first answers"
    )
    sub.add_parser("version", help="print the version")

    merchants = sub.add_parser("merchants", help="manage merchants and their API keys")
    msub = merchants.add_subparsers(dest="action", required=True)
    create = msub.add_parser("create", help="onboard a merchant; prints its first API key once")
    create.add_argument("--name", required=True)
    create.add_argument("--btc-xpub", help="BIP84 account public key (tpub/vpub on test networks)")
    create.add_argument("--eth-xpub", help="BIP44 account public key of m/44'/60'/0'")
    create.add_argument("--assets", default="", help="comma-separated, default: every asset the keys allow")
    create.add_argument("--default-expiry", type=int, help="default invoice expiry in seconds")
    create.add_argument(
        "--spread-bps", type=int, default=0, help="spread on every rate, in basis points (default 0)"
    )
    spread = msub.add_parser("set-spread", help="change the spread of new invoices (basis points)")
    spread.add_argument("merchant_id")
    spread.add_argument("spread_bps", type=int)
    msub.add_parser("list", help="list merchants")
    for name, text in (
        ("add-key", "issue an extra API key"),
        ("rotate-key", "issue a new key, revoke the others"),
        ("disable", "disable a merchant (its keys stop working)"),
    ):
        action = msub.add_parser(name, help=text)
        action.add_argument("merchant_id")
    revoke = msub.add_parser("revoke-key", help="revoke one API key by its lookup part")
    revoke.add_argument("merchant_id")
    revoke.add_argument("lookup")

    add_wallet_commands(sub)  # wallet new|address|balance|history|pay|register (wallets/cli.py)
    add_sandbox_commands(sub)  # sandbox resident|wallet|merchant|token (operator_cli.py)
    add_audit_commands(sub)  # audit verify|head (sandbox/audit/cli.py)
    add_simulate_command(sub)  # simulate (sandbox/simulation/cli.py)
    add_store_commands(sub)  # store migrate-sqlite-to-pg (sandbox/store_cli.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"cryptocity {_version()}")
        return 0
    if args.command == "wallet":  # a resident's tool: only `register` reads the configuration (its store)
        try:
            return asyncio.run(run_wallet_command(args, registrar=_WalletRegistrar(args.config)))
        except KeyboardInterrupt:
            return 130
    try:
        config = load_config(args.config or default_config_path())
        if args.command == "serve" and (args.host or args.port is not None):
            server = config.server.model_copy(
                update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
            )
            config = Config.model_validate({**config.model_dump(), "server": server.model_dump()})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    try:
        if args.command == "serve":
            if args.processes != 1 or args.worker:
                return _serve_processes(config, args)
            return asyncio.run(_serve(config, demo=args.demo, devnets=args.devnets))
        if args.command == "migrate":
            return asyncio.run(_migrate(config))
        if args.command == "rates":
            return asyncio.run(_rates(config, as_json=args.json, wait=args.wait))
        if args.command == "devnet" and args.chain == "ethereum":
            return asyncio.run(_devnet_ethereum(args))
        if args.command == "devnet":
            return asyncio.run(_devnet_bitcoin(args))
        if args.command == "sandbox":
            return asyncio.run(run_sandbox_command(args, config))
        if args.command == "audit":
            return asyncio.run(run_audit_command(args, config))
        if args.command == "simulate":
            return asyncio.run(run_simulate_command(args, config))
        if args.command == "store":
            return asyncio.run(run_store_command(args, config))
        return asyncio.run(_merchants(config, args))
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1
    except WatcherRefused as exc:  # the configured node is on another chain (or on mainnet)
        print(f"refused to start: {exc}", file=sys.stderr)
        return 2
    except AuditKeyError as exc:
        print(f"audit key: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True, slots=True)
class _WalletRegistrar:
    """`wallet register`: the resident wallet's scripts and address into the sandbox registry's store
    (opened as `sandbox wallet` opens it). Every wallet is checked before anything is written, so a wallet
    of another resident refuses the whole registration; those already registered to this resident are
    left alone, which makes a second run a no-op."""

    config_path: Path | None

    async def __call__(self, resident_id: str, wallets: Sequence[tuple[str, str, str]]) -> RegistrationReport:
        try:
            config = load_config(self.config_path or default_config_path())
        except ConfigError as exc:
            raise RegistrationRefused(str(exc), 2) from None
        try:
            store = await open_store(config.store)
        except StoreError as exc:
            raise RegistrationRefused(f"store error: {exc}") from None
        try:
            registry = Registry(store, SystemClock())
            try:
                await registry.resident(resident_id)
                owners = [(chain, normalise_owner(chain, owner), label) for chain, owner, label in wallets]
            except NotRegistered as exc:
                raise RegistrationRefused(f"{exc}; the KYC operator registers residents first") from None
            except RegistryError as exc:
                raise RegistrationRefused(str(exc), 2) from None
            known: dict[tuple[str, str], str] = {}
            for chain in ("bitcoin", "ethereum"):
                of_chain = [owner for c, owner, _ in owners if c == chain]

                async def lookup(
                    tx: Tx, chain: str = chain, of_chain: list[str] = of_chain
                ) -> dict[str, str]:
                    return await residents_of(tx, chain, of_chain)

                known.update({(chain, o): r for o, r in (await store.read(lookup)).items()})
            taken = sum(1 for resident in known.values() if resident != resident_id)
            if taken:
                raise RegistrationRefused(
                    f"{taken} of this wallet's scripts or addresses are registered to another resident; "
                    "nothing was registered",
                    2,
                )
            added = 0
            for chain, owner, label in owners:
                if (chain, owner) not in known:
                    await registry.register_wallet(resident_id, chain, owner, label)
                    added += 1
            return RegistrationReport(added, len(owners) - added)
        except StoreError as exc:
            raise RegistrationRefused(f"store error: {exc}") from None
        finally:
            await store.close()


def _parse_funding(items: list[str]) -> list[tuple[str, int]]:
    """``ADDRESS=BTC`` pairs into (address, satoshi); a bad pair is a usage error naming it."""
    funding = []
    for item in items:
        address, sep, amount = item.partition("=")
        try:
            if not sep:
                raise AmountError("expected ADDRESS=BTC")
            funding.append((address, parse_decimal_amount(amount, 8)))
        except AmountError as exc:
            raise SystemExit(f"devnet: --fund {item!r}: {exc}") from None
    return funding


async def _devnet_bitcoin(args: argparse.Namespace) -> int:
    funding = _parse_funding(args.fund)
    # The faucet is a throw-away regtest wallet: it receives the start-up coinbases and funds --fund.
    faucet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(secrets.token_bytes(16)), REGTEST_HRP)
    address = args.address or faucet.address(0)
    devnet = BitcoinDevnet(port=args.port)
    try:
        await devnet.start()
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await devnet.fund(faucet)
        assert devnet.rpc is not None
        funded = []
        for target, amount_sat in funding:
            try:
                payment = await faucet.pay(devnet.rpc, target, amount_sat)
            except (WalletError, ValueError) as exc:
                print(f"devnet: cannot fund {target}: {exc}", file=sys.stderr)
                return 2
            funded.append(f"  funded {target} with {format_minor_units(amount_sat, 8)} BTC ({payment.txid})")
        if funded:
            await devnet.mine(1, address)
        print(
            f"bitcoin regtest node (bcoin, pid {devnet.pid}) at {devnet.url}\n"
            f"  RPC user: any, password (api key): {devnet.api_key}\n"
            f"  mined {SEGWIT_HEIGHT} blocks to the faucet {faucet.address(0)} (segwit active); "
            f"addresses start with {REGTEST_HRP}1\n"
            + "".join(line + "\n" for line in funded)
            + f"  gateway: CRYPTOCITY_BITCOIN__HRP={REGTEST_HRP} CRYPTOCITY_BITCOIN__RPC__URL={devnet.url} "
            f"CRYPTOCITY_BITCOIN__RPC__PASSWORD={devnet.api_key}\n"
            f'  mine on demand: POST {{"method": "generatetoaddress", "params": [1, "{address}"]}}'
            " to the RPC URL\n"
            "Stop with Ctrl-C.",
            flush=True,
        )
        while not stop.is_set():
            if args.mine_every > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=args.mine_every)
                if not stop.is_set():
                    mined = await devnet.mine(1, address)
                    print(f"mined {mined[0]}", flush=True)
            else:
                await stop.wait()
    finally:
        await devnet.stop()
    return 0


def _parse_eth_amounts(option: str, items: list[str], unit: str, decimals: int) -> list[tuple[str, int]]:
    """``ADDRESS=AMOUNT`` pairs into (address, minor units); a bad pair is a usage error naming it."""
    from sandbox.devnets.ethereum import parse_address

    parsed: list[tuple[str, int]] = []
    for item in items:
        address, sep, amount = item.partition("=")
        try:
            if not sep:
                raise AmountError(f"expected ADDRESS={unit}")
            parsed.append((parse_address(address), parse_decimal_amount(amount, decimals)))
        except ValueError as exc:  # AmountError is one
            raise SystemExit(f"devnet: {option} {item!r}: {exc}") from None
    return parsed


async def _devnet_ethereum(args: argparse.Namespace) -> int:
    from sandbox.devnets.ethereum import DEFAULT_MNEMONIC, TOKEN_DECIMALS, EthereumDevnet

    funding = _parse_eth_amounts("--fund", args.fund, "ETH", 18)
    minting = _parse_eth_amounts("--mint", args.mint, "USDT", TOKEN_DECIMALS)
    if args.block_time is not None and args.block_time <= 0:
        raise SystemExit("devnet: --block-time must be a positive number of seconds")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    devnet = EthereumDevnet(port=args.port, block_time=args.block_time)
    try:
        await devnet.start()
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1
    try:
        sent: list[tuple[str, str]] = []
        for target, wei in funding:
            try:
                funded = await devnet.fund_eth(target, wei, transfer=True, wait=False)
            except DevnetError as exc:
                print(f"devnet: cannot fund {target}: {exc}", file=sys.stderr)
                return 2
            assert funded is not None
            sent.append((f"  funded {target} with {format_minor_units(wei, 18)} ETH", funded))
        for target, units in minting:
            minted = await devnet.mint(target, units, wait=False)
            sent.append((f"  minted {format_minor_units(units, TOKEN_DECIMALS)} tUSDT to {target}", minted))
        if sent and not devnet.automine:
            await devnet.mine_until_pool_empty()
        for _, sent_hash in sent:
            await devnet.wait_for_receipt(sent_hash)
        accounts = "".join(f"    ({a.index}) {a.address} key {a.private_key}\n" for a in devnet.accounts)
        mining = "automine (a block per transaction)"
        if args.block_time is not None:
            mining = f"a block every {args.block_time:g} s"
        print(
            f"ethereum devnet (anvil, pid {devnet.pid}) at {devnet.url}\n"
            f"  chain id: {devnet.chain_id}; mining: {mining}; WebSocket on the same port (ws://)\n"
            f"  TestUSDT (tUSDT, {TOKEN_DECIMALS} decimals) at {devnet.token_address}, "
            f"minter {devnet.owner.address}\n"
            f'  dev accounts, 10000 ETH each (mnemonic "{DEFAULT_MNEMONIC}"):\n'
            + accounts
            + "".join(f"{line} ({tx_hash})\n" for line, tx_hash in sent)
            + f"  gateway: CRYPTOCITY_ETHEREUM__RPC__URL={devnet.url} "
            f"CRYPTOCITY_ETHEREUM__CHAIN_ID={devnet.chain_id} "
            f"CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS={devnet.token_address}\n"
            "Stop with Ctrl-C.",
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if devnet.returncode is not None:
                print(f"devnet: anvil exited with code {devnet.returncode}", file=sys.stderr)
                return 1
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1
    finally:
        await devnet.stop()
    return 0


async def _rates(config: Config, *, as_json: bool, wait: float) -> int:
    """One look at the rates as the gateway would see them now (live providers are asked once)."""
    rates = ConfiguredRates(config.rates, SystemClock())
    await rates.start()
    try:
        if rates.refresher is not None:
            deadline = asyncio.get_running_loop().time() + wait
            while asyncio.get_running_loop().time() < deadline:
                health = rates.refresher.health().values()
                if all(h.last_success_at is not None or h.last_error_at is not None for h in health):
                    break
                await asyncio.sleep(0.1)
        view = rates.view()
    finally:
        await rates.stop()
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        _print_rates(view)
    return 0 if view["rates"] else 1


def _print_rates(view: dict[str, object]) -> None:
    console = Console()
    table = Table(title=f"KZT rates ({view['mode']}, {view['taken_at']})")
    for column in ("asset", "KZT per unit", "sources", "observed at"):
        table.add_column(column)
    rates = view["rates"]
    assert isinstance(rates, dict)
    for asset, rate in rates.items():
        table.add_row(asset, rate["kzt_per_unit"], "\n".join(rate["sources"]), rate["observed_at"])
    unavailable = view["unavailable"]
    assert isinstance(unavailable, dict)
    for asset, reason in unavailable.items():
        table.add_row(asset, "unavailable", reason, "")
    console.print(table)
    providers = view["providers"]
    assert isinstance(providers, dict)
    if providers:
        health = Table(title="providers")
        for column in ("provider", "healthy", "last success", "last error"):
            health.add_column(column)
        for name, state in providers.items():
            health.add_row(
                name,
                "yes" if state["healthy"] else "NO",
                state["last_success_at"] or "-",
                state["last_error"] or "",
            )
        console.print(health)


async def _migrate(config: Config) -> int:
    store = await open_store(config.store)
    await store.close()
    print(f"migrations applied to {describe_store(config.store)}")
    return 0


async def _with_registry(config: Config) -> tuple[MerchantRegistry, Store]:
    store = await open_store(config.store)
    registry = MerchantRegistry(
        store, SystemClock(), key_environment=config.merchants.api_key_environment, auth_cache_seconds=0
    )
    return registry, store


def _assets_for(btc: str | None, eth: str | None, text: str) -> list[Asset]:
    if text:
        return [Asset(code.strip().upper()) for code in text.split(",") if code.strip()]
    return ([Asset.BTC] if btc else []) + ([Asset.ETH, Asset.USDT] if eth else [])


async def _merchants(config: Config, args: argparse.Namespace) -> int:
    registry, store = await _with_registry(config)
    try:
        if args.action == "create":
            try:
                assets = _assets_for(args.btc_xpub, args.eth_xpub, args.assets)
            except ValueError as exc:
                print(f"--assets: {exc}", file=sys.stderr)
                return 2
            merchant, key = await registry.create(
                args.name,
                btc_account_key=args.btc_xpub,
                eth_account_key=args.eth_xpub,
                accepted_assets=assets,
                default_expiry_seconds=args.default_expiry,
                spread_bps=args.spread_bps,
            )
            print(json.dumps({"merchant": merchant.public_view(), "api_key": key.plaintext}, indent=2))
            print("Store the API key now: it is shown only once.", file=sys.stderr)
        elif args.action == "list":
            for merchant in await registry.list_all():
                keys = await registry.list_keys(merchant.id)
                view = merchant.public_view()
                view["keys"] = [
                    {"lookup": k.lookup, "label": k.label, "revoked": k.revoked_at is not None} for k in keys
                ]
                print(json.dumps(view))
        elif args.action in ("add-key", "rotate-key"):
            change = registry.add_key if args.action == "add-key" else registry.rotate_key
            key = await change(args.merchant_id)
            print(json.dumps({"merchant_id": args.merchant_id, "api_key": key.plaintext}))
        elif args.action == "revoke-key":
            await registry.revoke_key(args.merchant_id, args.lookup)
            print(f"revoked key {args.lookup}")
        elif args.action == "disable":
            await registry.disable(args.merchant_id)
            print(f"disabled {args.merchant_id}")
        elif args.action == "set-spread":
            merchant = await registry.set_spread(args.merchant_id, args.spread_bps)
            print(json.dumps(merchant.public_view()))
        return 0
    except MerchantError as exc:
        print(f"invalid merchant: {exc}", file=sys.stderr)
        return 2
    except MerchantNotFound as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


async def _demo_merchant(config: Config) -> str:
    """Reuse (or create) the demo merchant and return a fresh API key for it."""
    registry, store = await _with_registry(config)
    try:
        existing = [m for m in await registry.list_all() if m.name == DEMO_MERCHANT_NAME and m.active]
        if existing:
            return (await registry.add_key(existing[0].id, label="demo")).plaintext
        btc, eth = demo_account_keys()
        _, key = await registry.create(
            DEMO_MERCHANT_NAME,
            btc_account_key=btc,
            eth_account_key=eth,
            accepted_assets=[Asset.BTC, Asset.ETH, Asset.USDT],
        )
        return key.plaintext
    finally:
        await store.close()


@dataclass(frozen=True, slots=True)
class _DemoChains:
    """Local chains started for `serve --devnets`, and what a resident needs to pay on them."""

    bitcoin: BitcoinDevnet
    ethereum: EthereumDevnet
    resident_file: Path
    resident_btc: str
    resident_eth: str
    # The wallet's first receive and change scripts: registered with the sandbox so its payments count.
    resident_scripts: tuple[str, ...] = ()


async def _start_devnets(config: Config, stack: contextlib.AsyncExitStack) -> tuple[Config, _DemoChains]:
    """Start bcoin and anvil, fund a fresh demo resident on both, and point the gateway's watchers at them."""
    words = bip39.mnemonic_from_bytes(secrets.token_bytes(16))
    workdir, resident_file = await asyncio.to_thread(_write_demo_resident, Path(config.store.path), words)
    btc = await stack.enter_async_context(BitcoinDevnet(log_path=workdir / "bcoin.log"))
    eth = await stack.enter_async_context(EthereumDevnet(log_path=workdir / "anvil.log"))
    btc_wallet = BitcoinWallet.from_mnemonic(words, REGTEST_HRP)
    await btc.fund(btc_wallet)  # 432 coinbases: segwit active, hundreds of mature coins
    eth_wallet = EthereumWallet.from_mnemonic(words)
    await eth.fund_eth(eth_wallet.address, 100 * 10**18)
    await eth.mint(eth_wallet.address, 1_000_000 * 10**6)
    data = config.model_dump()
    data["bitcoin"].update(hrp=REGTEST_HRP, network="regtest")
    data["bitcoin"]["rpc"].update(url=btc.url, user="cryptocity", password=btc.api_key)
    data["ethereum"].update(chain_id=eth.chain_id, token_address=eth.token_address)
    data["ethereum"]["rpc"].update(url=eth.url)
    scripts = tuple(
        btc_wallet.script_pubkey(index, chain=chain).hex()
        for chain in (EXTERNAL, CHANGE)
        for index in range(50)
    )
    chains = _DemoChains(btc, eth, resident_file, btc_wallet.address(1), eth_wallet.address, scripts)
    return Config.model_validate(data), chains


async def _register_demo_resident(config: Config, chains: _DemoChains) -> str:
    """The demo resident as the KYC operator would register it (basic tier), with its wallets."""
    store = await open_store(config.store)
    try:
        registry = Registry(store, SystemClock())
        resident = await registry.add_resident(Tier.BASIC, originator_data=True)
        for script in chains.resident_scripts:
            await registry.register_wallet(resident.id, "bitcoin", script, "demo wallet")
        await registry.register_wallet(resident.id, "ethereum", chains.resident_eth, "demo wallet")
        return resident.id
    finally:
        await store.close()


def _write_demo_resident(store_path: Path, words: str) -> tuple[Path, Path]:
    """The devnets' folder beside the store, and the demo resident's recovery words in it (mode 600)."""
    workdir = store_path.resolve().parent / "devnets"
    workdir.mkdir(parents=True, exist_ok=True)
    resident_file = workdir / "demo-resident.words"  # regtest and anvil coins only: worthless by design
    resident_file.write_text(words + "\n", encoding="utf-8")
    resident_file.chmod(0o600)
    return workdir, resident_file


async def _mine_bitcoin_every(devnet: BitcoinDevnet, seconds: float, address: str) -> None:
    """Blocks on a schedule, so payments that need confirmations settle in the demo without help."""
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(RpcUnavailable, RpcError):
            await devnet.mine(1, address)


async def _serve(config: Config, *, demo: bool, devnets: bool = False) -> int:
    async with contextlib.AsyncExitStack() as stack:
        chains = None
        if devnets:
            config, chains = await _start_devnets(config, stack)
            miner = asyncio.create_task(_mine_bitcoin_every(chains.bitcoin, 10.0, chains.resident_btc))
            stack.callback(miner.cancel)
        return await _serve_gateway(config, demo=demo, chains=chains)


def _pilot_extensions(config: Config, key: AuditKey | None = None) -> Extensions:
    """The pilot around the gateway: the audit log and the ledger always; the sandbox's limits, holds and
    regulator API unless ``sandbox.enabled`` is off. ``key`` authenticates the audit head (default: the
    configured key, if any)."""
    audit_key = key or AuditKey.load()  # None: entries are appended, heads carry no MAC

    async def audit_startup(app: web.Application) -> None:
        await record_startup(app[STORE], app[CLOCK], config, audit_key)

    audit = audit_extensions(audit_key)
    extra = Extensions(consumers=audit.consumers, on_start=[audit_startup])
    if config.sandbox.enabled:
        return sandbox_extensions(config.sandbox, extra)
    ledger = ledger_extensions()
    return Extensions(
        consumers=[*ledger.consumers, *extra.consumers], routes=ledger.routes, on_start=extra.on_start
    )


def _serve_processes(config: Config, args: argparse.Namespace) -> int:
    """`serve --processes N`: the supervisor (gateway/cluster/supervisor.py), or one of its workers."""
    if args.worker:
        return asyncio.run(_serve_worker(config, args.worker, args.supervisor_pid))
    if args.processes < 1:
        print("serve --processes: give a number of processes of at least 1", file=sys.stderr)
        return 2
    if not config.store.dsn:
        print(
            f"serve --processes {args.processes}: several processes need the PostgreSQL store (set store.dsn);"
            " the SQLite store belongs to a single process",
            file=sys.stderr,
        )
        return 2
    if args.devnets:
        print("serve --devnets runs its local chains in one process: leave out --processes", file=sys.stderr)
        return 2
    # Bound here first (never listening) to keep the port for the workers and to resolve port 0.
    family = socket.AF_INET6 if ":" in config.server.host else socket.AF_INET
    reserved = socket.socket(family)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind((config.server.host, config.server.port))
    except OSError as exc:
        print(f"serve: cannot bind {config.server.host}:{config.server.port}: {exc}", file=sys.stderr)
        return 1
    port = int(reserved.getsockname()[1])
    base = f"http://{config.server.host}:{port}"
    try:
        # Once here, so an unreachable store is one clear error instead of N workers restarting.
        asyncio.run(_open_store_once(config))
        demo_key = asyncio.run(_demo_merchant(config)) if args.demo else None
    except BaseException:
        reserved.close()
        raise
    prefix = [sys.executable, "-m", "sandbox.cli"]
    if args.config is not None:
        prefix += ["--config", str(Path(args.config).resolve())]
    serve = [*prefix, "serve", "--host", config.server.host, "--port", str(port)]
    commands = [
        [*serve, "--worker", str(index), "--supervisor-pid", str(os.getpid())]
        for index in range(1, args.processes + 1)
    ]
    print(
        f"cryptocity supervisor (pid {os.getpid()}): {args.processes} gateway processes on {base}", flush=True
    )
    if demo_key:
        _print_demo(base, demo_key)
    try:
        return asyncio.run(
            Supervisor(commands, stop_timeout_seconds=config.server.shutdown_timeout_seconds + 10).run()
        )
    finally:
        reserved.close()


async def _open_store_once(config: Config) -> None:
    """Open the store (applying pending migrations) and close it again."""
    store = await open_store(config.store)
    await store.close()


async def _serve_worker(config: Config, index: int, supervisor_pid: int) -> int:
    """One worker of `serve --processes`: a whole gateway on the shared port, ending with its supervisor."""
    return await _serve_gateway(config, demo=False, chains=None, worker=index, supervisor_pid=supervisor_pid)


async def _supervisor_gone(pid: int, stop: asyncio.Event) -> None:
    """Stop (gracefully) once the supervisor that started this worker is gone (this process re-parented)."""
    while os.getppid() == pid:
        await asyncio.sleep(1.0)
    stop.set()


async def _serve_gateway(
    config: Config, *, demo: bool, chains: _DemoChains | None, worker: int = 0, supervisor_pid: int = 0
) -> int:
    demo_key = await _demo_merchant(config) if demo else None
    if chains is not None and config.sandbox.enabled:
        await _register_demo_resident(config, chains)
    # Bind first, so that with port 0 the links the API returns carry the port actually chosen.
    listener = socket.socket(socket.AF_INET6 if ":" in config.server.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if worker:  # the supervisor's workers share one port; the kernel spreads connections over them
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((config.server.host, config.server.port))
    if config.server.port == 0:
        bound_server = config.server.model_copy(update={"port": listener.getsockname()[1]})
        config = config.model_copy(update={"server": bound_server})
    app = create_app(config, _pilot_extensions(config))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_timeout_seconds)
    await runner.setup()
    site = web.SockSite(runner, listener)
    await site.start()
    bound = runner.addresses[0]
    base = f"http://{bound[0]}:{bound[1]}"
    print(
        f"cryptocity gateway listening on {base}"
        + (f" (worker {worker}, pid {os.getpid()})" if worker else ""),
        flush=True,
    )
    if demo_key:
        _print_demo(base, demo_key)
    if chains is not None:
        _print_chains(chains)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_supervisor_gone(supervisor_pid, stop)) if supervisor_pid else None
    await stop.wait()
    if watch is not None:
        watch.cancel()
    print("shutting down", flush=True)
    await runner.cleanup()
    return 0


def _print_demo(base: str, key: str) -> None:
    print(
        f"""
Demo merchant ready. Its API key (shown once): {key}

Create an invoice:
  curl -s -X POST {base}/v1/invoices \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -H 'Idempotency-Key: demo-1' \\
    -d '{{"amount": "12500.00", "currency": "KZT", "order_id": "demo-1", "description": "Coffee and baursaks"}}'

Then look at it, list invoices, get a QR code:
  curl -s {base}/v1/invoices -H 'Authorization: Bearer {key}'
  curl -s {base}/v1/invoices/<id>/qr/BTC.png -H 'Authorization: Bearer {key}' -o btc.png

API description: {base}/openapi.json    Health: {base}/healthz    Stop with Ctrl-C.
""",
        flush=True,
    )


def _print_chains(chains: _DemoChains) -> None:
    words = chains.resident_file
    print(
        f"""Local chains are running and watched (stopped with the gateway):
  bitcoin regtest (bcoin): {chains.bitcoin.url}  api key {chains.bitcoin.api_key}  (a block every 10 s)
  ethereum (anvil, chain id {chains.ethereum.chain_id}): {chains.ethereum.url}  tUSDT at {chains.ethereum.token_address}
A demo resident's wallet (recovery words in {words}) holds regtest BTC, ETH and tUSDT. Pay an invoice with it:
  .venv/bin/cryptocity wallet pay '<ETH or USDT uri of the invoice>' --rpc {chains.ethereum.url} --mnemonic-file {words}
  .venv/bin/cryptocity wallet pay '<BTC uri of the invoice>' --rpc {chains.bitcoin.url} \\
    --rpc-password {chains.bitcoin.api_key} --mnemonic-file {words} --hrp {REGTEST_HRP} --from-height 0
  (or pass the QR image: curl the invoice's qr/<ASSET>.png and give the file instead of the URI)
""",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
