"""``cryptocity audit verify`` and ``cryptocity audit head``: the regulator's two commands.

``verify`` walks the whole chain and says in one line whether it is intact and authenticated (exit 0),
or names the first fault (exit 1); ``--json`` prints the full result instead. ``head`` prints the current
authenticated head (seq, hash, MAC), the value that exports and reports quote so that a later verify can
prove the log still contains it (``verify --expect-head SEQ:HASH``).

Both read the database named by ``--db`` or, by default, the configured store (the SQLite file, or the
PostgreSQL schema when ``store.dsn`` is set), opened read-only: they never migrate or write, so they are
safe on a regulator's copy and beside a running gateway. Usage errors (an unreadable key, a missing file)
exit 2, like the other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.store import PostgresStore, Tx
from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey, AuditKeyError
from sandbox.audit.store import chain_bounds, latest_head
from sandbox.audit.verify import AuditLogMissing, Reader, open_readonly, verify

_EXPECTED_HEAD = re.compile(r"^(\d+):([0-9a-fA-F]{64})$")


def add_audit_commands(subparsers: Any) -> None:
    """Register ``audit verify`` and ``audit head`` on the ``cryptocity`` sub-command parsers."""
    audit = subparsers.add_parser("audit", help="verify the sandbox's tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_action", required=True)
    check = asub.add_parser("verify", help="recompute every hash and check the heads; exit 1 on a fault")
    check.add_argument(
        "--key-file",
        type=Path,
        help=f"the regulator's audit key (default: ${KEY_FILE_ENV}, then ${KEY_ENV}; none: unauthenticated)",
    )
    check.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head from an earlier export that the chain must still contain",
    )
    check.add_argument("--db", type=Path, help="SQLite file to verify (default: the configured store)")
    check.add_argument("--json", action="store_true", help="print the full result as JSON")
    head = asub.add_parser("head", help="print the current chain head (seq, hash, MAC) for exports")
    head.add_argument("--db", type=Path, help="SQLite file to read (default: the configured store)")
    head.add_argument("--json", action="store_true", help="print the head as JSON")


async def run_audit_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``cryptocity audit …``; returns the exit status."""
    try:
        async with _source(args, config) as source:
            if args.audit_action == "verify":
                return await _verify(source, args)
            return await _head(source, as_json=args.json)
    except (AuditKeyError, AuditLogMissing) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2


@contextlib.asynccontextmanager
async def _source(args: argparse.Namespace, config: Config) -> AsyncIterator[Reader]:
    """The log to read: ``--db``, else the configured SQLite file or PostgreSQL schema, read-only."""
    if args.db is not None or not config.store.dsn:
        reader = open_readonly(args.db or Path(config.store.path))
        try:
            yield reader
        finally:
            reader.close()
        return
    store = await PostgresStore.open(
        config.store.dsn, schema=config.store.schema_name or None, pool_size=2, migrate=False
    )
    try:
        if await store.read(_has_audit_tables) != 2:
            raise AuditLogMissing("no audit log in this PostgreSQL schema (run `cryptocity migrate` first)")
        yield store
    finally:
        await store.close()


async def _has_audit_tables(tx: Tx) -> int:
    row = await tx.fetchone(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_name IN ('audit_log', 'audit_heads')"
    )
    return 0 if row is None else int(row["n"])


async def _verify(source: Reader, args: argparse.Namespace) -> int:
    expected = None
    if args.expect_head:
        match = _EXPECTED_HEAD.match(args.expect_head.strip())
        if match is None:
            print("audit: --expect-head must be SEQ:HASH (a decimal seq and 64 hex digits)", file=sys.stderr)
            return 2
        expected = (int(match.group(1)), match.group(2).lower())
    key = AuditKey.load(args.key_file)
    result = await verify(source, key, expected_head=expected)
    if args.json:
        print(json.dumps(result.view(), indent=2))
    else:
        print(result.verdict())
    return 0 if result.ok else 1


async def _head(source: Reader, *, as_json: bool) -> int:
    last_entry, _ = await source.read(chain_bounds)
    head = await source.read(latest_head)
    if head is None:
        print(
            "audit: the log has no head yet" if last_entry == 0 else "audit: entries but no head",
            file=sys.stderr,
        )
        return 1
    view = {**head.view(), "last_entry_seq": last_entry}
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        mac = head.mac or "none (the gateway runs without an audit key)"
        print(
            f"head {head.seq}:{head.hash}\nmac {mac}\nkey_id {head.key_id or '-'}\nsigned_at {head.signed_at}"
        )
        if last_entry != head.seq:
            print(
                f"warning: the last entry is seq {last_entry}; run `cryptocity audit verify`", file=sys.stderr
            )
    return 0
