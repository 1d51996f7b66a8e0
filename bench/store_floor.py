"""The floor under durable invoice creation: SQLite alone writing the rows of one create.

Runs the exact statements a create's transaction unit issues (idempotency claim, invoice row, two address
rows, the outbox event, each unit in its savepoint) with payloads of the real sizes, in batches like the
group commit makes, with no HTTP, no service logic and no event loop. Whatever this costs per invoice, the
gateway cannot go below it in one process; compare it with the bare handler's cost per request.

    python bench/store_floor.py            # 12,000 invoices, batches of 25 (a typical group commit under load)
    python bench/store_floor.py --quick
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.ids import new_id  # noqa: E402
from gateway.store.migrations import apply_sqlite_migrations  # noqa: E402
from gateway.store.sqlite import _configure  # noqa: E402

# Sizes of a real create (measured from the gateway's rows for a three-asset invoice).
STATE_BYTES, QUOTE_BYTES, METHODS_BYTES, EVENT_BYTES = 700, 350, 1100, 2300


def run(invoices: int, batch: int, path: Path) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    _configure(conn, 5000)
    apply_sqlite_migrations(conn)
    conn.execute(
        "INSERT INTO merchants (id, name, btc_account_key, eth_account_key, accepted_assets,"
        " default_expiry_seconds, status, created_at, updated_at) VALUES ('m', 'n', 'b', 'e', '[]', NULL, 'active', 't', 't')"
    )
    state, quote, methods, payload = (
        "s" * STATE_BYTES,
        "q" * QUOTE_BYTES,
        "p" * METHODS_BYTES,
        "e" * EVENT_BYTES,
    )
    stamp = "2026-11-23T12:00:00.000Z"
    commit_seconds = 0.0
    started = time.perf_counter()
    for block in range(invoices // batch):
        conn.execute("BEGIN IMMEDIATE")
        for i in range(batch):
            invoice_id, event_id, index = new_id("inv"), new_id("evt"), block * batch + i
            conn.execute("SAVEPOINT unit")
            conn.execute(
                "INSERT INTO idempotency_keys (merchant_id, key, request_hash, status_code, response_event,"
                " created_at) VALUES (?, ?, ?, 201, ?, ?) ON CONFLICT (merchant_id, key) DO NOTHING",
                ("m", invoice_id, "h" * 64, event_id, stamp),
            )
            conn.execute(
                "INSERT INTO invoices (id, merchant_id, status, flags, price_tiyn, currency, tolerance, order_id,"
                " description, metadata, redirect_url, quote, payment_methods, state, version, created_at,"
                " updated_at, expires_at) VALUES (?, 'm', 'new', '[]', 530000, 'KZT', '0', 'o', 'd', NULL, NULL,"
                " ?, ?, ?, 0, ?, ?, ?)",
                (invoice_id, quote, methods, state, stamp, stamp, stamp),
            )
            conn.executemany(
                "INSERT INTO invoice_addresses (chain, address, invoice_id, account_key, derivation_index)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    ("bitcoin", f"bc1q{invoice_id}", invoice_id, "b", index),
                    ("ethereum", f"0x{invoice_id}", invoice_id, "e", index),
                ],
            )
            conn.execute(
                "INSERT INTO outbox (id, type, merchant_id, invoice_id, invoice_version, created_at, payload)"
                " VALUES (?, 'invoice.created', 'm', ?, 0, ?, ?)",
                (event_id, invoice_id, stamp, payload),
            )
            conn.execute("RELEASE unit")
        before_commit = time.perf_counter()
        conn.execute("COMMIT")
        commit_seconds += time.perf_counter() - before_commit
    elapsed = time.perf_counter() - started
    conn.close()
    done = invoices // batch * batch
    return {
        "invoices": done,
        "batch": batch,
        "invoices_per_second": done / elapsed,
        "microseconds_per_invoice": elapsed / done * 1e6,
        "commit_share": commit_seconds / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--invoices", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    invoices = 1000 if args.quick else args.invoices
    with tempfile.TemporaryDirectory() as tmp:
        result = run(invoices, args.batch, Path(tmp) / "floor.sqlite3")
    print(f"{'invoices':>9}{'batch':>7}{'inv/s':>10}{'us/inv':>9}{'commit %':>10}")
    print(
        f"{result['invoices']:>9.0f}{result['batch']:>7.0f}{result['invoices_per_second']:>10.0f}"
        f"{result['microseconds_per_invoice']:>9.0f}{100 * result['commit_share']:>10.0f}"
    )
    out = args.out or ROOT / "bench" / "results" / (
        "store_floor.quick.json" if args.quick else "store_floor.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "store_floor", "quick": args.quick, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
