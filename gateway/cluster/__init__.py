"""Several gateway processes on one PostgreSQL store: who leads (leader.py) and how commits of the others
reach this one (notify.py). With SQLite there is one process and it always leads."""

from __future__ import annotations

from gateway.cluster.leader import (
    ElectionSettings,
    Elector,
    Leadership,
    PostgresElection,
    Role,
    SingleProcess,
    leader_lock_key,
    running,
)
from gateway.cluster.notify import CommitNotifications

__all__ = [
    "CommitNotifications",
    "ElectionSettings",
    "Elector",
    "Leadership",
    "PostgresElection",
    "Role",
    "SingleProcess",
    "leader_lock_key",
    "running",
]
