"""The config.startup entry: the whole configuration and the version, without credentials or floats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.config import Config, load_config
from gateway.store import SqliteStore
from sandbox.audit.keys import AuditKey
from sandbox.audit.startup import REDACTED, STARTUP_KIND, record_startup, redacted_config, software_version
from sandbox.audit.verify import verify

KEY = AuditKey(bytes(range(32)), "test")
SECRETS = {
    "CRYPTOCITY_BITCOIN__RPC__URL": "http://rpcuser:rpc-pass-1@127.0.0.1:18443/wallet/w1?auth=rpc-query-2",
    "CRYPTOCITY_BITCOIN__RPC__USER": "rpcuser",
    "CRYPTOCITY_BITCOIN__RPC__PASSWORD": "rpc-pass-3",
    "CRYPTOCITY_ETHEREUM__RPC__URL": "https://eth.example.net/v3/infura-key-4",
    "CRYPTOCITY_ETHEREUM__RPC__WS_URL": "wss://eth.example.net/ws/v3/infura-key-5",
    "CRYPTOCITY_SERVER__PUBLIC_URL": "https://pay.example.kz/gw?session=pub-query-6",
}


def config_with(**environ: str) -> Config:
    return load_config(None, environ=environ)


def test_credentials_are_removed_and_the_rest_is_kept() -> None:
    view = redacted_config(config_with(**SECRETS))
    text = json.dumps(view)
    for secret in ("rpc-pass-1", "rpc-query-2", "rpc-pass-3", "infura-key-4", "infura-key-5", "pub-query-6"):
        assert secret not in text, secret
    rpc = view["bitcoin"]["rpc"]
    assert rpc["url"] == "http://127.0.0.1:18443/<redacted>"
    assert rpc["password"] == REDACTED
    assert rpc["user"] == "rpcuser"  # not a secret on its own, and says which account the node sees
    assert view["ethereum"]["rpc"] == {
        "url": "https://eth.example.net/<redacted>",
        "ws_url": "wss://eth.example.net/<redacted>",
        "timeout_seconds": "10.0",
    }
    assert view["server"]["public_url"] == "https://pay.example.kz/gw"  # a public page: its path stays
    assert view["ethereum"]["token_address"] == Config().ethereum.token_address  # "token" but no secret
    assert view["merchants"]["api_key_environment"] == "test"
    assert view["confirmations"]["rules"][0] == {"asset": "BTC", "up_to_kzt": "50000.00", "confirmations": 0}
    assert view["invoices"]["payment_tolerance"] == "0"
    assert view["rates"]["fixed"]["kzt_per_unit"]["BTC"] == "48450000.00"


def test_an_unset_password_stays_visibly_unset() -> None:
    assert redacted_config(Config())["bitcoin"]["rpc"]["password"] == ""


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://cc:db-pass@db.internal:5432/cryptocity?sslmode=require",
            "postgresql://db.internal:5432/<redacted>",
        ),
        ("host=db.internal user=cc password=db-pass dbname=cryptocity", REDACTED),
        ("", ""),
    ],
)
def test_a_store_dsn_never_shows_its_password(dsn: str, expected: str) -> None:
    assert redacted_config(config_with(CRYPTOCITY_STORE__DSN=dsn))["store"]["dsn"] == expected


def test_floats_become_their_decimal_text() -> None:
    view = redacted_config(config_with(CRYPTOCITY_WEBHOOKS__JITTER="0.15"))
    assert view["webhooks"]["jitter"] == "0.15"
    assert view["webhooks"]["retry_schedule_seconds"][:2] == ["5.0", "30.0"]
    assert view["server"]["switch_interval_ms"] == "1.0"


async def test_record_startup_appends_a_verifiable_entry(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "audit.sqlite3")
    clock = ManualClock()
    try:
        first = await record_startup(store, clock, config_with(**SECRETS), KEY)
        clock.advance(60)
        second = await record_startup(store, clock, Config(), None, software="9.9.9")
        assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
        assert first.kind == STARTUP_KIND and first.subject is None and first.event_id is None
        body = json.loads(first.body)
        assert body["version"] == software_version() and body["software"] == "cryptocity"
        assert body["audit_key_id"] == KEY.key_id
        assert body["config"] == redacted_config(config_with(**SECRETS))
        assert json.loads(second.body)["audit_key_id"] is None  # a restart without the key is on record
        assert json.loads(second.body)["version"] == "9.9.9"
        for secret in ("rpc-pass", "infura-key", bytes(range(32)).hex()):
            assert secret not in first.body
        result = await verify(store, None)
        assert result.ok and result.last_seq == 2
    finally:
        await store.close()
