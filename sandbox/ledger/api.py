"""Merchant views of the digital-tenge ledger: balances, the journal, and streamed statements.

Mounted by the sandbox as route extensions at ``/v1/balance`` and ``/v1/ledger``, so the gateway's API-key
middleware authenticates these requests too and every view is the calling merchant's own:

- ``GET /v1/balance``: the merchant's accounts in tiyn and tenge;
- ``GET /v1/ledger?limit=&starting_after=``: journal entries, newest first, keyset-paginated;
- ``GET /v1/ledger/statement?account=settlement&from=…&to=…&format=csv|jsonl``: every line of one account in
  ``[from, to)`` with the running balance, streamed chunk by chunk, so memory does not grow with the range.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.api.requests import bad_query, query_int, query_time
from gateway.api.state import MERCHANT_ID, STORE
from gateway.clock import parse_isoformat
from gateway.extensions import Extensions, RouteExtension
from gateway.money import format_tiyn
from sandbox.csvutil import csv_line
from sandbox.ledger import model
from sandbox.ledger import store as ledger
from sandbox.ledger.consumer import LedgerConsumer

balance_routes = web.RouteTableDef()  # mounted at /v1/balance
ledger_routes = web.RouteTableDef()  # mounted at /v1/ledger

ACCOUNTS: dict[str, Callable[[str], str]] = {
    "settlement": model.settlement_account,
    "fx": model.fx_account,
    "overpaid": model.overpaid_account,
    "held": model.held_account,
    "refunds": model.refunds_account,
}
_CSV_COLUMNS = (
    "posted_at",
    "entry_id",
    "event_type",
    "leg",
    "invoice_id",
    "payment_key",
    "amount_tiyn",
    "amount_kzt",
    "balance_tiyn",
    "balance_kzt",
)


def _kzt(tiyn: int) -> str:
    """Signed tenge text: ledger lines out of an account are negative."""
    return f"-{format_tiyn(-tiyn)}" if tiyn < 0 else format_tiyn(tiyn)


def _money(tiyn: int) -> dict[str, Any]:
    return {"tiyn": tiyn, "kzt": _kzt(tiyn)}


@balance_routes.get("")
async def get_balance(request: web.Request) -> web.Response:
    merchant_id = request[MERCHANT_ID]

    async def read(tx: Any) -> dict[str, int]:
        return {name: await ledger.balance(tx, account(merchant_id)) for name, account in ACCOUNTS.items()}

    balances = await request.config_dict[STORE].read(read)
    return web.json_response(
        {
            "object": "balance",
            "merchant_id": merchant_id,
            "currency": "KZT",
            "accounts": {name: _money(tiyn) for name, tiyn in balances.items()},
        }
    )


@ledger_routes.get("")
async def get_ledger(request: web.Request) -> web.Response:
    merchant_id = request[MERCHANT_ID]
    limit = query_int(request, "limit", default=50, low=1, high=200)
    cursor = request.query.get("starting_after")
    try:
        page = await request.config_dict[STORE].read(
            lambda tx: ledger.ledger_page(tx, merchant_id, limit=limit, cursor=cursor)
        )
    except ValueError as exc:
        raise bad_query("starting_after", f"starting_after: {exc}", str(exc)) from None
    return web.json_response(
        {
            "object": "list",
            "data": [_entry_view(posted) for posted in page.entries],
            "has_more": page.next_cursor is not None,
            "next_starting_after": page.next_cursor,
        }
    )


def _entry_view(posted: ledger.PostedEntry) -> dict[str, Any]:
    entry = posted.entry
    return {
        "id": entry.id,
        "seq": posted.seq,
        "event_id": entry.event_id,
        "event_type": entry.event_type,
        "leg": entry.leg,
        "invoice_id": entry.invoice_id,
        "payment_key": entry.payment_key,
        "posted_at": entry.posted_at,
        "lines": [{"account": line.account, "amount": _money(line.amount_tiyn)} for line in entry.lines],
    }


@ledger_routes.get("/statement")
async def get_statement(request: web.Request) -> web.StreamResponse:
    merchant_id = request[MERCHANT_ID]
    name = request.query.get("account", "settlement")
    if name not in ACCOUNTS:
        choices = ", ".join(ACCOUNTS)
        raise bad_query("account", f"account must be one of {choices}", f"must be one of {choices}")
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        raise bad_query("format", "format must be csv or jsonl", "must be csv or jsonl")
    bounds = {}
    for key in ("from", "to"):
        text = query_time(request, key)
        if text is None:
            detail = "is required (RFC 3339, e.g. 2026-12-01T00:00:00Z)"
            raise bad_query(key, f"{key} {detail}", detail)
        bounds[key] = parse_isoformat(text)
    if bounds["to"] <= bounds["from"]:
        raise bad_query("to", "to must be after from", "must be after from")
    return await _stream(request, ACCOUNTS[name](merchant_id), bounds["from"], bounds["to"], fmt)


async def _stream(
    request: web.Request, account: str, start: datetime, end: datetime, fmt: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="statement.{fmt}"',
        }
    )
    await response.prepare(request)
    if fmt == "csv":
        await response.write(csv_line(_CSV_COLUMNS))
    async for row in ledger.statement(request.config_dict[STORE], account, start, end):
        values = {
            "posted_at": row.posted_at,
            "entry_id": row.entry_id,
            "event_type": row.event_type,
            "leg": row.leg,
            "invoice_id": row.invoice_id,
            "payment_key": row.payment_key,
            "amount_tiyn": row.amount_tiyn,
            "amount_kzt": _kzt(row.amount_tiyn),
            "balance_tiyn": row.balance_tiyn,
            "balance_kzt": _kzt(row.balance_tiyn),
        }
        if fmt == "csv":
            await response.write(csv_line(tuple(values[c] for c in _CSV_COLUMNS)))
        else:
            await response.write(orjson.dumps({"account": account, **values}) + b"\n")
    await response.write_eof()
    return response


def ledger_extensions() -> Extensions:
    """What the sandbox's ledger adds to the gateway: its outbox consumer and the merchant views."""
    balance = web.Application()
    balance.add_routes(balance_routes)
    journal = web.Application()
    journal.add_routes(ledger_routes)
    # Two exact prefixes, not "/v1": a sub-app on "/v1" would answer 404 where the gateway answers 405.
    return Extensions(
        consumers=[LedgerConsumer()],
        routes=[
            RouteExtension(
                "/v1/balance", balance, openapi_paths={"/v1/balance": OPENAPI_PATHS["/v1/balance"]}
            ),
            RouteExtension(
                "/v1/ledger",
                journal,
                openapi_paths={k: v for k, v in OPENAPI_PATHS.items() if k.startswith("/v1/ledger")},
            ),
        ],
    )


def _get(
    operation: str, summary: str, parameters: list[dict[str, Any]], content: dict[str, Any]
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation,
            "summary": summary,
            "security": [{"apiKey": []}],
            "parameters": parameters,
            "responses": {
                "200": {"description": summary, "content": content},
                "400": {
                    "description": "Bad query parameter",
                    "content": {"application/problem+json": {"schema": {"type": "object"}}},
                },
                "401": {
                    "description": "Missing or unknown API key",
                    "content": {"application/problem+json": {"schema": {"type": "object"}}},
                },
            },
        }
    }


_JSON = {"application/json": {"schema": {"type": "object"}}}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/balance": _get("getBalance", "The merchant's digital-tenge balances", [], _JSON),
    "/v1/ledger": _get(
        "listLedgerEntries",
        "The merchant's ledger entries, newest first",
        [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            {"name": "starting_after", "in": "query", "schema": {"type": "string"}},
        ],
        _JSON,
    ),
    "/v1/ledger/statement": _get(
        "exportStatement",
        "One account's lines in a date range with the running balance, streamed as CSV or JSON Lines",
        [
            {
                "name": "from",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "format": "date-time"},
            },
            {
                "name": "to",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "format": "date-time"},
            },
            {"name": "account", "in": "query", "schema": {"type": "string", "enum": list(ACCOUNTS)}},
            {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["csv", "jsonl"]}},
        ],
        {"text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}},
    ),
}
