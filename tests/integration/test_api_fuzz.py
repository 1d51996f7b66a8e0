"""Schemathesis generates requests from /openapi.json against a running gateway and runs all its checks:
no answer may be a 5xx, and every answer must conform to the documented schema and status codes.

The size is bounded for CI; CRYPTOCITY_SCHEMATHESIS_EXAMPLES raises it for a full run
(docs/performance.md lists the command).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.gateway_process import cli_env, create_merchant, run_cli, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("caller", ["merchant", "regulator"])
def test_no_server_errors_anywhere_in_the_api(tmp_path: Path, caller: str) -> None:
    """Once with a merchant's API key (the regulator API then answers 403), once with a regulator token
    (the merchant API then answers 403 and the regulator API's own paths and parameters are exercised)."""
    merchant = create_merchant(tmp_path)
    # With the sandbox on, so the regulator API is in the document too (with a merchant key it must answer 403).
    # The failed-authentication limit off in effect: schemathesis's auth checks send wrong credentials on
    # purpose (and the regulator run's token fails on the merchant API), and 429s would hide the rest of
    # the API; the limit has its own tests (tests/unit/test_auth_limiter.py).
    sandbox_env = cli_env(
        tmp_path,
        CRYPTOCITY_SANDBOX__ENABLED="true",
        CRYPTOCITY_SERVER__AUTH_FAILURES_PER_MINUTE="100000",
        CRYPTOCITY_SERVER__AUTH_FAILURE_BURST="100000",
    )
    gateway = start_gateway(tmp_path, env=sandbox_env)
    examples = os.environ.get("CRYPTOCITY_SCHEMATHESIS_EXAMPLES", "25")
    try:
        # one real invoice, so that generated ids sometimes hit and the 200 paths are exercised too
        gateway.request("POST", "/v1/invoices", {"amount": "100.00", "currency": "KZT"}, merchant["api_key"])
        key = merchant["api_key"]
        if caller == "regulator":
            created = run_cli(tmp_path, "sandbox", "token", "create", "--label", "fuzz", env=sandbox_env)
            assert created.returncode == 0, created.stderr
            key = json.loads(created.stdout.splitlines()[0])["token"]
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{gateway.base_url}/openapi.json",
                "--checks",
                "all",
                # Accepting every schema-valid body is not promised: some limits are semantic or configured
                # (price bounds in tenge, metadata size in bytes) and answer 422, which the API documents.
                "--exclude-checks",
                "positive_data_acceptance",
                "-H",
                f"Authorization: Bearer {key}",
                "--max-examples",
                examples,
                "--seed",
                "20261123",
                "--request-timeout",
                "10",
                "--suppress-health-check",
                "all",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            check=False,
        )
    finally:
        assert gateway.stop() == 0
    failures = result.stdout.split("FAILURES", 1)[-1][:5000]
    assert result.returncode == 0, failures + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated.group(1)) > 100, result.stdout[-3000:]  # it really ran
    print(
        f"\nschemathesis as {caller}: {generated.group(0)}; "
        + " ".join(re.findall(r"[✅❌] [A-Z][a-z]+", result.stdout))
    )
