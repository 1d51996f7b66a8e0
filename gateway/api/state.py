"""Typed keys for what the application and each request carry (no module globals)."""

from __future__ import annotations

from aiohttp import web

from gateway.accounts.merchants import MerchantRegistry
from gateway.address_pool import AddressPool
from gateway.api.auth_limits import AuthFailureLimiter
from gateway.clock import Clock
from gateway.cluster.leader import Leadership
from gateway.config import Config
from gateway.extensions import Extensions
from gateway.invoices.service import InvoiceService
from gateway.outbox import OutboxRunner
from gateway.rates.live import ConfiguredRates
from gateway.store import Store
from gateway.webhooks.dispatcher import WebhookDispatcher

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
EXTENSIONS = web.AppKey("extensions", Extensions)
STORE = web.AppKey("store", Store)
REGISTRY = web.AppKey("registry", MerchantRegistry)
ADDRESSES = web.AppKey("addresses", AddressPool)
SERVICE = web.AppKey("service", InvoiceService)
OUTBOX = web.AppKey("outbox", OutboxRunner)
RATES = web.AppKey("rates", ConfiguredRates)
WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)
# Failed authentications per client address (gateway/api/auth_limits.py), in this process's memory.
AUTH_LIMITER = web.AppKey("auth_limiter", AuthFailureLimiter)
# Whether this process leads (runs the watchers, the rates refresher, the outbox and the sweeper).
LEADERSHIP = web.AppKey("leadership", Leadership)
# Chain watchers running in this process, by chain name ("bitcoin"); /readyz reports their health.
WATCHERS = web.AppKey("watchers", dict)

# Per-request values.
MERCHANT_ID = web.RequestKey("merchant_id", str)
REQUEST_ID = web.RequestKey("request_id", str)
