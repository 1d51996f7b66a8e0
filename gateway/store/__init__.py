"""Persistence behind one small interface (see base.py): SQLite is the embedded default backend,
PostgreSQL (asyncpg) the one several gateway processes can share."""

from __future__ import annotations

from gateway.config import StoreConfig
from gateway.store.base import Row, Store, StoreError, StoreUnavailable, Tx, UniqueViolation
from gateway.store.postgres import PostgresStore, redact_dsn, schema_from_dsn
from gateway.store.sqlite import SqliteStore

__all__ = [
    "PostgresStore",
    "Row",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Tx",
    "UniqueViolation",
    "describe_store",
    "is_postgres_dsn",
    "open_store",
]


def is_postgres_dsn(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://"))


async def open_store(config: StoreConfig) -> Store:
    """Open the configured backend (PostgreSQL when ``store.dsn`` is set) and apply pending migrations."""
    if config.dsn:
        if not is_postgres_dsn(config.dsn):
            raise StoreError("store.dsn must be a postgresql:// URL, or empty for the embedded SQLite store")
        return await PostgresStore.open(
            config.dsn, schema=config.schema_name or None, pool_size=config.pool_size
        )
    return await SqliteStore.open(
        config.path,
        max_batch=config.max_batch,
        readers=config.readers,
        busy_timeout_ms=config.busy_timeout_ms,
        max_pages=config.max_pages,
    )


def describe_store(config: StoreConfig) -> str:
    """Where the configured store lives, for messages: the SQLite path, or the DSN without its password."""
    if not config.dsn:
        return config.path
    schema = config.schema_name or schema_from_dsn(config.dsn)
    return redact_dsn(config.dsn) + (f" (schema {schema})" if schema else "")
