"""The regulator API, mounted at ``/sandbox/v1`` with its own tokens.

- ``GET /summary?from=&to=``: the period's metrics (metrics.py);
- ``GET /residents``, ``GET /residents/{id}``: pseudonymous residents, tier, this month's usage and limits;
- ``GET /merchants``; ``POST /merchants/{id}/suspend`` ``{"reason"}``, ``POST /merchants/{id}/reinstate``;
- ``GET /payments?from=&to=&decision=``: every judged payment;
- ``GET /holds``: the queue of held payments awaiting a decision, and ``GET /holds/decided``;
- ``POST /holds/{chain}/{payment_key}/release`` and ``.../refund`` ``{"refund_address", "note"}``: the
  invoice proceeds, or a refund is recorded for the merchant's wallet to pay; a second decision is a 409;
- ``GET /exposure``: the open crypto position per asset, valued now and at the locked rates (exposure.py);
- ``GET /ledger/trial-balance``: the digital-tenge ledger's trial balance and every account;
- ``GET /exports/payments|invoices|ledger?from=&to=&format=csv|jsonl``: streamed, with the audit head
  (exports.py).

Authentication: ``Authorization: Bearer crt_…``. No token is a 401, a merchant API key is a 403 (it is a
key, but not one for this API), an unknown or revoked token a 401. Regulators see resident ids only, never
the wallets behind them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway.api.problems import Problem
from gateway.api.requests import bad_query, read_model
from gateway.api.state import CLOCK, RATES, SERVICE, STORE
from gateway.clock import isoformat
from gateway.invoices.service import InvoiceNotFound, TransitionRefused
from gateway.outbox import insert_event, prepare_event
from gateway.store import Row, Tx
from sandbox.ledger import store as ledger
from sandbox.limits import SandboxRules, Tier
from sandbox.policy import SandboxPolicy, month_usage
from sandbox.registry import NotRegistered, Registry
from sandbox.regulator import exports
from sandbox.regulator.context import POLICY, RULES, json_response, period_of
from sandbox.regulator.exports import payment_view
from sandbox.regulator.exposure import exposure
from sandbox.regulator.metrics import summary
from sandbox.regulator.tokens import MERCHANT_KEY, RegulatorTokens

ACTOR = web.RequestKey("regulator_token_id", str)

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def regulator_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401,
            "Unauthorized",
            "send Authorization: Bearer <regulator token (crt_…)>",
            "missing-token",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    if MERCHANT_KEY.match(token):
        raise Problem(
            403, "Forbidden", "merchant API keys are refused on the regulator API", "merchant-key-refused"
        )
    actor = await RegulatorTokens(request.config_dict[STORE], request.config_dict[CLOCK]).authenticate(token)
    if actor is None:
        raise Problem(
            401,
            "Unauthorized",
            "unknown or revoked regulator token",
            "invalid-token",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    request[ACTOR] = actor
    return await handler(request)


@routes.get("/summary")
async def get_summary(request: web.Request) -> web.Response:
    period = period_of(request)
    rules, policy = request.app[RULES], request.app[POLICY]
    body = await request.config_dict[STORE].read(lambda tx: summary(tx, period, rules, policy.conversion()))
    return json_response(body)


async def _resident_view(tx: Tx, row: Row, request: web.Request) -> dict[str, Any]:
    rules, policy = request.app[RULES], request.app[POLICY]
    month = rules.month_of(request.config_dict[CLOCK].now())
    limits = rules.tier_limits(Tier(row["tier"]), policy.conversion())
    return {
        "id": row["id"],
        "tier": row["tier"],
        "status": row["status"],
        "originator_data_on_file": bool(row["originator_data"]),
        "created_at": row["created_at"],
        "month": month,
        "month_used_tiyn": await month_usage(tx, row["id"], month),
        "limits_tiyn": {"per_operation": limits.per_operation_tiyn, "monthly": limits.monthly_tiyn},
    }


@routes.get("/residents")
async def list_residents(request: web.Request) -> web.Response:
    async def read(tx: Tx) -> list[dict[str, Any]]:
        rows = await tx.fetchall("SELECT * FROM residents ORDER BY created_at, id")
        return [await _resident_view(tx, row, request) for row in rows]

    return json_response({"object": "list", "data": await request.config_dict[STORE].read(read)})


@routes.get("/residents/{resident_id}")
async def get_resident(request: web.Request) -> web.Response:
    resident_id = request.match_info["resident_id"]

    async def read(tx: Tx) -> dict[str, Any] | None:
        row = await tx.fetchone("SELECT * FROM residents WHERE id = ?", (resident_id,))
        return None if row is None else await _resident_view(tx, row, request)

    body = await request.config_dict[STORE].read(read)
    if body is None:
        raise Problem(404, "Not found", f"no resident {resident_id!r}", "resident-not-found")
    return json_response(body)


@routes.get("/merchants")
async def list_merchants(request: web.Request) -> web.Response:
    rows = await request.config_dict[STORE].read(
        lambda tx: tx.fetchall(
            "SELECT m.id, m.name, m.status, m.created_at, coalesce(p.category, 'other') AS category,"
            " coalesce(p.licence_status, 'active') AS licence_status, p.licence_reason FROM merchants m"
            " LEFT JOIN merchant_profiles p ON p.merchant_id = m.id ORDER BY m.created_at, m.id"
        )
    )
    return json_response({"object": "list", "data": [dict(row) for row in rows]})


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: StrictStr = Field(min_length=1, max_length=500)


async def _set_licence(request: web.Request, status: str, reason: str | None) -> web.Response:
    merchant_id = request.match_info["merchant_id"]
    registry = Registry(request.config_dict[STORE], request.config_dict[CLOCK])
    try:
        profile = await registry.set_merchant_profile(
            merchant_id, licence_status=status, reason=reason, actor=f"regulator:{request[ACTOR]}"
        )
    except NotRegistered:
        raise Problem(404, "Not found", f"no merchant {merchant_id!r}", "merchant-not-found") from None
    return json_response(
        {
            "merchant_id": merchant_id,
            "category": profile.category.value,
            "licence_status": profile.licence_status,
            "licence_reason": profile.licence_reason,
        }
    )


@routes.post("/merchants/{merchant_id}/suspend")
async def suspend_merchant(request: web.Request) -> web.Response:
    body, _ = await read_model(request, ReasonRequest)
    return await _set_licence(request, "suspended", body.reason)


@routes.post("/merchants/{merchant_id}/reinstate")
async def reinstate_merchant(request: web.Request) -> web.Response:
    return await _set_licence(request, "active", None)


@routes.get("/payments")
async def list_payments(request: web.Request) -> web.Response:
    start, end = period_of(request).bounds
    decision = request.query.get("decision")
    if decision not in (None, "accepted", "held"):
        raise bad_query("decision", "decision must be accepted or held", f"got {decision!r}")
    sql = "SELECT * FROM sandbox_payments WHERE decided_at >= ? AND decided_at < ?"
    params: list[Any] = [start, end]
    if decision:
        sql += " AND decision = ?"
        params.append(decision)
    rows = await request.config_dict[STORE].read(
        lambda tx: tx.fetchall(sql + " ORDER BY decided_at", tuple(params))
    )
    return json_response({"object": "list", "data": [payment_view(r) for r in rows]})


@routes.get("/holds")
async def held_queue(request: web.Request) -> web.Response:
    rows = await request.config_dict[STORE].read(
        lambda tx: tx.fetchall(
            "SELECT * FROM sandbox_payments WHERE decision = 'held' AND resolution IS NULL ORDER BY decided_at"
        )
    )
    return json_response({"object": "list", "data": [payment_view(r) for r in rows]})


@routes.get("/holds/decided")
async def decided_holds(request: web.Request) -> web.Response:
    start, end = period_of(request).bounds
    rows = await request.config_dict[STORE].read(
        lambda tx: tx.fetchall(
            "SELECT * FROM sandbox_payments WHERE decision = 'held' AND resolution IS NOT NULL"
            " AND resolved_at >= ? AND resolved_at < ? ORDER BY resolved_at",
            (start, end),
        )
    )
    return json_response({"object": "list", "data": [payment_view(r) for r in rows]})


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    refund_address: StrictStr | None = Field(default=None, max_length=200)
    note: StrictStr | None = Field(default=None, max_length=1000)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    note: StrictStr | None = Field(default=None, max_length=1000)


async def _decide_hold(request: web.Request, resolution: str) -> web.Response:
    chain, payment_key = request.match_info["chain"], request.match_info["payment_key"]
    model: type[ReleaseRequest] | type[RefundRequest] = (
        RefundRequest if resolution == "refunded" else ReleaseRequest
    )
    body = (await read_model(request, model))[0] if request.can_read_body else model()
    store, clock = request.config_dict[STORE], request.config_dict[CLOCK]
    row = await store.read(
        lambda tx: tx.fetchone(
            "SELECT * FROM sandbox_payments WHERE chain = ? AND payment_key = ?", (chain, payment_key)
        )
    )
    if row is None or row["decision"] != "held":
        raise Problem(404, "Not found", f"no held payment {chain}/{payment_key}", "hold-not-found")
    if row["resolution"] is not None:
        raise Problem(
            409, "Already decided", f"this hold was already {row['resolution']}", "hold-already-decided"
        )
    refund_address = getattr(body, "refund_address", None) or (
        row["payer"] if resolution == "refunded" else None
    )
    now = clock.now()

    async def record(tx: Tx) -> None:
        changed = await tx.execute(
            "UPDATE sandbox_payments SET resolution = ?, resolved_at = ?, resolved_by = ?, refund_address = ?,"
            " note = ?, counts = ? WHERE chain = ? AND payment_key = ? AND resolution IS NULL",
            (
                resolution,
                isoformat(now),
                request[ACTOR],
                refund_address,
                body.note,
                1 if resolution == "released" else 0,
                chain,
                payment_key,
            ),
        )
        if not changed:
            raise Problem(409, "Already decided", "this hold was decided meanwhile", "hold-already-decided")
        await insert_event(
            tx,
            prepare_event(
                event_type="sandbox.hold_released" if resolution == "released" else "sandbox.hold_refunded",
                now=now,
                data={
                    "chain": chain,
                    "payment_key": payment_key,
                    "invoice_id": row["invoice_id"],
                    "resident_id": row["resident_id"],
                    "value_tiyn": int(row["value_tiyn"]),
                    "actor": request[ACTOR],
                    "refund_address": refund_address,
                    "note": body.note,
                },
            ),
        )

    service = request.config_dict[SERVICE]
    change = service.release_hold if resolution == "released" else service.refund_hold
    try:
        await change(row["invoice_id"], payment_key, also=record)
    except TransitionRefused as exc:
        raise Problem(409, "Cannot decide this hold", str(exc), "hold-not-decidable") from None
    except InvoiceNotFound:
        raise Problem(404, "Not found", f"no invoice {row['invoice_id']!r}", "invoice-not-found") from None
    updated = await store.read(
        lambda tx: tx.fetchone(
            "SELECT * FROM sandbox_payments WHERE chain = ? AND payment_key = ?", (chain, payment_key)
        )
    )
    assert updated is not None
    return json_response(payment_view(updated))


@routes.post("/holds/{chain}/{payment_key}/release")
async def release(request: web.Request) -> web.Response:
    return await _decide_hold(request, "released")


@routes.post("/holds/{chain}/{payment_key}/refund")
async def refund(request: web.Request) -> web.Response:
    return await _decide_hold(request, "refunded")


@routes.get("/exposure")
async def get_exposure(request: web.Request) -> web.Response:
    rates = request.config_dict[RATES].source
    now = request.config_dict[CLOCK].now()
    return json_response(await request.config_dict[STORE].read(lambda tx: exposure(tx, rates, now)))


@routes.get("/ledger/trial-balance")
async def trial_balance(request: web.Request) -> web.Response:
    async def read(tx: Tx) -> dict[str, Any]:
        return {
            "trial_balance_tiyn": await ledger.trial_balance(tx),
            "accounts": await ledger.balances(tx),
            "mismatches": [m.account for m in await ledger.verify_balances(tx)],
        }

    return json_response(await request.config_dict[STORE].read(read))


def regulator_app(rules: SandboxRules, policy: SandboxPolicy) -> web.Application:
    """The /sandbox/v1 sub-application (the gateway's store and clock come from the parent app)."""
    app = web.Application(middlewares=[regulator_auth])
    app[RULES] = rules
    app[POLICY] = policy
    app.add_routes(routes)
    app.add_routes(exports.routes)
    return app
