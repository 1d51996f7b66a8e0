"""The digital-tenge ledger of the sandbox: double-entry, integer tiyn, append-only.

``model`` holds the rules (accounts, balanced entries, what each outbox event books; pure), ``store`` the
SQL (journal, balances, per-invoice booked state, pages and streamed statements), ``consumer`` the outbox
consumer that ties them together. The gateway never imports this package: the composition root passes a
``LedgerConsumer`` to ``create_app`` through ``Extensions.consumers``.
"""

from sandbox.ledger.consumer import LedgerConsumer
from sandbox.ledger.model import (
    JournalEntry,
    LedgerEvent,
    LedgerMismatch,
    Line,
    UnbalancedEntry,
    book,
    postings_for,
)
from sandbox.ledger.store import LEDGER_SCHEMA_SQL

__all__ = [
    "LEDGER_SCHEMA_SQL",
    "JournalEntry",
    "LedgerConsumer",
    "LedgerEvent",
    "LedgerMismatch",
    "Line",
    "UnbalancedEntry",
    "book",
    "postings_for",
]
