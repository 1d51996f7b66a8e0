"""The regulator API's part of /openapi.json (paths under /sandbox/v1, secured by a regulator token)."""

from __future__ import annotations

from typing import Any

REGULATOR_SECURITY: dict[str, Any] = {
    "regulatorToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Regulator token, crt_… (not a merchant key)",
    }
}

_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _PROBLEM}


_AUTH = {"401": _problem("Missing, unknown or revoked regulator token"), "403": _problem("A merchant key")}
_OBJECT = {"application/json": {"schema": {"type": "object"}}}
# An export's body is a stream of lines, CSV by default (format=csv) or JSON Lines (format=jsonl).
_EXPORT_OK = {
    "200": {
        "description": "The period's rows; the audit head on the last line",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}
_PERIOD = [
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
]


def _get(
    operation: str, summary: str, parameters: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": _OBJECT}, **_AUTH, **extra}
    return {
        "get": {
            "operationId": operation,
            "summary": summary,
            "security": [{"regulatorToken": []}],
            "parameters": parameters or [],
            "responses": responses,
        }
    }


def _post(
    operation: str, summary: str, parameters: list[dict[str, Any]], body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "security": [{"regulatorToken": []}],
            "parameters": parameters,
            "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {"description": "Done", "content": _OBJECT},
                "400": _problem("Malformed request"),
                "404": _problem("No such item"),
                "409": _problem("Already decided"),
                "413": _problem("Body too large"),
                "415": _problem("Not application/json"),
                "422": _problem("Invalid body"),
                **_AUTH,
            },
        }
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_BAD_QUERY = {"400": _problem("Bad query")}
_NOTE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"note": {"type": "string", "maxLength": 1000}},
}

REGULATOR_PATHS: dict[str, Any] = {
    "/sandbox/v1/summary": _get(
        "sandboxSummary", "Metrics of a period (default: this month)", _PERIOD, **_BAD_QUERY
    ),
    "/sandbox/v1/residents": _get("sandboxResidents", "Pseudonymous residents, tiers, usage and limits"),
    "/sandbox/v1/residents/{resident_id}": _get(
        "sandboxResident", "One resident", [_path("resident_id")], **{"404": _problem("No such resident")}
    ),
    "/sandbox/v1/merchants": _get("sandboxMerchants", "Merchants with category and licence status"),
    "/sandbox/v1/merchants/{merchant_id}/suspend": _post(
        "sandboxSuspendMerchant",
        "Suspend a merchant's licence (its new invoices get 403; its payments are held)",
        [_path("merchant_id")],
        {
            "type": "object",
            "required": ["reason"],
            "properties": {"reason": {"type": "string", "minLength": 1}},
        },
    ),
    "/sandbox/v1/merchants/{merchant_id}/reinstate": _post(
        "sandboxReinstateMerchant",
        "Reinstate a merchant's licence",
        [_path("merchant_id")],
        {"type": "object"},
    ),
    "/sandbox/v1/payments": _get(
        "sandboxPayments",
        "Every judged payment of a period",
        [
            *_PERIOD,
            {"name": "decision", "in": "query", "schema": {"type": "string", "enum": ["accepted", "held"]}},
        ],
        **_BAD_QUERY,
    ),
    "/sandbox/v1/holds": _get("sandboxHolds", "Held payments awaiting a decision"),
    "/sandbox/v1/holds/decided": _get(
        "sandboxDecidedHolds", "Decided holds of a period", _PERIOD, **_BAD_QUERY
    ),
    "/sandbox/v1/holds/{chain}/{payment_key}/release": _post(
        "sandboxReleaseHold",
        "Release a held payment: the invoice proceeds",
        [_path("chain"), _path("payment_key")],
        _NOTE,
    ),
    "/sandbox/v1/holds/{chain}/{payment_key}/refund": _post(
        "sandboxRefundHold",
        "Order a held payment refunded (recorded; the merchant's wallet pays it)",
        [_path("chain"), _path("payment_key")],
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"refund_address": {"type": "string"}, "note": {"type": "string"}},
        },
    ),
    "/sandbox/v1/exposure": _get(
        "sandboxExposure", "The open crypto position, valued now and at the locked rates"
    ),
    "/sandbox/v1/ledger/trial-balance": _get(
        "sandboxTrialBalance", "The digital-tenge ledger's trial balance"
    ),
    **{
        f"/sandbox/v1/exports/{name}": _get(
            f"sandboxExport{name.title()}",
            f"{what} of a period, streamed as CSV or JSON Lines; the audit head in the Audit-Head header and"
            " on the last line",
            [
                *_PERIOD,
                {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["csv", "jsonl"]}},
            ],
            **_BAD_QUERY,
            **_EXPORT_OK,
        )
        for name, what in (
            ("payments", "Judged payments"),
            ("invoices", "Invoices created"),
            ("ledger", "Digital-tenge ledger lines posted"),
        )
    },
}
