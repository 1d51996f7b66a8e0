"""The anvil devnet (installed by set-up from npm): life cycle, TestUSDT, reorgs, snapshots, bursts, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.exceptions import BlockNotFound, ContractLogicError
from web3.types import TxParams, Wei

from sandbox.cli import _parse_eth_amounts
from sandbox.devnets.ethereum import CHAIN_ID, TOKEN_ADDRESS, EthereumDevnet
from sandbox.devnets.process import DevnetError
from sandbox.devnets.solc import load_test_usdt
from tests.integration.gateway_process import cli_env

pytestmark = pytest.mark.integration

ZERO = "0x0000000000000000000000000000000000000000"


def _tx_hash(raw: str) -> str:
    return "0x" + keccak(HexBytes(raw)).hex()


def _transfers(devnet: EthereumDevnet, receipt: Any) -> list[tuple[str, str, int]]:
    events = devnet.token.events.Transfer().process_receipt(receipt)
    return [(e["args"]["from"], e["args"]["to"], e["args"]["value"]) for e in events]


async def test_starts_deploys_the_token_first_and_stops_by_pid(tmp_path: Path) -> None:
    log = tmp_path / "anvil.log"
    async with EthereumDevnet(log_path=log) as devnet:
        pid = devnet.pid
        assert pid is not None
        os.kill(pid, 0)  # running
        assert devnet.url.startswith("http://127.0.0.1:")
        assert await devnet.w3.eth.chain_id == CHAIN_ID == devnet.chain_id
        # the dev accounts we derive are the ones anvil funds
        assert [a.address for a in devnet.accounts] == list(await devnet.w3.eth.accounts)
        assert devnet.owner.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        assert await devnet.eth_balance(devnet.accounts[9].address) == 10_000 * 10**18

        # TestUSDT is the chain's first transaction: block 1, from account 0 at nonce 0
        assert devnet.token_address == TOKEN_ADDRESS
        assert await devnet.block_number() == 1
        block = await devnet.w3.eth.get_block(1, full_transactions=True)
        (deploy,) = block["transactions"]
        assert not isinstance(deploy, bytes)  # a full transaction, not a hash
        assert (deploy["from"], deploy["nonce"], deploy.get("to")) == (devnet.owner.address, 0, None)
        code = await devnet.w3.eth.get_code(devnet.token_address)
        assert code.to_0x_hex() == load_test_usdt()["deployedBytecode"]
        token = devnet.token.functions
        assert await token.name().call() == "Test Tether USD"
        assert await token.symbol().call() == "tUSDT"
        assert await token.decimals().call() == 6
        assert await token.totalSupply().call() == 0
        assert await token.owner().call() == devnet.owner.address
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by its PID
    assert devnet.returncode is not None
    assert "Listening on 127.0.0.1" in log.read_text()


async def test_mint_and_transfers_move_balances_and_emit_transfer_logs() -> None:
    async with EthereumDevnet() as devnet:
        alice, bob, carol = devnet.accounts[1], devnet.accounts[2], devnet.accounts[3]
        mint_hash = await devnet.mint(alice.address, 5_000_000)
        receipt = await devnet.wait_for_receipt(mint_hash)
        assert _transfers(devnet, receipt) == [(ZERO, alice.address, 5_000_000)]

        raw = await devnet.sign_token_transfer(alice, bob.address, 1_250_000)
        receipt = await devnet.wait_for_receipt(await devnet.send_raw(raw))
        assert _transfers(devnet, receipt) == [(alice.address, bob.address, 1_250_000)]
        assert receipt["gasUsed"] < 80_000

        # approve + transferFrom by a spender, with Approval logs and the allowance spent
        approve = devnet.token.encode_abi("approve", args=[carol.address, 1_000_000])
        tx: TxParams = {"to": devnet.token_address, "data": approve, "gas": 80_000, "value": Wei(0)}
        receipt = await devnet.wait_for_receipt(await devnet.send_raw(await devnet.sign_tx(alice, tx)))
        (approval,) = devnet.token.events.Approval().process_receipt(receipt)
        assert approval["args"]["owner"] == alice.address and approval["args"]["value"] == 1_000_000
        pull = devnet.token.encode_abi("transferFrom", args=[alice.address, carol.address, 400_000])
        tx = {"to": devnet.token_address, "data": pull, "gas": 80_000, "value": Wei(0)}
        receipt = await devnet.wait_for_receipt(await devnet.send_raw(await devnet.sign_tx(carol, tx)))
        assert _transfers(devnet, receipt) == [(alice.address, carol.address, 400_000)]
        assert await devnet.token.functions.allowance(alice.address, carol.address).call() == 600_000

        assert await devnet.token_balance(alice.address) == 3_350_000
        assert await devnet.token_balance(bob.address) == 1_250_000
        assert await devnet.token_balance(carol.address) == 400_000
        assert await devnet.token.functions.totalSupply().call() == 5_000_000

        # the same history from the node's log index
        logs = await devnet.token.events.Transfer().get_logs(from_block=0, to_block="latest")
        assert [(e["args"]["from"], e["args"]["to"], e["args"]["value"]) for e in logs] == [
            (ZERO, alice.address, 5_000_000),
            (alice.address, bob.address, 1_250_000),
            (alice.address, carol.address, 400_000),
        ]

        # only the owner mints; overdrafts and over-allowance pulls revert with their reasons
        functions = devnet.token.functions
        with pytest.raises(ContractLogicError, match="caller is not the owner"):
            await functions.mint(bob.address, 1).call({"from": bob.address})
        with pytest.raises(ContractLogicError, match="exceeds balance"):
            await functions.transfer(carol.address, 1_250_001).call({"from": bob.address})
        with pytest.raises(ContractLogicError, match="insufficient allowance"):
            await functions.transferFrom(alice.address, carol.address, 600_001).call({"from": carol.address})
        with pytest.raises(ContractLogicError, match="zero address"):
            await functions.transfer(ZERO, 1).call({"from": bob.address})

        # ETH: a real transfer from the owner, or a balance bump without a transaction
        target = "0x1111111111111111111111111111111111111111"
        eth_hash = await devnet.fund_eth(target, 10**18, transfer=True)
        assert eth_hash is not None and (await devnet.wait_for_receipt(eth_hash))["to"] == target
        assert await devnet.fund_eth(target, 5 * 10**17) is None
        assert await devnet.eth_balance(target) == 15 * 10**17
        with pytest.raises(DevnetError, match="not an Ethereum address"):
            await devnet.mint("0x1234", 1)


@pytest.mark.parametrize("depth", [1, 3])
async def test_reorg_replaces_blocks_and_moves_a_transaction(depth: int) -> None:
    async with EthereumDevnet() as devnet:
        sender, payee = devnet.accounts[4], devnet.accounts[5]
        await devnet.mine(2)
        fork_height = await devnet.block_number()  # the last block that stays
        # the moved transaction is mined in the first block above the fork point...
        raw = await devnet.sign_eth_transfer(sender, payee.address, 12345)
        first = await devnet.wait_for_receipt(await devnet.send_raw(raw))
        assert first["blockNumber"] == fork_height + 1
        if depth > 1:
            await devnet.mine(depth - 1)
        tip = await devnet.block_number()
        assert tip == fork_height + depth
        before = [await devnet.block_hash(h) for h in range(fork_height, tip + 1)]

        # ...and into the last block of the new branch
        new = await devnet.reorg(depth, [(raw, depth - 1)])

        assert await devnet.block_number() == tip  # same height, new blocks
        after = [await devnet.block_hash(h) for h in range(fork_height, tip + 1)]
        assert after[0] == before[0]
        assert after[1:] == new
        assert all(old != fresh for old, fresh in zip(before[1:], new, strict=True))
        parent = await devnet.w3.eth.get_block(fork_height + 1)
        assert HexBytes(parent["parentHash"]).to_0x_hex() == before[0]
        for old in before[1:]:
            with pytest.raises(BlockNotFound):
                await devnet.w3.eth.get_block(old)  # orphaned blocks are gone
        moved = await devnet.w3.eth.get_transaction_receipt(HexBytes(_tx_hash(raw)))
        assert moved["blockNumber"] == tip
        assert HexBytes(moved["blockHash"]).to_0x_hex() == new[-1] != HexBytes(first["blockHash"]).to_0x_hex()
        assert await devnet.pending_count() == 0


async def test_snapshot_revert_and_block_timestamps() -> None:
    async with EthereumDevnet() as devnet:
        holder = devnet.accounts[6].address
        await devnet.mint(holder, 100)
        height = await devnet.block_number()
        snapshot = await devnet.snapshot()
        await devnet.mint(holder, 900)
        await devnet.mine(3)
        assert await devnet.token_balance(holder) == 1000
        await devnet.revert(snapshot)
        assert await devnet.block_number() == height
        assert await devnet.token_balance(holder) == 100
        with pytest.raises(DevnetError):
            await devnet.revert(snapshot)  # a snapshot is used up by reverting to it

        future = int((await devnet.w3.eth.get_block("latest"))["timestamp"]) + 3600
        await devnet.set_next_block_timestamp(future)
        await devnet.mine()
        assert (await devnet.w3.eth.get_block("latest"))["timestamp"] == future

        # automine can be switched off: then transactions wait in the pool until something mines
        await devnet.set_automine(False)
        raw = await devnet.sign_eth_transfer(devnet.accounts[7], holder, 1)
        await devnet.send_raw(raw)
        assert await devnet.pending_count() == 1
        with pytest.raises(DevnetError, match="automine is off"):
            await devnet.mint(holder, 1)
        assert await devnet.mine() == height + 2
        assert await devnet.pending_count() == 0


async def test_burst_without_automine_is_mined_until_the_pool_is_empty() -> None:
    # A smaller block gas limit than anvil's 30M, so the 300 transfers need several blocks.
    async with EthereumDevnet(automine=False, gas_limit=5_000_000) as devnet:
        sender = devnet.accounts[1]
        payees = [a.address for a in devnet.accounts[2:]]
        await devnet.mint(sender.address, 10**12, wait=False)
        await devnet.mine()
        start = await devnet.block_number()
        raws = [
            await devnet.sign_token_transfer(
                sender, payees[i % len(payees)], 1000 + i, nonce=i, max_fee_per_gas=10 * 10**9
            )
            for i in range(300)
        ]
        hashes = await devnet.send_raw_batch(raws)
        assert hashes == [_tx_hash(raw) for raw in raws]
        assert await devnet.pending_count() == 300
        await asyncio.sleep(0.3)
        assert await devnet.block_number() == start  # nothing mines by itself

        mined = await devnet.mine_until_pool_empty()

        assert mined >= 2
        assert await devnet.block_number() == start + mined
        assert await devnet.pending_count() == 0
        receipts = [await devnet.w3.eth.get_transaction_receipt(HexBytes(h)) for h in hashes]
        assert {r["status"] for r in receipts} == {1}
        assert len({r["blockNumber"] for r in receipts}) == mined
        assert sum([await devnet.token_balance(p) for p in payees]) == sum(1000 + i for i in range(300))


async def test_interval_mining_with_block_time() -> None:
    async with EthereumDevnet(block_time=0.5) as devnet:
        assert not devnet.automine
        height = await devnet.block_number()
        tx_hash = await devnet.mint(devnet.accounts[1].address, 7)  # waits for the next interval block
        assert (await devnet.wait_for_receipt(tx_hash))["blockNumber"] > height
        await asyncio.sleep(1.2)
        assert await devnet.block_number() >= height + 2
        assert await devnet.token_balance(devnet.accounts[1].address) == 7


def _rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        answer = json.loads(response.read())
    assert "error" not in answer, answer
    return answer["result"]


def test_devnet_command_funds_mints_prints_the_gateway_settings_and_stops_anvil(tmp_path: Path) -> None:
    funded = "0x1111111111111111111111111111111111111111"
    holder = "0x2222222222222222222222222222222222222222"
    process = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "sandbox.cli",
            "devnet",
            "ethereum",
            "--fund",
            f"{funded}=1.5",
            "--mint",
            f"{holder}=250.75",
        ],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        banner = ""
        deadline = time.monotonic() + 60
        while "Stop with Ctrl-C." not in banner and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner += line
        match = re.search(r"anvil, pid (\d+)\) at (http://127\.0\.0\.1:\d+)\n", banner)
        assert match is not None, banner + (process.stderr.read() if process.poll() is not None else "")
        anvil_pid, url = int(match.group(1)), match.group(2)
        assert banner.rstrip("\n").endswith("Stop with Ctrl-C.")
        assert f"CRYPTOCITY_ETHEREUM__RPC__URL={url} " in banner
        assert f"CRYPTOCITY_ETHEREUM__CHAIN_ID={CHAIN_ID} " in banner
        assert f"CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS={TOKEN_ADDRESS}\n" in banner
        assert f"funded {funded} with 1.5 ETH (0x" in banner
        assert f"minted 250.75 tUSDT to {holder} (0x" in banner

        assert int(_rpc(url, "eth_chainId"), 16) == CHAIN_ID
        assert int(_rpc(url, "eth_getBalance", funded, "latest"), 16) == 15 * 10**17
        balance_of = "0x70a08231" + holder[2:].lower().rjust(64, "0")
        answer = _rpc(url, "eth_call", {"to": TOKEN_ADDRESS, "data": balance_of}, "latest")
        assert int(answer, 16) == 250_750_000
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(anvil_pid, 0)  # anvil went down with the command


def test_devnet_command_rejects_a_bad_amount_before_starting(tmp_path: Path) -> None:
    value = "0x1111111111111111111111111111111111111111=0.0000000000000000001"
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.cli", "devnet", "ethereum", "--fund", value],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"devnet: --fund {value!r}: {value[43:]!r} has more than 18 decimal places"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("option", "unit", "decimals", "value", "message"),
    [
        ("--fund", "ETH", 18, "0x1111111111111111111111111111111111111111", "expected ADDRESS=ETH"),
        ("--fund", "ETH", 18, "0x12=1", "is not an Ethereum address"),
        ("--fund", "ETH", 18, "1111111111111111111111111111111111111111=1", "is not an Ethereum address"),
        ("--fund", "ETH", 18, "0x1111111111111111111111111111111111111111=1e3", "not a plain decimal number"),
        ("--fund", "ETH", 18, "0x1111111111111111111111111111111111111111=-1", "not a plain decimal number"),
        ("--mint", "USDT", 6, "0x2222222222222222222222222222222222222222=1.0000001", "more than 6 decimal"),
        # a mixed-case address with a wrong EIP-55 checksum
        ("--mint", "USDT", 6, "0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266=1", "is not an Ethereum address"),
    ],
)
def test_devnet_amount_parsing_names_the_bad_pair(
    option: str, unit: str, decimals: int, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse_eth_amounts(option, [value], unit, decimals)
    assert str(exc.value).startswith(f"devnet: {option} {value!r}: ") and message in str(exc.value)


def test_devnet_amount_parsing_gives_checksummed_addresses_and_minor_units() -> None:
    parsed = _parse_eth_amounts("--mint", ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266=250.75"], "USDT", 6)
    assert parsed == [("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 250_750_000)]
    assert _parse_eth_amounts("--fund", [f"{ZERO}=1.5"], "ETH", 18) == [(ZERO, 15 * 10**17)]
