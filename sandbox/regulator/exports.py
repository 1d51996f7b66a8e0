"""The regulator's streamed exports: judged payments, invoices and ledger lines of any period, as CSV or JSON
Lines, each carrying the audit chain head as of the export.

- ``GET /exports/payments``: every payment the sandbox judged (decided in the period);
- ``GET /exports/invoices``: every invoice created in the period, with its merchant's category and its
  state now (no description, order id or metadata: those are the merchant's and may name a person);
- ``GET /exports/ledger``: every digital-tenge ledger line posted in the period, with its entry.

All take ``from``, ``to`` (default: this month in Asia/Almaty) and ``format=csv|jsonl``, and are read in
keyset pages of 1,000 rows, so memory stays flat whatever the period.

The audit head (the hash of the last audit entry and its MAC under the regulator's key) is read before the
first row and sent twice: in the ``Audit-Head`` response header, and as the export's last line (a JSON
object ``{"audit_head": ...}`` in JSON Lines; a line starting with ``#`` in CSV, which CSV readers skip
with a comment option). A regulator keeps it with the file and checks it with ``cryptocity audit verify``
or their own tool (docs/audit-log.md). An empty log is sent as ``none``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from gateway.api.requests import bad_query
from gateway.api.state import STORE
from gateway.store import Row, Tx
from sandbox.audit.store import latest_head
from sandbox.csvutil import csv_line
from sandbox.regulator.context import period_of

routes = web.RouteTableDef()
PAGE = 1_000

PAYMENT_COLUMNS = (
    "decided_at",
    "chain",
    "payment_key",
    "invoice_id",
    "merchant_id",
    "resident_id",
    "asset",
    "amount_minor",
    "value_tiyn",
    "month",
    "decision",
    "reason",
    "resolution",
    "resolved_at",
    "refund_address",
)

INVOICE_COLUMNS = (
    "created_at",
    "id",
    "merchant_id",
    "category",
    "status",
    "flags",
    "price_tiyn",
    "expires_at",
    "updated_at",
)

LEDGER_COLUMNS = (
    "posted_at",
    "entry_seq",
    "entry_id",
    "event_type",
    "leg",
    "invoice_id",
    "merchant_id",
    "payment_key",
    "account",
    "amount_tiyn",
)


def payment_view(row: Row) -> dict[str, Any]:
    return {
        "chain": row["chain"],
        "payment_key": row["payment_key"],
        "invoice_id": row["invoice_id"],
        "merchant_id": row["merchant_id"],
        "resident_id": row["resident_id"],
        "asset": row["asset"],
        "amount_minor": row["amount_minor"],
        "value_tiyn": int(row["value_tiyn"]),
        "month": row["month"],
        "decision": row["decision"],
        "reason": row["reason"],
        "decided_at": row["decided_at"],
        "resolution": row["resolution"],
        "resolved_at": row["resolved_at"],
        "resolved_by": row["resolved_by"],
        "refund_address": row["refund_address"],
        "note": row["note"],
    }


def _invoice_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "merchant_id": row["merchant_id"],
        "category": row["category"],
        "status": row["status"],
        "flags": orjson.loads(row["flags"]),
        "price_tiyn": int(row["price_tiyn"]),
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "updated_at": row["updated_at"],
    }


def _ledger_view(row: Row) -> dict[str, Any]:
    return {
        "posted_at": row["posted_at"],
        "entry_seq": int(row["entry_seq"]),
        "entry_id": row["entry_id"],
        "event_type": row["event_type"],
        "leg": row["leg"],
        "invoice_id": row["invoice_id"],
        "merchant_id": row["merchant_id"],
        "payment_key": row["payment_key"],
        "account": row["account"],
        "amount_tiyn": int(row["amount_tiyn"]),
    }


# One page of an export: (tx, period start, period end, the last row's sort key or None) → rows.
PageQuery = Callable[[Tx, str, str, tuple[Any, ...] | None], Awaitable[list[Row]]]


async def _payments_page(tx: Tx, start: str, end: str, after: tuple[Any, ...] | None) -> list[Row]:
    cursor = after or (start, "", "")
    return await tx.fetchall(
        "SELECT * FROM sandbox_payments WHERE decided_at >= ? AND decided_at < ?"
        " AND (decided_at, chain, payment_key) > (?, ?, ?) ORDER BY decided_at, chain, payment_key LIMIT ?",
        (start, end, *cursor, PAGE),
    )


async def _invoices_page(tx: Tx, start: str, end: str, after: tuple[Any, ...] | None) -> list[Row]:
    cursor = after or (start, "")
    return await tx.fetchall(
        "SELECT i.id, i.merchant_id, p.category, i.status, i.flags, i.price_tiyn, i.created_at,"
        " i.expires_at, i.updated_at FROM invoices i LEFT JOIN merchant_profiles p ON p.merchant_id = i.merchant_id"
        " WHERE i.created_at >= ? AND i.created_at < ? AND (i.created_at, i.id) > (?, ?)"
        " ORDER BY i.created_at, i.id LIMIT ?",
        (start, end, *cursor, PAGE),
    )


async def _ledger_page(tx: Tx, start: str, end: str, after: tuple[Any, ...] | None) -> list[Row]:
    cursor = after or (-1, -1)
    return await tx.fetchall(
        "SELECT e.posted_at, e.seq AS entry_seq, e.id AS entry_id, e.event_type, e.leg, e.invoice_id,"
        " e.merchant_id, e.payment_key, l.account, l.amount_tiyn, l.line_no"
        " FROM ledger_entries e JOIN ledger_lines l ON l.entry_seq = e.seq"
        " WHERE e.posted_at >= ? AND e.posted_at < ? AND (e.seq, l.line_no) > (?, ?)"
        " ORDER BY e.seq, l.line_no LIMIT ?",
        (start, end, *cursor, PAGE),
    )


def _payments_key(row: Row) -> tuple[Any, ...]:
    return (row["decided_at"], row["chain"], row["payment_key"])


def _invoices_key(row: Row) -> tuple[Any, ...]:
    return (row["created_at"], row["id"])


def _ledger_key(row: Row) -> tuple[Any, ...]:
    return (row["entry_seq"], row["line_no"])


async def _stream(
    request: web.Request,
    name: str,
    columns: Sequence[str],
    page: PageQuery,
    key: Callable[[Row], tuple[Any, ...]],
    view: Callable[[Row], dict[str, Any]],
) -> web.StreamResponse:
    start, end = period_of(request).bounds
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        raise bad_query("format", "format must be csv or jsonl", "must be csv or jsonl")
    store = request.config_dict[STORE]
    head = await store.read(latest_head)
    head_view = None if head is None else head.view()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{name}.{fmt}"',
            "Audit-Head": _head_text(head_view),
        }
    )
    await response.prepare(request)
    if fmt == "csv":
        await response.write(csv_line(columns))
    after: tuple[Any, ...] | None = None
    while True:
        rows = await store.read(lambda tx, cursor=after: page(tx, start, end, cursor))  # type: ignore[misc]
        for row in rows:
            record = view(row)
            if fmt == "csv":
                await response.write(csv_line(_csv_value(record[c]) for c in columns))
            else:
                await response.write(orjson.dumps(record) + b"\n")
        if len(rows) < PAGE:
            break
        after = key(rows[-1])
    if fmt == "csv":
        await response.write(f"# audit_head {_head_text(head_view)}\n".encode())
    else:
        await response.write(orjson.dumps({"audit_head": head_view}) + b"\n")
    await response.write_eof()
    return response


def _csv_value(value: Any) -> Any:
    return ",".join(value) if isinstance(value, list) else value


def _head_text(head: dict[str, Any] | None) -> str:
    if head is None:
        return "none"
    return (
        f"seq={head['seq']}; hash={head['hash']}; mac={head['mac'] or 'none'}; key_id={head['key_id'] or '-'}"
    )


@routes.get("/exports/payments")
async def export_payments(request: web.Request) -> web.StreamResponse:
    """Every judged payment of the period, oldest decision first."""
    return await _stream(request, "payments", PAYMENT_COLUMNS, _payments_page, _payments_key, payment_view)


@routes.get("/exports/invoices")
async def export_invoices(request: web.Request) -> web.StreamResponse:
    """Every invoice created in the period, oldest first, with its state now."""
    return await _stream(request, "invoices", INVOICE_COLUMNS, _invoices_page, _invoices_key, _invoice_view)


@routes.get("/exports/ledger")
async def export_ledger(request: web.Request) -> web.StreamResponse:
    """Every ledger line posted in the period, in journal order."""
    return await _stream(request, "ledger", LEDGER_COLUMNS, _ledger_page, _ledger_key, _ledger_view)
