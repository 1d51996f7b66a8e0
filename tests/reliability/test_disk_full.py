"""The SQLite store runs out of space under a real `cryptocity serve`: 503s, never a 500 or a damaged file,
and creation resumes by itself once space is given back.

Two ways to fill it:

- ``max_pages``: ``store.max_pages`` (PRAGMA max_page_count on the writer) caps the file a few pages above
  what it holds at start, part of it a filler table the test wrote. Space is given back by deleting the
  filler rows from the test's own connection (their pages go to the free list the writer reuses). Runs
  everywhere;
- ``tmpfs``: a real full disk. The gateway runs in a private mount namespace (``unshare -m``) whose store
  directory is a tmpfs of a few hundred KiB beyond the file and a filler file; SQLite then meets ENOSPC
  writing its write-ahead log. Space is given back by deleting the filler file (through
  ``/proc/<pid>/root``, the namespace's view). Needs root and mount namespaces; skipped without them. The
  mount dies with the namespace, so nothing is left mounted whatever happens to the test.

Either way: invoices are created until the store refuses several in a row; every answer is 201 or 503
``application/problem+json``; the file passes ``PRAGMA integrity_check``; every invoice answered 201 reads
back as created; after space is given back, creation succeeds again without a restart, and the gateway
stops cleanly. ``CRYPTOCITY_FAULT_DISK_HEADROOM_PAGES`` (default 64 pages of 4 KiB) is how much room the
store has before it is full; the full-size run uses 4096 (16 MiB, thousands of invoices).
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.gateway_process import GatewayProcess, cli_env, create_merchant, start_gateway
from tests.reliability.fault_checks import env_number, report

pytestmark = pytest.mark.integration

HEADROOM_PAGES = int(env_number("CRYPTOCITY_FAULT_DISK_HEADROOM_PAGES", 64))
PAGE = 4096
FILLER_BYTES = 1 << 20  # what is given back: room for many more invoices
TMPFS_FACTOR = 16
REFUSED_IN_A_ROW = 5  # "full": this many creations refused one after the other


# Run where the store is (inside the gateway's mount namespace for tmpfs): its integrity and invoice ids.
_INSPECT = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
ids = [row[0] for row in conn.execute("SELECT id FROM invoices")]
last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
behind = [name for name, at in conn.execute("SELECT consumer, position FROM consumer_cursors") if at < last]
print(json.dumps({"integrity": ok, "invoices": ids, "consumers_behind": behind}))
"""


@dataclass
class Disk:
    """Where the gateway's store is and how to look at it and give space back. ``pid`` is the gateway's
    when it runs in a mount namespace of its own (tmpfs): SQLite resolves symbolic links in a database
    path, so ``/proc/<pid>/root/...`` would lead it back to this namespace; it is inspected from inside."""

    how: str
    db: Path
    pid: int | None = None

    def give_back(self) -> None:
        if self.pid is not None:
            self._inside().joinpath("filler").unlink()  # plain file operations do follow /proc/<pid>/root
            return
        with sqlite3.connect(self.db, timeout=10) as conn:
            conn.execute("DELETE FROM reliability_filler")

    def _inside(self) -> Path:
        return Path(f"/proc/{self.pid}/root") / self.db.parent.relative_to("/")

    def inspect(self) -> tuple[str, set[str], list[str]]:
        """``PRAGMA integrity_check``'s verdict, the ids of the stored invoices and the outbox consumers
        (webhooks, ledger, audit) whose cursor is short of the last event."""
        command = [sys.executable, "-c", _INSPECT, str(self.db)]
        if self.pid is not None:
            command = ["nsenter", f"--target={self.pid}", "--mount", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        found = json.loads(result.stdout)
        return str(found["integrity"]), set(found["invoices"]), list(found["consumers_behind"])


def request(
    gateway: GatewayProcess, method: str, path: str, key: str, body: Any = None, **headers: str
) -> tuple[int, str, Any]:
    """Status, content type and decoded body (the gateway answers JSON or problem+json)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback only
        gateway.base_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            return response.status, response.headers.get_content_type(), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), json.loads(error.read() or b"null")


def create(gateway: GatewayProcess, key: str, number: int) -> tuple[int, str, Any]:
    return request(
        gateway,
        "POST",
        "/v1/invoices",
        key,
        {"amount": f"{1000 + number}.00", "currency": "KZT", "metadata": {"order": f"order-{number:06d}"}},
        **{"Idempotency-Key": f"disk-full-{number}"},
    )


def add_filler(db: Path, size: int) -> None:
    """A table of blobs the test owns, written before the gateway starts, to be deleted while it runs."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reliability_filler (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")
        conn.executemany(
            "INSERT INTO reliability_filler (pad) VALUES (?)", [(os.urandom(3000),)] * (size // 3000)
        )
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def page_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


def tmpfs_available(probe: Path) -> bool:
    probe.mkdir()
    script = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"
    try:
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def start_on_a_small_disk(tmp_path: Path, how: str) -> tuple[GatewayProcess, Disk]:
    seed = tmp_path / "gateway.sqlite3"  # where the merchant was created (and the store migrated)
    if how == "max_pages":
        add_filler(seed, FILLER_BYTES)
        cap = page_count(seed) + HEADROOM_PAGES
        env = cli_env(tmp_path, CRYPTOCITY_STORE__MAX_PAGES=str(cap))
        return start_gateway(tmp_path, env=env), Disk(how, seed)
    mount = tmp_path / "disk"
    if not tmpfs_available(tmp_path / "probe"):
        pytest.skip("no mount namespace with tmpfs here (needs root): the max_pages variant covers this")
    mount.mkdir()
    with sqlite3.connect(seed) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # The write-ahead log takes whole pages per commit (tens of KiB an invoice) until it is checkpointed
    # at 1000 pages: give it TMPFS_FACTOR times the headroom, so the log fills, is checkpointed into a
    # growing file, and the disk runs out on the way.
    room = HEADROOM_PAGES * PAGE * TMPFS_FACTOR
    size = seed.stat().st_size + FILLER_BYTES + room + 64 * 1024  # + the -shm index
    target = mount / "gateway.sqlite3"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))}"
        f" && cp {shlex.quote(str(seed))} {shlex.quote(str(target))}"
        f" && head -c {FILLER_BYTES} /dev/zero > {shlex.quote(str(mount / 'filler'))}"
        ' && exec "$@"'
    )
    env = cli_env(tmp_path, CRYPTOCITY_STORE__PATH=str(target))
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    gateway = start_gateway(tmp_path, env=env, wrapper=wrapper)
    return gateway, Disk(how, target, gateway.process.pid)


@pytest.mark.parametrize("how", ["max_pages", "tmpfs"])
def test_a_full_store_answers_503_keeps_every_invoice_and_resumes_when_space_returns(
    tmp_path: Path, how: str
) -> None:
    key = create_merchant(tmp_path)["api_key"]
    gateway, disk = start_on_a_small_disk(tmp_path, how)
    try:
        created: dict[str, Any] = {}
        statuses: Counter[int] = Counter()
        refused_in_a_row = 0
        first_refusal = ""
        number = 0
        started = time.monotonic()
        while refused_in_a_row < REFUSED_IN_A_ROW:
            number += 1
            assert number < HEADROOM_PAGES * TMPFS_FACTOR * 20 + 200, f"the store never filled up: {statuses}"
            status, content_type, body = create(gateway, key, number)
            statuses[status] += 1
            if status == 201:
                created[body["id"]] = body
                refused_in_a_row = 0
                continue
            assert (status, content_type) == (503, "application/problem+json"), (status, content_type, body)
            assert body["status"] == 503, body
            first_refusal = first_refusal or str(body.get("detail"))
            refused_in_a_row += 1
        filled_in = time.monotonic() - started
        assert set(statuses) <= {201, 503} and created, statuses
        assert gateway.process.poll() is None, "the gateway died of a full disk"

        verdict, stored, _ = disk.inspect()
        assert verdict == "ok" and set(created) == stored
        for invoice_id, body in created.items():
            status, _, read = request(gateway, "GET", f"/v1/invoices/{invoice_id}", key)
            assert status == 200 and read["id"] == invoice_id and read["metadata"] == body["metadata"]
        status, _, still = create(gateway, key, number)  # the last refused request, retried: still full
        assert status == 503, still

        disk.give_back()
        deadline = time.monotonic() + 30
        while True:  # the same Idempotency-Key as the refused request: the refusal was not remembered
            status, _, resumed = create(gateway, key, number)
            if status == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 201, resumed
        created[resumed["id"]] = resumed
        more = [create(gateway, key, number + extra) for extra in range(1, 11)]
        assert [s for s, _, _ in more] == [201] * 10
        verdict, stored, _ = disk.inspect()
        assert verdict == "ok" and set(created) <= stored and len(stored) == len(created) + len(more)
        deadline = time.monotonic() + 60  # the consumers that failed while full retry with a backoff
        while (behind := disk.inspect()[2]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert behind == [], f"outbox consumers still behind after space returned: {behind}"
    finally:
        exit_code = gateway.stop()
    assert exit_code == 0, gateway.process.stderr
    report(
        f"disk_full.{how}",
        headroom_pages=HEADROOM_PAGES,
        created_before_full=len(created) - 1,
        refused=statuses[503],
        seconds_to_fill=round(filled_in, 2),
        first_refusal=first_refusal,
    )
