"""Everything the sandbox adds to the gateway, composed into one ``Extensions``: the ledger, the payment
policy and invoice gate, the regulator API at ``/sandbox/v1`` and its dashboard at ``/sandbox/dashboard``.

The gateway knows none of this: ``cryptocity serve`` (sandbox/cli.py) builds these extensions and hands
them to ``create_app``. The start hook takes the store for the gate and, when the National Bank's rates
are polled, the official USD/KZT rate for USD-denominated limits (otherwise ``sandbox.usd_kzt``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.api.state import RATES, STORE
from gateway.config import SandboxConfig
from gateway.extensions import Extensions, RouteExtension
from gateway.rates.composite import CompositeRates
from sandbox.ledger.api import ledger_extensions
from sandbox.limits import SandboxRules
from sandbox.policy import SandboxGate, SandboxPolicy
from sandbox.regulator.api import regulator_app
from sandbox.regulator.dashboard import DASHBOARD_PREFIX, dashboard_app
from sandbox.regulator.openapi import REGULATOR_PATHS, REGULATOR_SECURITY


class OfficialUsdRate:
    """The National Bank's latest USD/KZT quote, once the app's rates exist; None before or without it."""

    def __init__(self) -> None:
        self.rates: Any = None

    def __call__(self) -> Decimal | None:
        # The live composite is ``rates.composite`` (``rates.source`` wraps it when several processes share
        # the store); a follower's composite holds no quotes, so it uses the configured rate, as when the
        # National Bank is down.
        source = getattr(self.rates, "composite", None) or getattr(self.rates, "source", None)
        if isinstance(source, CompositeRates):
            for quote in source.quotes():
                if quote.official and tuple(quote.pair) == ("USD", "KZT"):
                    return quote.price
        return None


def sandbox_extensions(config: SandboxConfig, extra: Extensions | None = None) -> Extensions:
    """The ledger, the sandbox's rules, the regulator API and dashboard (``extra`` adds consumers or hooks)."""
    rules = SandboxRules(config)
    usd = OfficialUsdRate()
    policy = SandboxPolicy(rules, usd)
    gate = SandboxGate(None, policy, rules)

    async def on_start(app: web.Application) -> None:
        gate.store = app[STORE]
        usd.rates = app[RATES]

    ledger = ledger_extensions()
    regulator = RouteExtension(
        "/sandbox/v1",
        regulator_app(rules, policy),
        openapi_paths=REGULATOR_PATHS,
        openapi_security_schemes=REGULATOR_SECURITY,
    )
    # The page is public (it holds no data); its script calls /sandbox/v1 with the regulator's token.
    dashboard = RouteExtension(
        DASHBOARD_PREFIX, dashboard_app(config.timezone, prefix=DASHBOARD_PREFIX, api_prefix=regulator.prefix)
    )
    more = extra or Extensions()
    return Extensions(
        invoice_gate=gate,
        payment_policy=policy,
        consumers=[*ledger.consumers, *more.consumers],
        routes=[*ledger.routes, regulator, dashboard, *more.routes],
        on_start=[on_start, *ledger.on_start, *more.on_start],
    )
