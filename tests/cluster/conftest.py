"""Several gateways on one PostgreSQL schema. Every test here needs CRYPTOCITY_TEST_PG_DSN (and skips
without it, as the other PostgreSQL tests do); with it set, they all run."""

from __future__ import annotations

import pytest

from tests.conftest import pg_dsn


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    pg_dsn()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Test gateways (``make_gateway``) here run on PostgreSQL: what they test is the shared store."""
    if "gateway_store" in metafunc.fixturenames:
        metafunc.parametrize("gateway_store", ["postgresql"], indirect=True, ids=["postgresql"])
