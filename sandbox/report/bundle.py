"""The report bundle: ``report.html``, one CSV file per table and chart, ``payments.csv``, ``manifest.json``.

The manifest is written last and lists every other file with its SHA-256 and size, with the audit head
and whether the log verified when the report was made. A stale manifest is removed first, so a bundle
whose writing was interrupted has none, and cannot pass for complete. Files of the bundle that are
already in the folder are overwritten; other files there are left alone (and not listed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from gateway.clock import isoformat
from sandbox.audit.verify import VerifyResult
from sandbox.ledger.store import Reader
from sandbox.regulator.exports import PAYMENT_COLUMNS, payment_view
from sandbox.report.data import PAGE_SIZE, MonthData, month_payments
from sandbox.report.figures import month_charts
from sandbox.report.html import ReportMeta, render_report
from sandbox.report.tables import csv_bytes, csv_lines, csv_text, month_tables

REPORT = "report.html"
MANIFEST = "manifest.json"
PAYMENTS = "payments.csv"
MANIFEST_KIND = "cryptocity.sandbox.monthly_report"
MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileDigest:
    name: str
    sha256: str
    bytes: int

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True, slots=True)
class Bundle:
    directory: Path
    files: tuple[FileDigest, ...]  # every file but the manifest, by name
    manifest: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.directory / REPORT


def _write(path: Path, body: bytes) -> FileDigest:
    path.write_bytes(body)
    return FileDigest(path.name, hashlib.sha256(body).hexdigest(), len(body))


class _HashingFile:
    """A file written chunk by chunk (from a worker thread) whose digest is known when it is closed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: BinaryIO = path.open("wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def close(self) -> FileDigest:
        self._file.close()
        return FileDigest(self._path.name, self._hash.hexdigest(), self._size)


async def write_payments_csv(
    path: Path, store: Reader, data: MonthData, page_size: int = PAGE_SIZE
) -> FileDigest:
    """Every payment judged in the month, as ``GET /sandbox/v1/exports/payments`` gives them, streamed."""
    target = await asyncio.to_thread(_HashingFile, path)
    try:
        await asyncio.to_thread(target.write, csv_bytes(PAYMENT_COLUMNS, []))
        batch: list[list[str]] = []
        async for row in month_payments(store, data.period, page_size):
            view = payment_view(row)
            batch.append([csv_text(view[name]) for name in PAYMENT_COLUMNS])
            if len(batch) >= page_size:
                await asyncio.to_thread(target.write, csv_lines(batch))
                batch = []
        if batch:
            await asyncio.to_thread(target.write, csv_lines(batch))
    finally:
        digest = await asyncio.to_thread(target.close)
    return digest


def manifest_view(
    data: MonthData, audit: VerifyResult, meta: ReportMeta, files: tuple[FileDigest, ...]
) -> dict[str, Any]:
    start, end = data.period.bounds_utc
    return {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "participant": meta.participant,
        "gateway": meta.gateway,
        "month": data.period.month,
        "period": {"from": start, "to": end, "timezone": data.period.timezone},
        "generated_at": isoformat(data.generated_at),
        "no_payments": not data.has_payments,
        "ledger_balanced": data.ledger.balanced,
        "audit": audit.view(),
        "files": [f.view() for f in files],
    }


async def write_bundle(
    directory: Path,
    store: Reader,
    data: MonthData,
    audit: VerifyResult,
    meta: ReportMeta,
    *,
    page_size: int = PAGE_SIZE,
) -> Bundle:
    """Write the month's bundle into ``directory`` (created if missing) and return what was written."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread((directory / MANIFEST).unlink, missing_ok=True)
    tables = month_tables(data)
    digests = [await write_payments_csv(directory / PAYMENTS, store, data, page_size)]
    charts = await asyncio.to_thread(month_charts, data)  # matplotlib is CPU work: off the event loop
    for table in tables.values():
        digests.append(await asyncio.to_thread(_write, directory / table.filename, table.to_csv()))
    listed = sorted([MANIFEST, *(d.name for d in digests)])
    page = render_report(data, audit, tables, charts, replace(meta, files=tuple(listed)))
    digests.append(await asyncio.to_thread(_write, directory / REPORT, page.encode("utf-8")))
    files = tuple(sorted(digests, key=lambda d: d.name))
    manifest = manifest_view(data, audit, meta, files)
    body = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    await asyncio.to_thread((directory / MANIFEST).write_bytes, body)
    return Bundle(directory, files, manifest)


def check_bundle(directory: Path) -> list[str]:
    """What is wrong with a bundle on disk (empty: every file the manifest lists is there, unchanged)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST}: cannot be read: {exc}"]
    problems = []
    for entry in manifest.get("files", []):
        path = directory / entry["name"]
        try:
            body = path.read_bytes()
        except OSError:
            problems.append(f"{entry['name']}: missing")
            continue
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['name']}: SHA-256 differs from the manifest")
    return problems
