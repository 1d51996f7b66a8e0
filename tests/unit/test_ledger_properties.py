"""Properties of the ledger over random event streams built through the REAL lifecycle.

Several invoices of two merchants receive random payments (any asset, exact / partial / surplus amounts,
held or not, 0-3 confirmations, RBF or not), confirmations up and down, drops and re-appearances, clock
ticks, accept-late, releases, refunds and cancels, in random interleavings; whatever the lifecycle refuses
is skipped. The outbox events those changes write are then booked:

- in memory (``model.book``): every entry balances, the trial balance is zero, a second delivery of any
  event books nothing, the ledger's mirror of the payments agrees with the lifecycle after every change,
  and every account equals what the lifecycle states say it must (merchant settlement = prices of the
  settled invoices; fx / overpaid = their surplus; held / refunds = the held / refunded payments; clearing
  = minus all of it);
- through the SQL and the ``LedgerConsumer`` on a real SQLite database holding the gateway's tables, in
  random batch sizes with batches handed twice: the journal is the same as in memory, maintained balances
  equal the SUM over lines, and the trial balance is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

from gateway.invoices.lifecycle import (
    AcceptLate,
    Cancel,
    DropReason,
    Event,
    PaymentConfirmations,
    PaymentDropped,
    PaymentSeen,
    PaymentStatus,
    RefundHold,
    ReleaseHold,
    Tick,
    amount_remaining_minor,
)
from gateway.money import Asset, crypto_due
from gateway.outbox import read_events_after
from sandbox.ledger import store
from sandbox.ledger.consumer import LedgerConsumer
from sandbox.ledger.model import InvoiceBook, JournalEntry, balances_of, book, book_all
from tests.unit.test_ledger_harness import Sim, SimInvoice, SyncTx, expected_balances, memory_db, nonzero, run

MERCHANTS = ("mer_a", "mer_b")


@dataclass(frozen=True)
class InvoiceSpec:
    price: int
    tolerance: Decimal
    assets: dict[Asset, int]
    expires_in: int


invoice_specs = st.builds(
    InvoiceSpec,
    price=st.integers(min_value=100, max_value=10**8),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.005"), Decimal("0.02")]),
    assets=st.dictionaries(st.sampled_from(list(Asset)), st.integers(0, 2), min_size=1),
    expires_in=st.integers(60, 1800),
)

# One step: (kind, invoice pick, payment pick, amount kind, confirmations, flag, held)
steps = st.tuples(
    st.sampled_from(
        ["pay"] * 4
        + ["confirm"] * 3
        + ["drop", "revive", "tick", "accept", "release"] * 2
        + ["refund", "cancel"]
    ),
    st.integers(0, 7),
    st.integers(0, 7),
    st.sampled_from(["due", "due", "half", "double", "one"]),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
)
Step = tuple[str, int, int, str, int, bool, bool]


def _amount(invoice: SimInvoice, asset: Asset, kind: str) -> int:
    state = invoice.state
    terms = state.terms[asset]
    due = amount_remaining_minor(state, asset) or crypto_due(state.price_tiyn, terms.rate_kzt, terms.decimals)
    return max(1, {"due": due, "half": due // 2, "double": 2 * due, "one": 1}[kind])


def _pick(invoice: SimInvoice, pick: int, statuses: set[PaymentStatus]) -> str | None:
    """A payment of the invoice in one of ``statuses`` (any payment if none is), or None if it has none."""
    payments = invoice.state.payments
    keys = [k for k, p in payments.items() if p.status in statuses] or list(payments)
    return keys[pick % len(keys)] if keys else None


def simulate(specs: list[InvoiceSpec], plan: list[Step], sim: Sim) -> Sim:
    invoices = [
        sim.create(MERCHANTS[n % 2], s.price, s.assets, tolerance=s.tolerance, expires_in=s.expires_in)
        for n, s in enumerate(specs)
    ]
    made = 0
    for kind, pick, payment_pick, amount_kind, confirmations, flag, held in plan:
        invoice = invoices[pick % len(invoices)]
        event: Event | None = None
        if kind == "pay":
            assets = list(invoice.state.terms)
            asset = assets[payment_pick % len(assets)]
            made += 1
            event = PaymentSeen(
                f"{made:064x}:0",
                asset,
                _amount(invoice, asset, amount_kind),
                confirmations,
                rbf_signalling=flag and confirmations == 0,
                held=held and flag,
                hold_reason="limit",
            )
        elif kind == "tick":
            sim.advance(300 * (confirmations + 1))
            event = Tick()
        elif kind == "accept":
            event = AcceptLate()
        elif kind == "cancel" and flag and held:  # rarer: a cancel ends most of the story
            event = Cancel()
        elif kind in ("release", "refund"):
            key = _pick(invoice, payment_pick, {PaymentStatus.HELD})
            if key is not None:
                event = ReleaseHold(key) if kind == "release" else RefundHold(key)
        elif kind == "revive":
            key = _pick(invoice, payment_pick, {PaymentStatus.DROPPED})
            if key is not None:
                p = invoice.state.payments[key]
                event = PaymentSeen(key, p.asset, p.amount_minor, confirmations, p.rbf_signalling)
        else:
            alive = {PaymentStatus.ACCEPTED, PaymentStatus.HELD, PaymentStatus.REFUNDED}
            key = _pick(invoice, payment_pick, alive)
            if key is None:
                pass
            elif kind == "confirm":
                event = PaymentConfirmations(key, confirmations)
            else:
                event = PaymentDropped(key, DropReason.DOUBLE_SPENT if flag else DropReason.REORGED_OUT)
        if event is not None:
            sim.apply(invoice, event)
    return sim


@st.composite
def stories(draw: st.DrawFn) -> list[Step]:
    """A few steps that tell one of the ledger's stories on one invoice (payment pick -1: the last one)."""
    i = draw(st.integers(0, 7))
    asset = draw(st.integers(0, 7))
    story = draw(st.sampled_from(["settle", "late", "release", "refund", "refund_dropped", "reversal"]))
    if story == "settle":
        return [("pay", i, asset, "due", 3, False, False)]
    if story == "late":
        return [("tick", i, 0, "due", 3, False, False)] * 2 + [
            ("pay", i, asset, "due", 3, False, False),
            ("accept", i, 0, "due", 0, False, False),
        ]
    if story in ("release", "refund"):
        return [("pay", i, asset, "due", 3, True, True), (story, i, -1, "due", 0, False, False)]
    if story == "refund_dropped":  # refunded, dropped, and back: held again
        return [
            ("pay", i, asset, "due", 3, True, True),
            ("refund", i, -1, "due", 0, False, False),
            ("drop", i, -1, "due", 0, True, False),
            ("revive", i, -1, "due", 1, False, False),
        ]
    return [
        ("pay", i, asset, "due", 0, False, False),
        ("drop", i, -1, "due", 0, True, False),
        ("revive", i, -1, "due", 3, False, False),
    ]


plans = st.lists(st.one_of(steps.map(lambda step: [step]), stories()), min_size=1, max_size=30).map(
    lambda parts: [step for part in parts for step in part]
)
scenarios = st.tuples(st.lists(invoice_specs, min_size=1, max_size=3), plans)


def _assert_sound(entries: list[JournalEntry]) -> None:
    for entry in entries:
        assert sum(line.amount_tiyn for line in entry.lines) == 0
    assert sum(balances_of(entries).values()) == 0
    assert len({e.id for e in entries}) == len(entries)


@given(scenarios)
def test_in_memory_ledger_matches_the_lifecycle(scenario: tuple[list[InvoiceSpec], list]) -> None:  # type: ignore[type-arg]
    specs, plan = scenario
    sim = simulate(specs, plan, Sim())
    books: dict[str, InvoiceBook] = {}
    entries: list[JournalEntry] = []
    ledger_events = sim.ledger_events()
    for event in ledger_events:
        result = book(event, books.get(event.invoice.id))
        books[event.invoice.id] = result.state
        entries += result.entries
        # handed twice: nothing more, nothing changed
        again = book(event, result.state)
        assert again.entries == () and again.state == result.state
    _assert_sound(entries)
    for leg in sorted({e.leg for e in entries}):
        label(f"books {leg}")
    for invoice in sim.invoices:
        state, mirror = invoice.state, books[invoice.id]
        assert {k: p.status for k, p in state.payments.items()} == {
            p.payment_key: p.status for p in mirror.payments
        }
        assert mirror.late_accepted == state.late_accepted
        assert mirror.settled == (state.status.value == "settled")
    assert nonzero(balances_of(entries)) == expected_balances(sim.invoices)
    # Booking the whole stream again, from scratch or on top of the final states, changes nothing.
    assert book_all(ledger_events)[0] == entries
    assert book_all(ledger_events, books) == ([], books)
    # And the settlement accounts are exactly the prices of the settled invoices.
    balances = balances_of(entries)
    for merchant in MERCHANTS:
        settled = sum(
            i.state.price_tiyn
            for i in sim.invoices
            if i.merchant_id == merchant and i.state.status.value == "settled"
        )
        assert balances.get(f"merchant:{merchant}:settlement", 0) == settled
        held = [p for i in sim.invoices if i.merchant_id == merchant for p in i.state.payments.values()]
        if not any(p.status is PaymentStatus.HELD for p in held):
            assert balances.get(f"held:{merchant}", 0) == 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(scenarios, st.lists(st.integers(1, 6), min_size=1, max_size=8), st.booleans())
def test_consumer_on_sqlite_books_the_same_journal_in_any_batching(
    scenario: tuple[list[InvoiceSpec], list],  # type: ignore[type-arg]
    batch_sizes: list[int],
    hand_twice: bool,
) -> None:
    specs, plan = scenario
    conn = memory_db()
    try:
        sim = simulate(specs, plan, Sim(db=conn))
        expected, _ = book_all(sim.ledger_events())
        tx = SyncTx(conn)
        consumer = LedgerConsumer()
        position, n = 0, 0
        while True:
            batch = run(read_events_after(tx, position, batch_sizes[n % len(batch_sizes)]))
            n += 1
            if not batch:
                break
            run(consumer.handle(tx, batch))
            if hand_twice:  # at-least-once: the same batch again (and an overlapping one) books nothing
                run(consumer.handle(tx, batch))
                run(consumer.handle(tx, run(read_events_after(tx, max(0, position - 2), 3))))
            position = batch[-1].seq

        posted = run(_all_entries(tx))
        assert [(e.id, e.leg, e.lines) for e in posted] == [(e.id, e.leg, e.lines) for e in expected]
        assert run(store.trial_balance(tx)) == 0
        assert run(store.verify_balances(tx)) == []
        assert run(store.unbalanced_entries(tx)) == []
        balances = balances_of(expected)
        for account, total in balances.items():
            assert run(store.balance(tx, account)) == total == run(store.balance_from_lines(tx, account))
        assert nonzero(run(store.balances(tx))) == nonzero(balances) == expected_balances(sim.invoices)
        for invoice in sim.invoices:
            saved = run(store.load_book(tx, invoice.id))
            assert saved is not None and saved.last_seq == max(
                e.seq for e in sim.events if e.invoice_id == invoice.id
            )
    finally:
        conn.close()


async def _all_entries(tx: SyncTx) -> list[JournalEntry]:
    rows = await tx.fetchall("SELECT DISTINCT invoice_id FROM ledger_entries")
    posted = [p for r in rows for p in await store.invoice_entries(tx, r["invoice_id"])]
    return [p.entry for p in sorted(posted, key=lambda p: p.seq)]
