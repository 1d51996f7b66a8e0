"""What must hold after a run of kills, restarts and load: the crash harness's checks.

Each check compares what the harness itself did (the invoices answered 201, the payments its wallets made,
the webhooks its receiver got) with what the gateway stored, and returns the problems it found as
sentences (an empty list when all is well), so one run reports every kind of damage at once instead of
stopping at the first. Expected states are computed here from the payments made, not by the gateway's
code: the rules are docs/lifecycle.md's (paid in full → settled; short → new + underpaid; more than one
smallest unit over → + overpaid), and the ledger's are docs/rates-and-ledger.md's reconciliation steps.

The store is read from the SQLite file after a clean shutdown, read-only (:func:`read_snapshot`).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.store import Tx
from gateway.webhooks.endpoints import is_deliverable
from sandbox.audit.events import is_audited
from sandbox.audit.verify import open_readonly
from sandbox.ledger import model as ledger_model
from sandbox.ledger import store as ledger_store
from tests.api.test_ledger_reconciliation import half_even, value_tiyn
from tests.reliability.crash_plan import LATE_KINDS, SHORT_EXPIRY_KINDS, AnsweredInvoice, SentPayment
from tests.reliability.crash_receiver import WebhookTally

CHAIN_OF_ASSET = {"BTC": "bitcoin", "ETH": "ethereum", "USDT": "ethereum"}
# Event types a run without reorgs, expiries, holds or cancellations may produce, and nothing else.
EXPECTED_TYPES = frozenset(
    {
        "invoice.created",
        "invoice.processing",
        "invoice.expired",
        "invoice.cancelled",
        "invoice.paid_late",
        "invoice.settled",
        "invoice.underpaid",
        "invoice.overpaid",
        "payment.detected",
        "payment.confirmed",
    }
)
CONSUMERS = ("webhooks", "ledger", "audit")


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The rows the checks need, read once from the stopped gateway's store."""

    integrity: str
    invoices: dict[str, dict[str, Any]]
    addresses: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    unaccounted: int
    outbox: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    cursors: dict[str, int]
    trial_balance: int
    balance_mismatches: list[str]
    unbalanced_entries: list[str]
    balances: dict[str, int]
    ledger_legs: list[tuple[str | None, str]]
    audit: list[dict[str, Any]]

    @property
    def last_seq(self) -> int:
        return max((int(e["seq"]) for e in self.outbox), default=0)


async def read_snapshot(path: Path) -> StoreSnapshot:
    """Every table the checks look at, from the SQLite file opened read-only (never migrated)."""

    async def rows(tx: Tx, sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in await tx.fetchall(sql)]

    async def read(tx: Tx) -> StoreSnapshot:
        integrity = await tx.fetchone("PRAGMA integrity_check")
        unaccounted = await tx.fetchone("SELECT COUNT(*) AS n FROM unaccounted_payments")
        assert integrity is not None and unaccounted is not None
        invoices = await rows(tx, "SELECT id, merchant_id, status, flags, price_tiyn, version FROM invoices")
        return StoreSnapshot(
            integrity=str(integrity["integrity_check"]),
            invoices={r["id"]: {**r, "flags": sorted(json.loads(r["flags"]))} for r in invoices},
            addresses=await rows(
                tx, "SELECT chain, address, invoice_id, derivation_index FROM invoice_addresses"
            ),
            payments=await rows(
                tx,
                "SELECT invoice_id, chain, payment_key, asset, amount_minor, status, confirmations, late"
                " FROM payments",
            ),
            unaccounted=int(unaccounted["n"]),
            outbox=await rows(
                tx,
                "SELECT seq, id, type, merchant_id, invoice_id, invoice_version, payload FROM outbox ORDER BY seq",
            ),
            deliveries=await rows(
                tx, "SELECT event_id, endpoint_id, status, reason, attempts FROM webhook_deliveries"
            ),
            cursors={
                r["consumer"]: int(r["position"])
                for r in await rows(tx, "SELECT consumer, position FROM consumer_cursors")
            },
            trial_balance=await ledger_store.trial_balance(tx),
            balance_mismatches=[m.account for m in await ledger_store.verify_balances(tx)],
            unbalanced_entries=await ledger_store.unbalanced_entries(tx),
            balances=await ledger_store.balances(tx),
            ledger_legs=[
                (r["invoice_id"], r["leg"])
                for r in await rows(tx, "SELECT invoice_id, leg FROM ledger_entries")
            ],
            audit=await rows(tx, "SELECT seq, kind, event_id FROM audit_log ORDER BY seq"),
        )

    reader = open_readonly(path)
    try:
        return await reader.read(read)
    finally:
        reader.close()


# -- expectations ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """Where an invoice must end, from what was paid to it (one asset per invoice in the harness)."""

    status: str
    flags: tuple[str, ...]
    paid_minor: int
    # How many invoice.underpaid events are right. The gateway sees payments in the order the chain and
    # its polls give them, not the order they were sent: two that land in one block (or are caught up on
    # after a restart) come in block order. So "underpaid" is set once when every payment alone is short,
    # never when none is, and once or not at all when a full payment and a smaller one arrive together.
    underpaid_events: frozenset[int]


def expected_state(invoice: AnsweredInvoice, payments: Sequence[SentPayment]) -> Expected:
    kind, asset = invoice.plan.kind, invoice.plan.pay_asset
    if kind == "cancel":
        return Expected("cancelled", (), 0, frozenset({0}))
    if kind == "expire":
        return Expected("expired", (), 0, frozenset({0}))
    if asset is None or not payments:
        return Expected("new", (), 0, frozenset({0}))
    due = invoice.due_minor(asset)
    paid = sum(p.amount_minor for p in payments)
    if kind in LATE_KINDS:  # a late payment counts only once the merchant accepts it
        return Expected(
            "settled" if kind == "late_accepted" else "expired", ("paid_late",), paid, frozenset({0})
        )
    short = {p.amount_minor < due for p in payments}
    underpaid = frozenset({int(s) for s in short})
    if paid < due:
        return Expected("new", ("underpaid",), paid, underpaid)
    # Amounts due round up, so paying exactly the amount due is a fraction of a unit over the price; more
    # than one smallest unit of the asset over is an overpayment (docs/lifecycle.md).
    return Expected("settled", ("overpaid",) if paid > due + 1 else (), paid, underpaid)


def payments_by_invoice(sent: Iterable[SentPayment]) -> dict[str, list[SentPayment]]:
    grouped: dict[str, list[SentPayment]] = defaultdict(list)
    for payment in sent:
        grouped[payment.invoice_id].append(payment)
    return grouped


def address_use(snap: StoreSnapshot) -> dict[str, dict[str, int]]:
    """Per chain: addresses handed out, the highest derivation index, and the longest run of unused
    indexes between two used ones (what a merchant wallet's gap limit must cover: each restart abandons
    the index blocks the dead process had reserved, config.toml [addresses])."""
    use: dict[str, dict[str, int]] = {}
    for chain in sorted({a["chain"] for a in snap.addresses}):
        indexes = sorted(int(a["derivation_index"]) for a in snap.addresses if a["chain"] == chain)
        gaps = [b - a - 1 for a, b in itertools.pairwise(indexes)]
        use[chain] = {"used": len(indexes), "highest_index": indexes[-1], "largest_gap": max(gaps, default=0)}
    return use


# -- the checks ------------------------------------------------------------------------------------------


def check_invoices(
    answered: Mapping[str, AnsweredInvoice], fetched: Mapping[str, dict[str, Any]], snap: StoreSnapshot
) -> list[str]:
    """Every 201 exists, with the addresses it was answered with; no address went to two invoices; and
    every stored invoice was answered (an interrupted request is retried with its key until it is)."""
    problems: list[str] = []
    stored_address = {(a["chain"], a["invoice_id"]): a["address"] for a in snap.addresses}
    for invoice_id, invoice in answered.items():
        if invoice_id not in snap.invoices:
            problems.append(f"{invoice_id}: answered 201 but not in the store")
            continue
        got = fetched.get(invoice_id)
        if got is None:
            problems.append(f"{invoice_id}: answered 201 but GET does not find it")
            continue
        for m in invoice.body["payment_methods"]:
            now = next((n for n in got["payment_methods"] if n["asset"] == m["asset"]), None)
            if now is None or (now["address"], now["amount_due_minor"]) != (
                m["address"],
                m["amount_due_minor"],
            ):
                problems.append(f"{invoice_id} {m['asset']}: answered {m['address']}, GET says {now}")
            if stored_address.get((m["chain"], invoice_id)) != m["address"]:
                problems.append(f"{invoice_id} {m['asset']}: answered {m['address']}, stored differently")
    for invoice_id in sorted(set(snap.invoices) - set(answered)):
        problems.append(f"{invoice_id}: in the store but never answered (its key's retry did not replay it)")
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for invoice in answered.values():
        for m in invoice.body["payment_methods"]:
            owners[(m["chain"], m["address"])].add(invoice.id)
    for a in snap.addresses:
        owners[(a["chain"], a["address"])].add(a["invoice_id"])
    problems += [
        f"{chain} address {address} given to {sorted(ids)}"
        for (chain, address), ids in owners.items()
        if len(ids) > 1
    ]
    indexes = Counter((a["chain"], a["derivation_index"]) for a in snap.addresses)
    problems += [
        f"{chain} derivation index {index} used {n} times" for (chain, index), n in indexes.items() if n > 1
    ]
    return problems


def check_payments(
    answered: Mapping[str, AnsweredInvoice],
    sent: Sequence[SentPayment],
    snap: StoreSnapshot,
    fetched_payments: Mapping[str, list[dict[str, Any]]],
) -> list[str]:
    """Each payment made is exactly one accepted payment of its invoice, for its amount; nothing else."""
    problems: list[str] = []
    matched: set[tuple[str, str]] = set()
    for payment in sent:
        chain = CHAIN_OF_ASSET[payment.asset]
        rows = [r for r in snap.payments if r["chain"] == chain and payment.is_key(r["payment_key"])]
        what = f"{payment.asset} {payment.tx} to {payment.invoice_id}"
        if len(rows) != 1:
            problems.append(f"{what}: {len(rows)} payment rows (want exactly 1)")
            continue
        [row] = rows
        matched.add((row["chain"], row["payment_key"]))
        invoice = answered[payment.invoice_id]
        required = int(invoice.method(payment.asset)["confirmations_required"])
        got = (row["invoice_id"], row["asset"], int(row["amount_minor"]), row["status"], bool(row["late"]))
        late = invoice.plan.kind in LATE_KINDS
        want = (payment.invoice_id, payment.asset, payment.amount_minor, "accepted", late)
        if got != want:
            problems.append(f"{what}: stored as {got}, want {want}")
        if int(row["confirmations"]) < max(required, 1):
            problems.append(f"{what}: {row['confirmations']} confirmations after settling, needs {required}")
    for row in snap.payments:
        if (row["chain"], row["payment_key"]) not in matched:
            problems.append(f"payment {row['payment_key']} of {row['invoice_id']}: the harness never made it")
    if snap.unaccounted:
        problems.append(f"{snap.unaccounted} unaccounted payments")
    for invoice_id, listed in fetched_payments.items():
        api = sorted((p["payment_key"], int(p["amount_minor"])) for p in listed)
        stored = sorted(
            (r["payment_key"], int(r["amount_minor"])) for r in snap.payments if r["invoice_id"] == invoice_id
        )
        if api != stored:
            problems.append(f"{invoice_id}: GET …/payments lists {api}, the store {stored}")
    return problems


def check_states(
    answered: Mapping[str, AnsweredInvoice],
    sent: Sequence[SentPayment],
    snap: StoreSnapshot,
    fetched: Mapping[str, dict[str, Any]],
) -> list[str]:
    """Each invoice's status and flags are what its payments make them, in the store and in the API."""
    problems: list[str] = []
    paid = payments_by_invoice(sent)
    for invoice_id, invoice in answered.items():
        want = expected_state(invoice, paid.get(invoice_id, []))
        row = snap.invoices.get(invoice_id)
        body = fetched.get(invoice_id)
        for where, status, flags in (
            ("store", row and row["status"], row and row["flags"]),
            ("API", body and body["status"], body and body["flags"]),
        ):
            if (status, flags) != (want.status, list(want.flags)):
                problems.append(
                    f"{invoice_id} ({invoice.plan.kind}, paid {want.paid_minor} of"
                    f" {invoice.due_minor(invoice.plan.pay_asset) if invoice.plan.pay_asset else 0}): {where} says"
                    f" {status} {flags}, want {want.status} {list(want.flags)}"
                )
    return problems


def check_events(
    answered: Mapping[str, AnsweredInvoice], sent: Sequence[SentPayment], snap: StoreSnapshot
) -> list[str]:
    """Every state change has its event, once: created; detected and confirmed per payment; settled once;
    underpaid and overpaid when they were first set; the last event of each invoice shows its final state;
    and nothing the run cannot cause (drops, reversals, expiries)."""
    problems: list[str] = []
    by_invoice: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in snap.outbox:
        if event["invoice_id"] is not None:
            by_invoice[event["invoice_id"]].append(event)
    paid = payments_by_invoice(sent)
    for invoice_id, invoice in answered.items():
        events = by_invoice.get(invoice_id, [])
        types = Counter(e["type"] for e in events)
        want = expected_state(invoice, paid.get(invoice_id, []))
        once = {
            "invoice.created": 1,
            "invoice.settled": int(want.status == "settled"),
            "invoice.expired": int(invoice.plan.kind in SHORT_EXPIRY_KINDS),
            "invoice.paid_late": int(invoice.plan.kind in LATE_KINDS),
            "invoice.cancelled": int(invoice.plan.kind == "cancel"),
        }
        once["invoice.overpaid"] = int("overpaid" in want.flags)
        for kind, n in once.items():
            if types[kind] != n:
                problems.append(f"{invoice_id} ({invoice.plan.kind}): {types[kind]} {kind} events, want {n}")
        if types["invoice.underpaid"] not in want.underpaid_events:
            problems.append(
                f"{invoice_id} ({invoice.plan.kind}): {types['invoice.underpaid']} invoice.underpaid events,"
                f" want one of {sorted(want.underpaid_events)}"
            )
        if types["invoice.processing"] > 1:
            problems.append(f"{invoice_id}: {types['invoice.processing']} invoice.processing events")
        unexpected = set(types) - EXPECTED_TYPES
        if unexpected:
            problems.append(f"{invoice_id}: unexpected events {sorted(unexpected)}")
        for kind in ("payment.detected", "payment.confirmed"):
            keys = Counter(
                json.loads(e["payload"])["data"].get("payment_key") for e in events if e["type"] == kind
            )
            for payment in paid.get(invoice_id, []):
                found = sum(n for key, n in keys.items() if key is not None and payment.is_key(key))
                if found != 1:
                    problems.append(f"{invoice_id} {payment.tx}: {found} {kind} events, want 1")
            if sum(keys.values()) != len(paid.get(invoice_id, [])):
                problems.append(
                    f"{invoice_id}: {sum(keys.values())} {kind} events for {len(paid.get(invoice_id, []))} payments"
                )
        versions = [int(e["invoice_version"]) for e in events]
        if versions != sorted(versions):
            problems.append(f"{invoice_id}: event versions out of order {versions}")
        if events:
            last = json.loads(events[-1]["payload"])["data"]["invoice"]
            row = snap.invoices.get(invoice_id)
            if row is not None and (last["status"], last["flags"]) != (row["status"], row["flags"]):
                problems.append(
                    f"{invoice_id}: the last event ({events[-1]['type']}) shows {last['status']} {last['flags']},"
                    f" the invoice is {row['status']} {row['flags']}: a change without its event"
                )
    return problems


def deliverable(snap: StoreSnapshot, merchant_id: str) -> list[dict[str, Any]]:
    return [e for e in snap.outbox if e["merchant_id"] == merchant_id and is_deliverable(e["type"])]


def check_webhooks(received: WebhookTally, snap: StoreSnapshot, merchant_id: str) -> list[str]:
    """Each deliverable event reached the receiver at least once, byte for byte as stored, correctly signed;
    nothing else arrived; the fan-out made one delivery per event and every one succeeded."""
    problems: list[str] = []
    events = deliverable(snap, merchant_id)
    ids = {e["id"] for e in events}
    for event in events:
        body = received.bodies.get(event["id"])
        if body is None:
            problems.append(f"{event['type']} {event['id']} of {event['invoice_id']}: never delivered")
        elif body != event["payload"].encode():
            problems.append(f"{event['id']}: delivered body differs from the outbox payload")
    problems += [f"{e}: delivered but not in the outbox" for e in sorted(set(received.counts) - ids)]
    problems += [f"a delivery was refused by the receiver: {reason}" for reason in received.refused]
    problems += [f"{e}: a redelivery carried different bytes" for e in received.changed_bodies]
    fanned = Counter(d["event_id"] for d in snap.deliveries if d["reason"] == "event")
    problems += [f"{e}: {fanned[e]} deliveries fanned out (want 1)" for e in sorted(ids) if fanned[e] != 1]
    problems += [
        f"delivery of {d['event_id']} ended {d['status']} after {d['attempts']} attempts"
        for d in snap.deliveries
        if d["status"] != "succeeded"
    ]
    return problems


def check_consumers(snap: StoreSnapshot) -> list[str]:
    """Every outbox consumer read to the last event before the clean stop."""
    problems = [f"consumer {c} has no cursor" for c in CONSUMERS if c not in snap.cursors]
    problems += [
        f"consumer {c} stopped at {position} of {snap.last_seq}"
        for c, position in snap.cursors.items()
        if position != snap.last_seq
    ]
    return problems


def check_ledger(
    answered: Mapping[str, AnsweredInvoice],
    sent: Sequence[SentPayment],
    snap: StoreSnapshot,
    merchant_id: str,
) -> list[str]:
    """The books balance, each settled invoice is booked once, and the merchant's accounts reconcile with
    the payments made, valued at each invoice's locked rate (docs/rates-and-ledger.md, steps 1–3 and 5)."""
    problems: list[str] = []
    if snap.trial_balance != 0:
        problems.append(f"trial balance {snap.trial_balance} tiyn, not 0")
    problems += [f"account {a}: maintained balance differs from its lines" for a in snap.balance_mismatches]
    problems += [f"journal entry {e} does not sum to zero" for e in snap.unbalanced_entries]
    legs: dict[str | None, Counter[str]] = defaultdict(Counter)
    for invoice_id, leg in snap.ledger_legs:
        legs[invoice_id][leg] += 1
    paid = payments_by_invoice(sent)
    settlement = received = 0
    clearing: Counter[str] = Counter()
    for invoice_id, invoice in answered.items():
        row = snap.invoices.get(invoice_id)
        booked = legs.get(invoice_id, Counter())
        if row is None or row["status"] != "settled":
            if booked:
                problems.append(f"{invoice_id} is not settled but has ledger entries {dict(booked)}")
            continue
        first = "settle_late" if invoice.plan.kind == "late_accepted" else "settle"
        allowed = {first: 1, "overpay": booked["overpay"]}
        if dict(booked) != {k: n for k, n in allowed.items() if n}:
            problems.append(f"{invoice_id}: ledger legs {dict(booked)}, want one {first} (and overpay)")
        settlement += int(row["price_tiyn"])
        per_asset: Counter[str] = Counter()
        for payment in paid.get(invoice_id, []):
            per_asset[payment.asset] += payment.amount_minor
        for asset, amount in per_asset.items():
            value = half_even(value_tiyn(invoice.body, asset, amount))
            received += value
            clearing[asset] += value
    balances = snap.balances
    got_settlement = balances.get(ledger_model.settlement_account(merchant_id), 0)
    if got_settlement != settlement:
        problems.append(f"settlement balance {got_settlement} tiyn, prices of settled invoices {settlement}")
    adjustments = sum(
        balances.get(account, 0)
        for account in (ledger_model.fx_account(merchant_id), ledger_model.overpaid_account(merchant_id))
    )
    if got_settlement + adjustments != received:
        problems.append(
            f"settlement + fx + overpaid = {got_settlement + adjustments} tiyn, value received on settled"
            f" invoices {received}"
        )
    for asset in CHAIN_OF_ASSET:
        got = balances.get(ledger_model.clearing_account(asset), 0)
        if got != -clearing[asset]:
            problems.append(f"clearing:{asset} is {got} tiyn, want {-clearing[asset]}")
    return problems


def check_audit(verified: dict[str, Any], exit_status: int, snap: StoreSnapshot, starts: int) -> list[str]:
    """`cryptocity audit verify` with the key passes and authenticates the head; every audited event is in
    the chain exactly once; one config.startup entry per start, killed or not."""
    problems: list[str] = []
    if exit_status != 0 or not verified.get("ok") or not verified.get("authenticated"):
        problems.append(f"audit verify exited {exit_status}: {verified}")
    recorded = Counter(e["event_id"] for e in snap.audit if e["event_id"] is not None)
    audited = {e["id"] for e in snap.outbox if is_audited(e["type"])}
    problems += [f"event {e} is not in the audit log" for e in sorted(audited - set(recorded))]
    problems += [f"event {e} is in the audit log {n} times" for e, n in recorded.items() if n > 1]
    problems += [
        f"audit entry for {e}, which is no audited outbox event" for e in sorted(set(recorded) - audited)
    ]
    startups = sum(1 for e in snap.audit if e["kind"] == "config.startup")
    if startups != starts:
        problems.append(f"{startups} config.startup audit entries for {starts} starts")
    return problems
