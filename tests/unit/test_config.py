"""Configuration: the shipped file equals the built-in defaults, overrides work, errors are one clear line."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, load_config
from gateway.money import Asset

ROOT = Path(__file__).resolve().parents[2]


def test_config_toml_holds_exactly_the_built_in_defaults() -> None:
    assert load_config(ROOT / "config.toml", environ={}) == Config()


def test_every_setting_in_config_toml_has_a_comment() -> None:
    lines = (ROOT / "config.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            previous = lines[number - 1].strip()
            assert previous.startswith(("#", "[", "asset", "up_to_kzt")) or "=" in previous, (
                f"config.toml line {number + 1} has no comment above it: {line}"
            )


def test_environment_overrides_nested_keys_with_toml_literals() -> None:
    config = load_config(
        None,
        environ={
            "CRYPTOCITY_SERVER__PORT": "9001",
            "CRYPTOCITY_RATES__FIXED__ENABLED": "false",
            "CRYPTOCITY_ASSETS__ENABLED": '["BTC"]',
            "CRYPTOCITY_INVOICES__PAYMENT_TOLERANCE": "0.005",
            "CRYPTOCITY_STORE__PATH": "/tmp/x.sqlite3",
            "CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "UNRELATED": "1",
        },
    )
    assert config.ethereum.token_address == "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # not a hex int
    assert config.server.port == 9001
    assert config.rates.fixed.enabled is False
    assert config.assets.enabled == [Asset.BTC]
    assert config.invoices.payment_tolerance == Decimal("0.005")
    assert config.store.path == "/tmp/x.sqlite3"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CRYPTOCITY_SERVER__PORT": "abc"}, "server.port"),
        ({"CRYPTOCITY_SERVER__PORT": "70000"}, "server.port"),
        ({"CRYPTOCITY_INVOICES__MIN_AMOUNT_KZT": "1.001"}, "more than 2 decimal places"),
        ({"CRYPTOCITY_SERVER__PROT": "1"}, "server.prot"),
        ({"CRYPTOCITY_ETHEREUM__CHAIN_ID": "1"}, "mainnet"),
        ({"CRYPTOCITY_BITCOIN__NETWORK": "mainnet"}, "allow_mainnet"),
        ({"CRYPTOCITY_BITCOIN__HRP": "BC!"}, "bitcoin.hrp"),
        ({"CRYPTOCITY_INVOICES__PAYMENT_TOLERANCE": "0.9"}, "between 0 and 0.5"),
        ({"CRYPTOCITY_ASSETS__ENABLED": '["DOGE"]'}, "assets.enabled"),
    ],
)
def test_a_wrong_value_is_one_line_naming_key_and_source(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message
    assert next(iter(environ)) in message  # names the variable it came from


def test_mainnet_is_allowed_only_when_asked_for() -> None:
    config = load_config(
        None, environ={"CRYPTOCITY_ETHEREUM__CHAIN_ID": "1", "CRYPTOCITY_ETHEREUM__ALLOW_MAINNET": "true"}
    )
    assert config.ethereum.chain_id == 1


def test_bad_toml_file_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_confirmation_policy_by_asset_and_amount() -> None:
    rules = Config().confirmations
    assert rules.required(Asset.BTC, 5_000_000) == 0  # 50,000.00 KZT: mempool is enough
    assert rules.required(Asset.BTC, 5_000_001) == 1
    assert rules.required(Asset.BTC, 60_000_000) == 3
    assert rules.required(Asset.ETH, 100) == 1


def test_cli_stops_with_one_clear_line_on_a_wrong_value(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.cli", "migrate"],
        env={"CRYPTOCITY_STORE__MAX_BATCH": "zero", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "store.max_batch" in result.stderr and "CRYPTOCITY_STORE__MAX_BATCH" in result.stderr


def test_configuration_reference_shows_the_shipped_file() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    block = doc.split("<!-- config:start -->\n```toml\n", 1)[1].split("```\n<!-- config:end -->", 1)[0]
    assert block == (ROOT / "config.toml").read_text(), "docs/configuration.md is stale: paste config.toml in"
