"""OpenAPI 3.1 document, generated from the pydantic models so the schema and the validation agree.

OpenAPI 3.1 uses JSON Schema 2020-12, which is what pydantic emits, so component schemas are taken as they
are. Route extensions (the regulator API later) add their own paths and schemas.

Every operation that declares ``security`` can answer 429 (too many failed authentications from the
client's address, gateway/api/auth_limits.py); that answer is added here to all of them, the extensions'
included, so no path can forget it. The same declarations say where the limit applies
(:func:`guarded_prefixes`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api import models
from gateway.api.middleware import MERCHANT_API_PREFIX
from gateway.config import InvoicesConfig
from gateway.extensions import RouteExtension
from gateway.webhooks import openapi as webhook_openapi

_COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    models.CreateInvoiceRequest,
    models.InvoiceOut,
    models.InvoiceList,
    models.PaymentList,
    models.ProblemOut,
    models.HealthOut,
    *webhook_openapi.REQUEST_MODELS,
    *webhook_openapi.RESPONSE_MODELS,
)
_REQUEST_MODELS = (models.CreateInvoiceRequest, *webhook_openapi.REQUEST_MODELS)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("ProblemOut")}},
    }


def _ok(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_INVOICE_ID = {
    "name": "invoice_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^inv_[0-9a-z]{26}$"},
}
_AUTH_ERRORS = {"401": _problem("Missing or invalid API key")}
_NOT_FOUND = {"404": _problem("No such invoice in your account")}


def _paths() -> dict[str, Any]:
    return {
        "/v1/invoices": {
            "post": {
                "operationId": "createInvoice",
                "summary": "Create a tenge-priced invoice with a fresh address per asset",
                "security": [{"apiKey": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[ -~]{1,255}$"},
                        "description": "Same key and body replays the first answer; same key, other body: 409.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateInvoiceRequest")}},
                },
                "responses": {
                    "201": _ok("InvoiceOut", "Created"),
                    "400": _problem("Malformed request"),
                    **_AUTH_ERRORS,
                    "403": _problem("Merchant disabled or invoice refused by policy"),
                    "409": _problem("Idempotency-Key reused with another body"),
                    "413": _problem("Body too large"),
                    "415": _problem("Body is not JSON"),
                    "422": _problem("Invalid field values"),
                    "503": _problem("No fresh exchange rate or storage unavailable"),
                },
            },
            "get": {
                "operationId": "listInvoices",
                "summary": "List invoices, newest first, with cursor pagination",
                "security": [{"apiKey": []}],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "starting_after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["new", "processing", "settled", "expired", "cancelled", "reversed"],
                        },
                    },
                    {"name": "order_id", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "created_gte",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "created_lt",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "responses": {
                    "200": _ok("InvoiceList"),
                    "400": _problem("Bad query"),
                    **_AUTH_ERRORS,
                    "404": _problem("starting_after names no invoice of yours"),
                },
            },
        },
        "/v1/invoices/{invoice_id}": {
            "get": {
                "operationId": "getInvoice",
                "summary": "Fetch one invoice",
                "security": [{"apiKey": []}],
                "parameters": [_INVOICE_ID],
                "responses": {"200": _ok("InvoiceOut"), **_AUTH_ERRORS, **_NOT_FOUND},
            }
        },
        "/v1/invoices/{invoice_id}/cancel": {
            "post": {
                "operationId": "cancelInvoice",
                "summary": "Cancel an invoice nothing confirmed has paid",
                "security": [{"apiKey": []}],
                "parameters": [_INVOICE_ID],
                "responses": {
                    "200": _ok("InvoiceOut"),
                    **_AUTH_ERRORS,
                    **_NOT_FOUND,
                    "409": _problem("The invoice can no longer be cancelled"),
                },
            }
        },
        "/v1/invoices/{invoice_id}/accept-late": {
            "post": {
                "operationId": "acceptLatePayment",
                "summary": "Accept a payment that arrived after expiry",
                "security": [{"apiKey": []}],
                "parameters": [_INVOICE_ID],
                "responses": {
                    "200": _ok("InvoiceOut"),
                    **_AUTH_ERRORS,
                    **_NOT_FOUND,
                    "409": _problem("Nothing late to accept, or it does not cover the price"),
                },
            }
        },
        "/v1/invoices/{invoice_id}/payments": {
            "get": {
                "operationId": "listInvoicePayments",
                "summary": "Payments seen for an invoice",
                "security": [{"apiKey": []}],
                "parameters": [_INVOICE_ID],
                "responses": {"200": _ok("PaymentList"), **_AUTH_ERRORS, **_NOT_FOUND},
            }
        },
        "/v1/invoices/{invoice_id}/qr/{filename}": {
            "get": {
                "operationId": "getPaymentQr",
                "summary": "QR code of an asset's payment URI (PNG or SVG)",
                "security": [{"apiKey": []}],
                "parameters": [
                    _INVOICE_ID,
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^(BTC|ETH|USDT)\\.(png|svg)$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "QR image",
                        "content": {
                            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    **_AUTH_ERRORS,
                    **_NOT_FOUND,
                },
            }
        },
        "/v1/rates": {
            "get": {
                "operationId": "getRates",
                "summary": "Current KZT price of each asset, its sources, and the rate providers' health",
                "security": [{"apiKey": []}],
                "responses": {
                    "200": {
                        "description": "Rates and provider health",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["mode", "taken_at", "rates", "unavailable", "providers"],
                                    "properties": {
                                        "mode": {"type": "string", "enum": ["fixed", "live", "custom"]},
                                        "taken_at": {"type": "string"},
                                        "rates": {"type": "object"},
                                        "unavailable": {"type": "object"},
                                        "providers": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/rates/history": {
            "get": {
                "operationId": "getRateHistory",
                "summary": "Every distinct KZT rate the gateway derived, oldest first (keyset pages by id)",
                "security": [{"apiKey": []}],
                "parameters": [
                    {
                        "name": "asset",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["BTC", "ETH", "USDT"]},
                    },
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "starting_after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": {
                        "description": "One page of recorded rates",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["object", "data", "has_more", "next_starting_after"],
                                    "properties": {
                                        "object": {"type": "string", "enum": ["list"]},
                                        "data": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": [
                                                    "id",
                                                    "asset",
                                                    "kzt_per_unit",
                                                    "sources",
                                                    "observed_at",
                                                ],
                                                "properties": {
                                                    "id": {"type": "integer"},
                                                    "asset": {"type": "string"},
                                                    "kzt_per_unit": {"type": "string"},
                                                    "sources": {"type": "array", "items": {"type": "string"}},
                                                    "observed_at": {"type": "string"},
                                                    "recorded_at": {"type": "string"},
                                                },
                                            },
                                        },
                                        "has_more": {"type": "boolean"},
                                        "next_starting_after": {"type": ["integer", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "400": _problem("Bad query"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {"operationId": "healthz", "summary": "Liveness", "responses": {"200": _ok("HealthOut")}}
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness (store reachable)",
                "responses": {"200": _ok("HealthOut"), "503": _ok("HealthOut", "Not ready")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4; no key, aggregate figures only)",
                "responses": {
                    "200": {
                        "description": "Every series docs/metrics.md lists",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def _operations(paths: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for item in paths.values():
        for method, operation in item.items():
            if method in _HTTP_METHODS:
                yield operation


def _secured(operation: Mapping[str, Any]) -> bool:
    return bool(operation.get("security"))


def _too_many_auth_failures() -> dict[str, Any]:
    return {
        **_problem("Too many failed authentications from this client address; retry after Retry-After"),
        "headers": {
            "Retry-After": {
                "description": "Seconds until credentials from this address are accepted again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }


def guarded_prefixes(extensions: Sequence[RouteExtension] = ()) -> tuple[str, ...]:
    """Path prefixes where failed authentications are limited: the merchant API, and each extension
    whose documented operations need credentials (the regulator API); public pages are left out."""
    prefixes = [MERCHANT_API_PREFIX]
    for extension in extensions:
        if any(_secured(op) for op in _operations(extension.openapi_paths)):
            prefixes.append(extension.prefix.rstrip("/") + "/")
    return tuple(prefixes)


def _apply_limits(schema: dict[str, Any], invoices: InvoicesConfig) -> None:
    """Write the configured limits that JSON Schema can express into the create-invoice schema."""
    props = schema["properties"]
    for option in props["description"].get("anyOf", []):
        if option.get("type") == "string":
            option["maxLength"] = invoices.description_max_length
    for option in props["expires_in"].get("anyOf", []):
        if option.get("type") == "integer":
            option["minimum"] = invoices.min_expiry_seconds
            option["maximum"] = invoices.max_expiry_seconds


def build_openapi(
    extensions: Sequence[RouteExtension] = (),
    *,
    invoices: InvoicesConfig | None = None,
    server_url: str | None = None,
) -> dict[str, Any]:
    _, schema = models_json_schema(
        [(m, "validation" if m in _REQUEST_MODELS else "serialization") for m in _COMPONENT_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(schema.get("$defs", {}))
    _apply_limits(schemas["CreateInvoiceRequest"], invoices or InvoicesConfig())
    paths = _paths()
    paths.update(webhook_openapi.webhook_paths(_problem, _AUTH_ERRORS))
    security: dict[str, Any] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "Merchant API key, cc_test_…"}
    }
    for extension in extensions:
        paths.update(extension.openapi_paths)
        schemas.update(extension.openapi_schemas)
        security.update(extension.openapi_security_schemes)
    paths = copy.deepcopy(paths)  # the extensions' dicts are theirs: add the 429s to a copy
    for operation in _operations(paths):
        if _secured(operation):
            operation["responses"].setdefault("429", _too_many_auth_failures())
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "CryptoCity gateway",
            "version": "1",
            "description": "Tenge-priced crypto invoices for the Alatau CryptoCity pilot. Errors are RFC 9457 "
            "problem details. Amounts are decimal strings and integer minor units (tiyn, sat, wei, token units).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": security,
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
