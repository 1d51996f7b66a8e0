"""Start and stop a real `cryptocity` process for integration tests (free loopback port, stopped by PID)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.demo import demo_account_keys


def cli_env(workdir: Path, **extra: str) -> dict[str, str]:
    """An environment with only what a fresh machine would have, plus the test's store."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "CRYPTOCITY_STORE__PATH": str(workdir / "gateway.sqlite3"),
        "CRYPTOCITY_LOGGING__LEVEL": "warning",
        # The chain, API and crash tests pay from wallets no sandbox registry knows; the sandbox's own
        # tests (and the demo) turn it on.
        "CRYPTOCITY_SANDBOX__ENABLED": "false",
    }
    env.update(extra)
    return env


def run_cli(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args],
        env=env or cli_env(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def create_merchant(workdir: Path, *extra: str, name: str = "Test Shop") -> dict[str, Any]:
    btc, eth = demo_account_keys()
    result = run_cli(
        workdir, "merchants", "create", "--name", name, "--btc-xpub", btc, "--eth-xpub", eth, *extra
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    base_url: str
    banner: str

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM by PID and wait; SIGKILL only if it hangs (which fails the caller's exit-code check)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.process.returncode

    def request(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - loopback only
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def start_gateway(
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    deadline: float = 60.0,
    wrapper: Sequence[str] = (),
) -> GatewayProcess:
    """`cryptocity serve` on a free port (port 0); reads the bound address from its first line.

    ``wrapper`` is put before the command (e.g. ``unshare … sh -c '…; exec "$@"' sh``); it must exec the
    command in the end, so the PID stays the gateway's."""
    environment = env or cli_env(workdir)
    environment.setdefault("CRYPTOCITY_SERVER__PORT", "0")
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-u", "-m", "sandbox.cli", "serve", *args],
        env=environment,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if match:
            banner = "".join(lines)
            if "--demo" in args:  # the demo banner follows; read until its last line
                while "Stop with Ctrl-C" not in banner and time.monotonic() < until:
                    banner += process.stdout.readline()
            return GatewayProcess(process, match.group(1), banner)
    process.kill()
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"gateway did not start: {''.join(lines)}{err}")
