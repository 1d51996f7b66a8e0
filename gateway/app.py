"""The application factory: ``create_app(config, extensions)`` wires the gateway together.

Each long-lived resource (store, address pool, outbox consumers, expiry sweeper) is set up and torn down in
its own cleanup context, so teardown runs only for what was set up, in reverse order, and background tasks
are cancelled and awaited on exit.

The single-writer jobs (chain watchers, rates refresher, outbox runner, expiry sweeper) run only while this
process leads (gateway/cluster/leader.py): each context registers its job with the app's ``Leadership``,
which starts it at once when the process leads (always with SQLite; with PostgreSQL when this process
holds the leader lock) and stops and restarts it as leadership comes and goes. Everything else (the API,
the webhook dispatcher, the checkout hub) runs in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web
from web3 import AsyncWeb3

from gateway.accounts.merchants import MerchantRegistry
from gateway.address_pool import AddressPool, IndexAllocator
from gateway.aio import cancel_and_wait, exit_with_parent
from gateway.api import health, invoices
from gateway.api import rates as rates_api
from gateway.api.auth_limits import AuthFailureLimiter, AuthFailureLimits
from gateway.api.metrics import setup_metrics
from gateway.api.middleware import (
    auth_failure_limit_middleware,
    body_size_middleware,
    merchant_auth_middleware,
    request_context_middleware,
)
from gateway.api.openapi import build_openapi, guarded_prefixes
from gateway.api.problems import MAX_BODY_KEY, problem_middleware
from gateway.api.state import (
    ADDRESSES,
    AUTH_LIMITER,
    CLOCK,
    CONFIG,
    EXTENSIONS,
    LEADERSHIP,
    OUTBOX,
    RATES,
    REGISTRY,
    SERVICE,
    STORE,
    WATCHERS,
    WEBHOOKS,
)
from gateway.chains.bitcoin import BitcoinWatcher, WatcherSettings, check_bitcoin_node
from gateway.chains.bitcoin_rpc import BitcoinRpc, RpcEndpoint, RpcUnavailable
from gateway.chains.chain_state import ChainState
from gateway.chains.ethereum import EthereumSettings, EthereumWatcher, check_ethereum_node
from gateway.chains.watcher import WatcherRefused
from gateway.chains.web3_http import IdCheckedHTTPProvider, keep_alive_web3
from gateway.checkout import setup_checkout
from gateway.clock import Clock, SystemClock
from gateway.cluster import (
    CommitNotifications,
    ElectionSettings,
    Elector,
    Leadership,
    PostgresElection,
    SingleProcess,
    leader_lock_key,
)
from gateway.cluster.leader import ELECTION_SESSION
from gateway.config import Config
from gateway.extensions import Extensions
from gateway.invoices.service import InvoiceService, MerchantTerms
from gateway.money import Asset, Chain
from gateway.outbox import OutboxRunner
from gateway.rates import RateSource
from gateway.rates.history import RateHistory
from gateway.rates.live import ConfiguredRates
from gateway.store import PostgresStore, Store, open_store
from gateway.webhooks import api as webhooks_api
from gateway.webhooks.dispatcher import WebhookDispatcher, settings_from_config
from gateway.webhooks.endpoints import EndpointRegistry
from gateway.webhooks.fanout import WebhookFanout
from gateway.webhooks.targets import TargetPolicy

log = structlog.get_logger("gateway.app")


def create_app(
    config: Config,
    extensions: Extensions | None = None,
    *,
    clock: Clock | None = None,
    rates: RateSource | None = None,
    store: Store | None = None,
) -> web.Application:
    """Build the gateway. ``store`` may be passed in (tests share one); otherwise it is opened from config."""
    ext = extensions or Extensions()
    server = config.server
    app = web.Application(
        client_max_size=server.max_body_bytes,
        middlewares=[
            request_context_middleware,
            auth_failure_limit_middleware(guarded_prefixes(ext.routes)),
            problem_middleware,
            body_size_middleware,
            merchant_auth_middleware,
        ],
        # aiohttp's keep-alive timer runs from a connection's opening and from each answer until the next
        # complete request head, so it is the deadline for request heads too (slow clients are closed).
        handler_args={"keepalive_timeout": server.header_timeout_seconds},
    )
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    limits = AuthFailureLimits(
        server.auth_failures_per_minute, server.auth_failure_burst, server.auth_failure_max_clients
    )
    app[AUTH_LIMITER] = AuthFailureLimiter(limits, app[CLOCK])
    app[EXTENSIONS] = ext
    app[MAX_BODY_KEY] = config.server.max_body_bytes
    app.on_shutdown.append(_stop_seeking_leadership)
    app.cleanup_ctx.append(_chain_guard_ctx)
    app.cleanup_ctx.append(_store_ctx(store))
    app.cleanup_ctx.append(_cluster_ctx)
    app.cleanup_ctx.append(_services_ctx(rates))
    app.cleanup_ctx.append(_webhooks_ctx)
    app.cleanup_ctx.append(_outbox_ctx)
    app.cleanup_ctx.append(_expiry_sweeper_ctx)
    app.cleanup_ctx.append(_bitcoin_watcher_ctx)
    app.cleanup_ctx.append(_ethereum_watcher_ctx)
    app.add_routes(invoices.routes)
    app.add_routes(health.routes)
    app.add_routes(rates_api.routes)
    app.add_routes(webhooks_api.routes)
    setup_metrics(app)  # GET /metrics for Prometheus, read from the store at each scrape
    setup_checkout(app)  # the public /i/ page and its event-stream hub (after the store's context)
    openapi = build_openapi(ext.routes, invoices=config.invoices)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    app.router.add_get("/openapi.json", openapi_json)
    for route in ext.routes:
        app.add_subapp(route.prefix, route.app)
    return app


def _store_ctx(given: Store | None) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        sys.setswitchinterval(cfg.server.switch_interval_ms / 1000)
        store = given or await open_store(cfg.store)
        app[STORE] = store
        yield
        if given is None:
            await store.close()

    return ctx


async def _stop_seeking_leadership(app: web.Application) -> None:
    """Shutdown has begun (in-flight requests are draining): a follower must not take the lead now."""
    if LEADERSHIP in app:
        app[LEADERSHIP].seeking = False


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Who leads: with SQLite this process, always; with PostgreSQL the holder of the leader lock, decided
    now (a process alone leads before its first request) and kept up by the election loop. With PostgreSQL
    also the LISTEN that turns other processes' commits into ``on_commit`` wake-ups."""
    store, cfg = app[STORE], app[CONFIG].cluster
    clustered = isinstance(store, PostgresStore)
    leadership = Leadership(clustered=clustered)
    app[LEADERSHIP] = leadership
    notifications: CommitNotifications | None = None
    elector: Elector
    if isinstance(store, PostgresStore):
        pg = store
        elector = PostgresElection(
            leadership,
            lambda: pg.connect_dedicated(settings=ELECTION_SESSION),
            leader_lock_key(pg.schema),
            ElectionSettings(
                retry_seconds=cfg.retry_seconds,
                check_seconds=cfg.check_seconds,
                check_timeout_seconds=cfg.check_timeout_seconds,
                reconnect_max_seconds=cfg.reconnect_max_seconds,
            ),
        )
        notifications = CommitNotifications(
            pg,
            check_seconds=cfg.check_seconds,
            check_timeout_seconds=cfg.check_timeout_seconds,
            reconnect_max_seconds=cfg.reconnect_max_seconds,
        )
        notifications.start()
    else:
        elector = SingleProcess(leadership)
    try:
        await elector.start()
    except BaseException:
        if notifications is not None:
            await notifications.stop()
        raise
    yield
    await elector.stop()  # every context has stopped its own job by now; this releases the lock
    if notifications is not None:
        await notifications.stop()


def _services_ctx(rates: RateSource | None) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        store, clock = app[STORE], app[CLOCK]
        leadership = app[LEADERSHIP]
        registry = MerchantRegistry(
            store,
            clock,
            key_environment=cfg.merchants.api_key_environment,
            auth_cache_seconds=cfg.merchants.auth_cache_seconds,
        )
        workers = None
        if cfg.addresses.derive_workers > 0:
            # spawn, not fork: the gateway process already runs threads (store commits, aiosqlite readers)
            workers = ProcessPoolExecutor(
                cfg.addresses.derive_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        pool = AddressPool(
            btc_hrp=cfg.bitcoin.bech32_hrp,
            pool_size=cfg.addresses.pool_size,
            executor=workers,
            # a shared store: other processes take blocks of the same counter; derive only our own
            blocks_only=leadership.clustered,
        )
        # The fixed table while rates.fixed is on; otherwise the live providers behind the composite. With no
        # fresh rate, creation answers 503 (what the pilot wants without a trustworthy rate).
        history = RateHistory(store, clock, retention_days=cfg.rates.history_retention_days)
        configured = ConfiguredRates(
            cfg.rates,
            clock,
            source=rates,
            history=history,
            # several processes: only the leader polls the providers, the others read what it recorded
            shared_store=store if leadership.clustered else None,
            stored_poll_seconds=cfg.cluster.rates_poll_seconds,
        )
        await configured.start_following()

        @contextlib.asynccontextmanager
        async def refresher() -> AsyncIterator[None]:
            await configured.start_leading()
            try:
                yield
            finally:
                await configured.stop_leading()

        await leadership.add("rates", refresher)
        app[RATES] = configured
        source = configured.source

        async def merchant_terms(merchant_id: str) -> MerchantTerms:
            merchant = await registry.get_cached(merchant_id)
            return MerchantTerms(
                id=merchant.id,
                name=merchant.name,
                active=merchant.active,
                accepted_assets=merchant.accepted_assets,
                btc_account_key=merchant.btc_account_key,
                eth_account_key=merchant.eth_account_key,
                default_expiry_seconds=merchant.default_expiry_seconds,
                spread_bps=merchant.spread_bps,
            )

        indexes = IndexAllocator(store, cfg.addresses.reserve_block, on_reserved=pool.reserved)
        app[REGISTRY] = registry
        app[ADDRESSES] = pool
        app[SERVICE] = InvoiceService(
            store=store,
            clock=clock,
            config=cfg,
            rates=source,
            addresses=pool,
            indexes=indexes,
            extensions=app[EXTENSIONS],
            merchant_terms=merchant_terms,
        )
        await _prime_address_pool(store, pool)
        for hook in app[EXTENSIONS].on_start:
            await hook(app)
        yield
        await leadership.remove("rates")
        await configured.stop()
        await indexes.close()
        await pool.close()
        if workers is not None:
            workers.shutdown(wait=True, cancel_futures=True)

    return ctx


async def _prime_address_pool(store: Store, pool: AddressPool) -> None:
    rows = await store.read(
        lambda tx: tx.fetchall("SELECT chain, account_key, next_index FROM address_counters")
    )
    for row in rows:
        pool.prime(Chain(row["chain"]), row["account_key"], int(row["next_index"]))


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The endpoint registry for the API, and the dispatcher delivering what the fan-out consumer queues."""
    cfg = app[CONFIG].webhooks
    policy = TargetPolicy(
        allow_loopback=cfg.allow_loopback, allow_private=cfg.allow_private, require_https=cfg.require_https
    )
    app[webhooks_api.ENDPOINTS] = EndpointRegistry(
        app[STORE], app[CLOCK], policy, max_per_merchant=cfg.max_endpoints_per_merchant
    )
    dispatcher = WebhookDispatcher(app[STORE], app[CLOCK], settings_from_config(cfg), policy)
    app[WEBHOOKS] = dispatcher
    dispatcher.start()
    yield
    await dispatcher.stop()


async def _outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbox consumers (webhook fan-out, then the extensions'): a leader job, each resuming from its
    stored cursor whenever this process (again) leads."""
    consumers = [WebhookFanout(app[CLOCK]), *app[EXTENSIONS].consumers]
    runner = OutboxRunner(app[STORE], app[CLOCK], consumers)
    app[OUTBOX] = runner

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            await runner.stop()

    await app[LEADERSHIP].add("outbox", run)
    yield
    await app[LEADERSHIP].remove("outbox")


async def _expiry_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Housekeeping on the domain clock: expire invoices whose time is up, forget old Idempotency-Keys.
    A leader job: the invoices' expiry times are in the store, so a new leader's sweeper simply goes on."""
    service, interval = app[SERVICE], app[CONFIG].invoices.expiry_sweep_seconds
    forget_every = max(1, round(60 / interval))  # idempotency keys: about once a minute

    async def sweep() -> None:
        rounds = 0
        while True:
            try:
                await service.expire_due()
                if rounds % forget_every == 0:
                    await service.forget_idempotency_keys()
            except Exception:
                log.exception("invoices.housekeeping_failed")
            rounds += 1
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        task = asyncio.create_task(sweep(), name="expiry-sweeper")
        try:
            yield
        finally:
            await _cancel(task)

    await app[LEADERSHIP].add("expiry-sweeper", run)
    yield
    await app[LEADERSHIP].remove("expiry-sweeper")


async def _cancel(task: asyncio.Task[None]) -> None:
    """Stop a background loop and wait until it has unwound."""
    await cancel_and_wait(task)


def bitcoin_watcher_settings(cfg: Config) -> WatcherSettings:
    """The watcher's settings from config.toml; it follows confirmations as deep as any BTC rule needs."""
    deepest = max((r.confirmations for r in cfg.confirmations.rules if r.asset is Asset.BTC), default=1)
    watcher = cfg.bitcoin.watcher
    return WatcherSettings(
        hrp=cfg.bitcoin.bech32_hrp,
        network=cfg.bitcoin.network,
        allow_mainnet=cfg.bitcoin.allow_mainnet,
        genesis_hash=watcher.genesis_hash,
        poll_interval_seconds=watcher.poll_interval_seconds,
        start_height=watcher.start_height,
        confirmation_depth=max(deepest + 1, 6),
        fetch_batch=watcher.fetch_batch,
    )


async def _chain_guard_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refuse to start against a node on another chain (or on mainnet), before anything is opened.

    It runs first, so a refusal leaves no store, worker process or task behind. A node that does not answer
    now is no reason to refuse: its watcher checks again before its first block, and /readyz reports it.
    """
    cfg = app[CONFIG]
    if cfg.bitcoin.rpc.url:
        try:
            endpoint = _bitcoin_endpoint(cfg)
        except RpcUnavailable as exc:  # an unreadable cookie file: nothing could ever authenticate
            raise WatcherRefused(str(exc)) from None
        async with aiohttp.ClientSession() as session:
            rpc = BitcoinRpc(session, endpoint, timeout_seconds=5.0, retries=0)
            await _refuse_wrong_chain("bitcoin", check_bitcoin_node(rpc, bitcoin_watcher_settings(cfg)))
    if cfg.ethereum.rpc.url:
        w3 = AsyncWeb3(
            IdCheckedHTTPProvider(
                cfg.ethereum.rpc.url, request_kwargs={"timeout": 5.0}, exception_retry_configuration=None
            )
        )
        try:
            await _refuse_wrong_chain("ethereum", check_ethereum_node(w3, ethereum_watcher_settings(cfg)))
        finally:
            await w3.provider.disconnect()
    yield


async def _refuse_wrong_chain(chain: str, check: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(check, timeout=10.0)
    except WatcherRefused:
        raise
    except Exception as exc:
        log.warning("chain.unreachable_at_start", chain=chain, error=f"{type(exc).__name__}: {exc}")


def _bitcoin_endpoint(cfg: Config) -> RpcEndpoint:
    rpc_cfg = cfg.bitcoin.rpc
    if rpc_cfg.cookie_file:
        return RpcEndpoint.from_cookie(rpc_cfg.url, Path(rpc_cfg.cookie_file))
    return RpcEndpoint(rpc_cfg.url, rpc_cfg.user, rpc_cfg.password)


async def _bitcoin_watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Bitcoin watcher, when config.toml names a node (bitcoin.rpc.url); otherwise nothing runs."""
    cfg = app[CONFIG]
    app.setdefault(WATCHERS, {})
    rpc_cfg = cfg.bitcoin.rpc
    if not rpc_cfg.url:
        yield
        return
    session = aiohttp.ClientSession()
    rpc = BitcoinRpc(
        session, _bitcoin_endpoint(cfg), timeout_seconds=rpc_cfg.timeout_seconds, retries=rpc_cfg.retries
    )
    state = ChainState(app[STORE], Chain.BITCOIN, keep=cfg.bitcoin.watcher.recent_blocks)

    def watcher() -> BitcoinWatcher:
        return BitcoinWatcher(rpc, state, app[SERVICE], bitcoin_watcher_settings(cfg))

    await app[LEADERSHIP].add("bitcoin-watcher", _watcher_job(app, "bitcoin", watcher))
    log.info("bitcoin.watcher_configured", url=rpc_cfg.url, network=cfg.bitcoin.network)
    yield
    await app[LEADERSHIP].remove("bitcoin-watcher")
    await session.close()


class _Runs(Protocol):
    async def run(self) -> None: ...


def _watcher_job(app: web.Application, chain: str, build: Callable[[], _Runs]) -> Any:
    """A chain watcher as a leader job: a new watcher per leadership term (it reads its checkpoint and
    recent blocks from the store when it starts), shown in app[WATCHERS] while it runs."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        watcher = build()
        app[WATCHERS][chain] = watcher
        task = asyncio.create_task(watcher.run(), name=f"{chain}-watcher")
        try:
            yield
        finally:
            await _cancel(task)
            if app[WATCHERS].get(chain) is watcher:
                del app[WATCHERS][chain]

    return run


def ethereum_watcher_settings(cfg: Config) -> EthereumSettings:
    """The watcher's settings from config.toml; it follows confirmations as deep as any ETH/token rule."""
    evm_assets = (Asset.ETH, Asset.USDT)
    deepest = max((r.confirmations for r in cfg.confirmations.rules if r.asset in evm_assets), default=1)
    eth = cfg.ethereum
    return EthereumSettings(
        chain_id=eth.chain_id,
        tokens={eth.token_address.lower(): Asset.USDT},
        mainnet_chain_ids=tuple(eth.mainnet_chain_ids),
        allow_mainnet=eth.allow_mainnet,
        poll_interval_seconds=eth.watcher.poll_interval_seconds,
        start_block=eth.watcher.start_block,
        confirmation_depth=deepest + 1,
        log_span=eth.watcher.log_span,
        ws_url=eth.rpc.ws_url,
    )


async def _ethereum_watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Ethereum watcher, when config.toml names a node (ethereum.rpc.url); otherwise nothing runs."""
    cfg = app[CONFIG]
    app.setdefault(WATCHERS, {})
    if not cfg.ethereum.rpc.url:
        yield
        return
    w3 = await keep_alive_web3(cfg.ethereum.rpc.url, timeout_seconds=cfg.ethereum.rpc.timeout_seconds)
    state = ChainState(app[STORE], Chain.ETHEREUM, keep=cfg.ethereum.watcher.recent_blocks)

    def watcher() -> EthereumWatcher:
        return EthereumWatcher(w3, state, app[SERVICE], ethereum_watcher_settings(cfg))

    await app[LEADERSHIP].add("ethereum-watcher", _watcher_job(app, "ethereum", watcher))
    log.info("ethereum.watcher_configured", url=cfg.ethereum.rpc.url, chain_id=cfg.ethereum.chain_id)
    yield
    await app[LEADERSHIP].remove("ethereum-watcher")
    await w3.provider.disconnect()
