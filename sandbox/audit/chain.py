"""The hash chain itself, pure: what an entry is, what its hash covers, how entries link.

An entry's hash is ``SHA-256`` (lower-case hex) of the RFC 8785 canonical JSON of the object::

    {"seq": …, "id": …, "recorded_at": …, "kind": …, "subject": …, "event_id": …, "body": {…}, "prev_hash": …}

with ``body`` as the parsed JSON object (not its text) and ``subject`` / ``event_id`` possibly null. Each
entry's ``prev_hash`` is the previous entry's hash, the first one's is 64 zeros, so changing, removing or
reordering any entry changes every hash after it. Everything the table stores except ``hash`` is covered.
This definition is repeated in docs/audit-log.md for regulators who verify with their own tools: change
both or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.audit.canonical import NotCanonical, canonical_json, sha256_hex

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class EntryDraft:
    """What a producer (the consumer, the start-up record) wants appended; the store numbers and links it."""

    kind: str
    subject: str | None
    event_id: str | None
    body: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.body, dict):
            raise NotCanonical("$", "an audit body must be a JSON object")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored entry; ``body`` is its canonical JSON text, exactly as in the ``audit_log`` table."""

    seq: int
    id: str
    recorded_at: str
    kind: str
    subject: str | None
    event_id: str | None
    body: str
    prev_hash: str
    hash: str


def hashed_object(
    *,
    seq: int,
    id: str,
    recorded_at: str,
    kind: str,
    subject: str | None,
    event_id: str | None,
    body: Any,
    prev_hash: str,
) -> dict[str, Any]:
    """The object whose canonical JSON is hashed (``body`` already parsed)."""
    return {
        "seq": seq,
        "id": id,
        "recorded_at": recorded_at,
        "kind": kind,
        "subject": subject,
        "event_id": event_id,
        "body": body,
        "prev_hash": prev_hash,
    }


def entry_hash(**fields: Any) -> str:
    """SHA-256 hex of the canonical entry; takes the keyword arguments of :func:`hashed_object`."""
    return sha256_hex(canonical_json(hashed_object(**fields)))


def seal(draft: EntryDraft, *, seq: int, id: str, recorded_at: str, prev_hash: str) -> AuditEntry:
    """Number, link and hash a draft. Raises :class:`NotCanonical` (e.g. a float) before anything is written.

    The body is canonicalised once and its bytes spliced into the entry's canonical form
    (:func:`_entry_bytes`): sealing runs inside the writer's transaction, and encoding every body twice
    doubled its cost. A test checks the splice against :func:`entry_hash` on random entries.
    """
    body_bytes = canonical_json(draft.body)
    digest = sha256_hex(
        _entry_bytes(seq, id, recorded_at, draft.kind, draft.subject, draft.event_id, body_bytes, prev_hash)
    )
    return AuditEntry(
        seq,
        id,
        recorded_at,
        draft.kind,
        draft.subject,
        draft.event_id,
        body_bytes.decode("utf-8"),
        prev_hash,
        digest,
    )


def _entry_bytes(
    seq: int,
    id: str,
    recorded_at: str,
    kind: str,
    subject: str | None,
    event_id: str | None,
    body: bytes,
    prev_hash: str,
) -> bytes:
    """RFC 8785 of the hashed object with the body's canonical bytes given: RFC 8785 is compositional, and
    the member names are fixed ASCII, so their canonical order is the alphabetical one written here."""
    return b"".join(
        (
            b'{"body":',
            body,
            b',"event_id":',
            canonical_json(event_id),
            b',"id":',
            canonical_json(id),
            b',"kind":',
            canonical_json(kind),
            b',"prev_hash":',
            canonical_json(prev_hash),
            b',"recorded_at":',
            canonical_json(recorded_at),
            b',"seq":',
            canonical_json(seq),
            b',"subject":',
            canonical_json(subject),
            b"}",
        )
    )
