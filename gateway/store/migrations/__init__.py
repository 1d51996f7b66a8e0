"""Numbered SQL migrations, applied in order, each in its own transaction, recorded in schema_migrations.

Files are named ``NNNN_description.sql`` under a folder per backend (``sqlite/`` and ``postgres/``); the two
folders hold the same numbers, each file the same tables, columns, keys and indexes in its backend's types
(a test compares the schemas they build). Applied migrations are never edited: a change is a new file in
both folders.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations must be numbered 1..n without gaps, found {versions}")
    return found


def apply_sqlite_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for migration in load_migrations("sqlite"):
        if migration.version in done:
            continue
        stamp = datetime.now(UTC).isoformat()
        # executescript cannot bind parameters; version is an int and name matched [a-z0-9_]+ above.
        record = (
            "INSERT INTO schema_migrations(version, name, applied_at) "  # noqa: S608
            f"VALUES ({migration.version}, '{migration.name}', '{stamp}');"
        )
        conn.executescript(f"BEGIN;\n{migration.sql}\n;{record}\nCOMMIT;")
        applied.append(migration.version)
    return applied


_PG_MIGRATION_LOCK = "SELECT pg_advisory_lock(hashtextextended('cryptocity.migrate:' || current_schema(), 0))"
_PG_MIGRATION_UNLOCK = (
    "SELECT pg_advisory_unlock(hashtextextended('cryptocity.migrate:' || current_schema(), 0))"
)


async def apply_postgres_migrations(conn: Any) -> list[int]:
    """Apply every PostgreSQL migration not yet recorded, on an asyncpg connection whose search_path is the
    target schema; returns the versions applied now.

    A session advisory lock per schema makes processes that start together take turns: the second finds
    the first one's migrations recorded and applies nothing.
    """
    await conn.execute(_PG_MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        done = {int(row["version"]) for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in load_migrations("postgres"):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    datetime.now(UTC).isoformat(),
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute(_PG_MIGRATION_UNLOCK)
