"""``cryptocity audit verify`` and ``cryptocity audit head``: the regulator's two commands.

``verify`` walks the whole chain and says in one line whether it is intact and authenticated (exit 0),
or names the first fault (exit 1); ``--json`` prints the full result instead. ``head`` prints the current
authenticated head (seq, hash, MAC), the value that exports and reports quote so that a later verify can
prove the log still contains it (``verify --expect-head SEQ:HASH``).

Both read the database named by ``--db`` or, by default, the configured store, opened read-only: they
never migrate or write, so they are safe on a regulator's copy and beside a running gateway. Usage
errors (an unreadable key, a missing file) exit 2, like the other commands.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from gateway.config import Config
from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey, AuditKeyError
from sandbox.audit.store import chain_bounds, latest_head
from sandbox.audit.verify import AuditLogMissing, open_readonly, verify

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
    check.add_argument("--db", type=Path, help="SQLite file to verify (default: the configured store.path)")
    check.add_argument("--json", action="store_true", help="print the full result as JSON")
    head = asub.add_parser("head", help="print the current chain head (seq, hash, MAC) for exports")
    head.add_argument("--db", type=Path, help="SQLite file to read (default: the configured store.path)")
    head.add_argument("--json", action="store_true", help="print the head as JSON")


async def run_audit_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``cryptocity audit …``; returns the exit status."""
    db = args.db or Path(config.store.path)
    try:
        if args.audit_action == "verify":
            return await _verify(db, args)
        return await _head(db, as_json=args.json)
    except (AuditKeyError, AuditLogMissing) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2


async def _verify(db: Path, args: argparse.Namespace) -> int:
    expected = None
    if args.expect_head:
        match = _EXPECTED_HEAD.match(args.expect_head.strip())
        if match is None:
            print("audit: --expect-head must be SEQ:HASH (a decimal seq and 64 hex digits)", file=sys.stderr)
            return 2
        expected = (int(match.group(1)), match.group(2).lower())
    key = AuditKey.load(args.key_file)
    result = await verify(db, key, expected_head=expected)
    if args.json:
        print(json.dumps(result.view(), indent=2))
    else:
        print(result.verdict())
    return 0 if result.ok else 1


async def _head(db: Path, *, as_json: bool) -> int:
    reader = open_readonly(db)
    try:
        last_entry, _ = await reader.read(chain_bounds)
        head = await reader.read(latest_head)
    finally:
        reader.close()
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
