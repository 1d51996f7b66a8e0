"""Compile the devnet's Solidity contracts offline with the pinned npm ``solc`` (solcjs 0.8.30).

solcjs has no ``--evm-version`` flag, so the compiler runs in ``--standard-json`` mode with fixed settings
(EVM "prague", optimizer on with 200 runs, IPFS metadata hash): the same source always gives the same
bytecode. solcjs prints a ``>>>`` line before its JSON and exits 0 even when compilation fails, so the
answer is parsed out of stdout and its ``errors`` are checked here (see ../shared/devnets.md).

``python -m sandbox.devnets.solc`` recompiles TestUSDT.sol and rewrites contracts/TestUSDT.json, the
artifact the devnet deploys (committed so that starting a devnet needs no compiler).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
TEST_USDT_SOURCE = CONTRACTS_DIR / "TestUSDT.sol"
TEST_USDT_ARTIFACT = CONTRACTS_DIR / "TestUSDT.json"
SOLC_VERSION = "0.8.30"

# Fixed compiler settings: part of the artifact, so a change shows up in the diff of TestUSDT.json.
SETTINGS: dict[str, Any] = {
    "evmVersion": "prague",
    "optimizer": {"enabled": True, "runs": 200},
    "viaIR": False,
    "metadata": {"bytecodeHash": "ipfs", "appendCBOR": True},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class SolcError(RuntimeError):
    """The compiler is missing, failed, or reported errors in the source."""


def solcjs_entry_point(root: Path = PROJECT_ROOT) -> Path:
    modules = Path(os.environ.get("CRYPTOCITY_NODE_MODULES", root / "node_modules"))
    entry = modules / "solc" / "solc.js"
    if not entry.exists():
        raise SolcError(f"solc is not installed at {entry}; run `bash scripts/setup.sh` (npm ci)")
    return entry


def _parse_output(stdout: str) -> dict[str, Any]:
    """The JSON object solcjs prints after its ``>>>`` chatter lines."""
    decoder = json.JSONDecoder()
    for line_start in (0, *(i + 1 for i, c in enumerate(stdout) if c == "\n")):
        if stdout.startswith("{", line_start):
            answer, _ = decoder.raw_decode(stdout, line_start)
            if isinstance(answer, dict):
                return answer
    raise SolcError(f"solcjs printed no JSON answer: {stdout[:500]!r}")


def compile_standard_json(request: dict[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``solcjs --standard-json`` on a standard-JSON request; its answer, with errors checked.

    Sources must be given by ``content`` (no import callback is set, so nothing is read from disk).
    Warnings are left in the answer's ``errors`` list; any entry of severity ``error`` raises SolcError.
    """
    node = shutil.which("node")
    if node is None:
        raise SolcError("Node.js is not installed (solcjs needs it)")
    result = subprocess.run(  # noqa: S603 - fixed arguments, the pinned compiler
        [node, str(solcjs_entry_point()), "--standard-json"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=PROJECT_ROOT,
    )
    if result.returncode != 0:
        raise SolcError(f"solcjs exited with code {result.returncode}: {result.stderr.strip()[:2000]}")
    answer = _parse_output(result.stdout)
    errors = [e for e in answer.get("errors", []) if e.get("severity") == "error"]
    if errors:
        messages = "\n".join(str(e.get("formattedMessage") or e.get("message")) for e in errors)
        raise SolcError(f"compilation failed:\n{messages}")
    return answer


def compile_contract(source: Path, contract: str) -> dict[str, Any]:
    """Compile one contract of ``source``; the artifact the devnet loads (see TestUSDT.json).

    Keys: ``contract``, ``source`` (file name), ``source_sha256``, ``solc_version``, ``settings`` (the
    standard-JSON settings used, without the output selection), ``abi``, ``bytecode`` (creation code) and
    ``deployedBytecode`` (runtime code), both 0x-hex.
    """
    text = source.read_text(encoding="utf-8")
    request = {"language": "Solidity", "sources": {source.name: {"content": text}}, "settings": SETTINGS}
    answer = compile_standard_json(request)
    try:
        output = answer["contracts"][source.name][contract]
    except KeyError:
        raise SolcError(f"solc produced no contract {contract!r} from {source.name}") from None
    version = _compiler_version()
    if not version.startswith(SOLC_VERSION + "+"):
        raise SolcError(f"node_modules holds solc {version}, the artifact is pinned to {SOLC_VERSION}")
    return {
        "contract": contract,
        "source": source.name,
        "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "solc_version": version,
        "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
        "abi": output["abi"],
        "bytecode": "0x" + output["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + output["evm"]["deployedBytecode"]["object"],
    }


def _compiler_version() -> str:
    node = shutil.which("node")
    if node is None:
        raise SolcError("Node.js is not installed (solcjs needs it)")
    result = subprocess.run(  # noqa: S603 - fixed arguments, the pinned compiler
        [node, str(solcjs_entry_point()), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PROJECT_ROOT,
    )
    if result.returncode != 0:
        raise SolcError(f"solcjs --version exited with code {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def compile_test_usdt() -> dict[str, Any]:
    """Recompile TestUSDT.sol; the same structure as the committed TestUSDT.json."""
    return compile_contract(TEST_USDT_SOURCE, "TestUSDT")


def load_test_usdt() -> dict[str, Any]:
    """The committed TestUSDT artifact (no compiler needed)."""
    artifact: dict[str, Any] = json.loads(TEST_USDT_ARTIFACT.read_text(encoding="utf-8"))
    return artifact


def artifact_text(artifact: dict[str, Any]) -> str:
    """How an artifact is written to disk (stable key order and indentation, final newline)."""
    return json.dumps(artifact, indent=2) + "\n"


def main() -> int:
    try:
        artifact = compile_test_usdt()
    except SolcError as exc:
        print(f"solc: {exc}", file=sys.stderr)
        return 1
    TEST_USDT_ARTIFACT.write_text(artifact_text(artifact), encoding="utf-8")
    print(
        f"wrote {TEST_USDT_ARTIFACT.relative_to(PROJECT_ROOT)} "
        f"(solc {artifact['solc_version']}, {len(artifact['bytecode']) // 2 - 1} bytes of creation code)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
