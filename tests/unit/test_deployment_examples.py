"""The deployment examples (docs/examples/) parse, and every command, option, setting and route they name
exists, so the files people copy cannot drift from the code."""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load is used

from gateway.api.health import routes as health_routes
from gateway.config import CONFIG_ENV, ConfigError, load_config
from sandbox.audit.keys import KEY_ENV, KEY_FILE_ENV
from sandbox.cli import _parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = DOCS / "examples"
NOT_SETTINGS = {CONFIG_ENV, KEY_ENV, KEY_FILE_ENV}  # read by the program itself, not config keys
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*)|:?\?[^}]*)?\}")


def substitute(text: str) -> str:
    """Compose-style ``${VAR:-default}`` (and ``${VAR}``, ``${VAR:?message}``) with a sample value."""
    return _VARIABLE.sub(lambda m: m.group(2) if m.group(2) is not None else "sample", text)


def assert_command_parses(argv: list[str]) -> None:
    """``cryptocity`` accepts these arguments (argparse exits with status 2 on an unknown one)."""
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"`cryptocity {' '.join(argv)}` is not a valid command line (exit {exc.code})")


def assert_settings_exist(environ: dict[str, str]) -> None:
    settings = {k: v for k, v in environ.items() if k.startswith("CRYPTOCITY_") and k not in NOT_SETTINGS}
    assert all("__" in k for k in settings), settings  # the others are not read at all
    try:
        load_config(None, environ=settings)
    except ConfigError as exc:
        pytest.fail(f"the example's settings do not load: {exc}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(substitute((EXAMPLES / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(loaded, dict)
    return loaded


def test_the_compose_file_runs_postgres_15_the_migrations_and_the_gateway() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("migrate", "gateway"):
        service = services[name]
        assert_command_parses([str(arg) for arg in service["command"]])
        environ = {k: str(v) for k, v in service["environment"].items()}
        assert_settings_exist(environ)
        assert environ["CRYPTOCITY_STORE__DSN"].startswith("postgresql://")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    gateway = services["gateway"]
    assert gateway["command"][0] == "serve" and "--processes" in gateway["command"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    probe = " ".join(gateway["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8080(/\w+)", probe)
    assert path is not None and path.group(1) in {getattr(r, "path", None) for r in health_routes}
    assert gateway["environment"]["CRYPTOCITY_SERVER__PORT"] == "8080" and "8080:8080" in gateway["ports"]


class _CaseSensitive(configparser.ConfigParser):
    """systemd keys are case-sensitive (configparser lower-cases them by default)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def unit_lines() -> dict[str, list[tuple[str, str]]]:
    """The unit's sections as (key, value) lists: systemd keys such as Environment= may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in (EXAMPLES / "cryptocity.service").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None and "=" in line, line
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def test_the_systemd_unit_is_hardened_and_runs_real_commands() -> None:
    parser = _CaseSensitive(strict=False, interpolation=None)
    parser.read(EXAMPLES / "cryptocity.service", encoding="utf-8")
    assert parser.sections() == ["Unit", "Service", "Install"]
    service = unit_lines()["Service"]
    values: dict[str, list[str]] = {}
    for key, value in service:
        values.setdefault(key, []).append(value)
    for key, wanted in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("Restart", "on-failure"),
    ):
        assert values.get(key) == [wanted], key
    assert "User" in values or values.get("DynamicUser") == ["yes"]
    assert values["EnvironmentFile"] and values["ReadWritePaths"]
    for key in ("ExecStartPre", "ExecStart"):
        program, *argv = shlex.split(values[key][0])
        assert program.endswith("/cryptocity")
        assert_command_parses(argv)
    assert shlex.split(values["ExecStart"][0])[1] == "serve"
    environ = dict(value.split("=", 1) for value in values["Environment"])
    assert_settings_exist(environ)
    store_path = Path(environ["CRYPTOCITY_STORE__PATH"])
    assert any(store_path.is_relative_to(p) for p in values["ReadWritePaths"][0].split())
    assert parser.get("Install", "WantedBy") == "multi-user.target"


def test_the_image_runs_the_cryptocity_command() -> None:
    text = (EXAMPLES / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["cryptocity"\]$', text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    assert_command_parses(yaml.safe_load(cmd.group(1)))
    environ = dict(re.findall(r"(CRYPTOCITY_\w+)=(\S+)", text))
    assert environ
    assert_settings_exist(environ)


def test_the_deployment_guide_names_real_commands_and_keeps_the_multi_process_section() -> None:
    text = (DOCS / "deployment.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    for heading in (
        "Single process with SQLite",
        "PostgreSQL",
        "Several processes with PostgreSQL",
        "What runs where",
    ):
        assert heading in headings, heading
    commands = set(next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)
    named = set(re.findall(r"`cryptocity ([a-z][a-z-]*)", text))
    assert named and named <= commands, named - commands
    assert_command_parses(["store", "migrate-sqlite-to-pg", "--from", "x", "--to", "postgresql://h/d"])
    for name in ("cryptocity.service", "compose.yaml", "Dockerfile"):
        assert f"examples/{name}" in text, name
