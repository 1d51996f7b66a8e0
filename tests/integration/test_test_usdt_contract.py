"""The committed TestUSDT artifact is exactly what the pinned npm solc makes of the committed source."""

from __future__ import annotations

import hashlib

import pytest

from sandbox.devnets.solc import (
    SETTINGS,
    SOLC_VERSION,
    TEST_USDT_ARTIFACT,
    TEST_USDT_SOURCE,
    SolcError,
    artifact_text,
    compile_standard_json,
    compile_test_usdt,
    load_test_usdt,
)

pytestmark = pytest.mark.integration


def test_recompiling_gives_the_committed_abi_and_bytecode() -> None:
    committed = load_test_usdt()
    fresh = compile_test_usdt()
    assert fresh["abi"] == committed["abi"]
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh == committed  # version, settings and source hash too
    # the file is byte-for-byte what `python -m sandbox.devnets.solc` writes
    assert TEST_USDT_ARTIFACT.read_text(encoding="utf-8") == artifact_text(fresh)


def test_artifact_records_how_it_was_built() -> None:
    artifact = load_test_usdt()
    assert artifact["solc_version"].startswith(SOLC_VERSION + "+commit.")
    assert artifact["settings"]["evmVersion"] == "prague"
    assert artifact["settings"]["optimizer"] == {"enabled": True, "runs": 200}
    assert artifact["source_sha256"] == hashlib.sha256(TEST_USDT_SOURCE.read_bytes()).hexdigest()
    for key in ("bytecode", "deployedBytecode"):
        assert artifact[key].startswith("0x")
        bytes.fromhex(artifact[key][2:])
    functions = {e["name"]: e for e in artifact["abi"] if e["type"] == "function"}
    assert {
        "name",
        "symbol",
        "decimals",
        "totalSupply",
        "balanceOf",
        "allowance",
        "approve",
        "transfer",
        "transferFrom",
        "mint",
        "owner",
    } == set(functions)
    assert [i["type"] for i in functions["mint"]["inputs"]] == ["address", "uint256"]
    assert [o["type"] for o in functions["transfer"]["outputs"]] == ["bool"]
    events = {
        e["name"]: [(i["type"], i["indexed"]) for i in e["inputs"]]
        for e in artifact["abi"]
        if e["type"] == "event"
    }
    assert events == {
        "Transfer": [("address", True), ("address", True), ("uint256", False)],
        "Approval": [("address", True), ("address", True), ("uint256", False)],
    }


def test_compiler_errors_are_raised_although_solcjs_exits_0() -> None:
    request = {
        "language": "Solidity",
        "sources": {"Bad.sol": {"content": "contract {"}},
        "settings": SETTINGS,
    }
    with pytest.raises(SolcError, match="ParserError"):
        compile_standard_json(request)
