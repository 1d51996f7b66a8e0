"""The sandbox's append-only, hash-chained audit log, whose head the regulator's key authenticates.

``canonical`` is the RFC 8785 encoding every hash is taken over; ``chain`` the pure entry and hash
definitions; ``keys`` the regulator's key (loading, head MACs); ``events`` what an outbox event becomes;
``store`` the SQL (migration 0008); ``consumer`` the outbox consumer the composition root registers;
``startup`` the ``config.startup`` entry; ``verify`` the chain walk; ``cli`` ``cryptocity audit``. How to
verify without this code: docs/audit-log.md. The gateway never imports this package.
"""

from sandbox.audit.canonical import FloatRefused, NotCanonical, canonical_json
from sandbox.audit.chain import GENESIS_HASH, AuditEntry, EntryDraft, entry_hash
from sandbox.audit.cli import add_audit_commands, run_audit_command
from sandbox.audit.consumer import AuditConsumer, audit_extensions
from sandbox.audit.keys import AuditKey, AuditKeyError
from sandbox.audit.startup import record_startup, redacted_config
from sandbox.audit.store import Head
from sandbox.audit.verify import Problem, ProblemKind, VerifyResult, verify

__all__ = [
    "GENESIS_HASH",
    "AuditConsumer",
    "AuditEntry",
    "AuditKey",
    "AuditKeyError",
    "EntryDraft",
    "FloatRefused",
    "Head",
    "NotCanonical",
    "Problem",
    "ProblemKind",
    "VerifyResult",
    "add_audit_commands",
    "audit_extensions",
    "canonical_json",
    "entry_hash",
    "record_startup",
    "redacted_config",
    "run_audit_command",
    "verify",
]
