"""Persistence behind one small interface (see base.py); SQLite is the embedded default backend."""

from __future__ import annotations

from gateway.config import StoreConfig
from gateway.store.base import Row, Store, StoreError, StoreUnavailable, Tx, UniqueViolation
from gateway.store.sqlite import SqliteStore

__all__ = [
    "Row",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Tx",
    "UniqueViolation",
    "open_store",
]


async def open_store(config: StoreConfig) -> Store:
    """Open the configured backend and apply pending migrations."""
    if config.dsn:
        raise StoreUnavailable(
            "store.dsn is set but this version has only the embedded SQLite store; leave store.dsn empty"
        )
    return await SqliteStore.open(
        config.path,
        max_batch=config.max_batch,
        readers=config.readers,
        busy_timeout_ms=config.busy_timeout_ms,
    )
