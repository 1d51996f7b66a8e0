"""``cryptocity store migrate-sqlite-to-pg``: move a stopped gateway's SQLite file into PostgreSQL.

The copy itself is gateway/store/transfer.py; this adds the pilot's checks (ledger books, audit chain:
sandbox/transfer_checks.py), reads defaults from the configuration and prints the per-table counts.
Exit status: 0 copied and verified; 1 the copy or a check failed (rolled back, the target is left empty);
2 refused before copying (a gateway still running on the file, a migration version mismatch, a target that
already holds rows, a bad argument).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.config import Config
from gateway.store import is_postgres_dsn
from gateway.store.transfer import (
    DEFAULT_BATCH_SIZE,
    TransferFailed,
    TransferRefused,
    TransferReport,
    migrate_sqlite_to_postgres,
)
from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey, AuditKeyError
from sandbox.transfer_checks import pilot_checks

_DESCRIPTION = """\
Copy every table of the embedded SQLite store into a PostgreSQL schema in one transaction, reset the
identity sequences, and verify (row counts, row digests, ledger balances, audit chain) before committing.
Stop the gateway first: the file is read in one snapshot, and later writes would not be copied. The
target schema is created and migrated if needed and must hold no rows. Exit 0: copied and verified;
1: failed and rolled back (the target is left empty); 2: refused before copying."""


def add_store_commands(subparsers: Any) -> None:
    """Register ``store migrate-sqlite-to-pg`` on the ``cryptocity`` sub-command parsers."""
    store = subparsers.add_parser("store", help="move the gateway's data between store backends")
    ssub = store.add_subparsers(dest="store_action", required=True)
    move = ssub.add_parser(
        "migrate-sqlite-to-pg",
        help="copy a stopped gateway's SQLite store into an empty PostgreSQL schema, verified",
        description=_DESCRIPTION,
    )
    move.add_argument(
        "--from", dest="source", type=Path, metavar="PATH", help="the SQLite file (default: store.path)"
    )
    move.add_argument(
        "--to", dest="dsn", metavar="DSN", help="postgresql://user:password@host:5432/db (default: store.dsn)"
    )
    move.add_argument(
        "--schema",
        help="target schema, created if missing (default: store.schema, else the DSN's search_path,"
        " else the server's default, normally public)",
    )
    move.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per COPY batch (default %(default)s)"
    )
    move.add_argument(
        "--audit-key-file",
        type=Path,
        help=f"the regulator's audit key, to check the head MACs (default: ${KEY_FILE_ENV}, then ${KEY_ENV})",
    )
    move.add_argument("--json", action="store_true", help="print the report as JSON")


async def run_store_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``cryptocity store …``; returns the exit status."""
    source = args.source or Path(config.store.path)
    dsn = args.dsn or config.store.dsn
    if not dsn or not is_postgres_dsn(dsn):
        print("store: --to must be a postgresql:// URL (or set store.dsn)", file=sys.stderr)
        return 2
    schema = args.schema or config.store.schema_name or None
    try:
        key = AuditKey.load(args.audit_key_file)
    except AuditKeyError as exc:
        print(f"audit key: {exc}", file=sys.stderr)
        return 2
    try:
        report = await migrate_sqlite_to_postgres(
            source,
            dsn,
            schema=schema,
            checks=pilot_checks(key),
            batch_size=args.batch_size,
            progress=_progress,
        )
    except TransferRefused as exc:
        print(f"store: refused, nothing copied: {exc}", file=sys.stderr)
        return 2
    except TransferFailed as exc:
        _print(exc.report, as_json=args.json)
        print(f"store: {exc}", file=sys.stderr)
        return 1
    _print(report, as_json=args.json)
    rows = sum(t.target_rows for t in report.tables)
    print(
        f"copied {rows} rows of {len(report.tables)} tables into schema {report.schema} of {report.target};"
        f" set store.dsn and store.schema = {report.schema!r} and start the gateway",
        file=sys.stderr,
    )
    return 0


def _progress(table: str, rows: int) -> None:
    print(f"  copied {rows} rows of {table}", file=sys.stderr, flush=True)


def _print(report: TransferReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.view(), indent=2))
        return
    console = Console(width=max(100, Console().width))
    counts = Table(title=f"{report.source} -> {report.target} (schema {report.schema})")
    for column in ("table", "SQLite rows", "PostgreSQL rows", "rows match"):
        counts.add_column(column, justify="left" if column == "table" else "right")
    for t in report.tables:
        shown = str(t.target_rows) if t.target_rows >= 0 else "-"
        counts.add_row(t.name, str(t.source_rows), shown, "yes" if t.ok else "NO")
    console.print(counts)
    if report.sequences:
        sequences = Table(title="sequences")
        for column in ("table", "column", "next value"):
            sequences.add_column(column)
        for s in report.sequences:
            sequences.add_row(s.table, s.column, str(s.next_value))
        console.print(sequences)
    if report.checks:
        checks = Table(title="checks")
        for column in ("check", "ok", "detail"):
            checks.add_column(column)
        for c in report.checks:
            checks.add_row(c.name, "yes" if c.ok else "NO", c.detail)
        console.print(checks)
    console.print("committed" if report.committed else "rolled back: the target holds no rows")
