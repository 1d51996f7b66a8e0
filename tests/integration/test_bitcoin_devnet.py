"""The Bitcoin RPC client and block parser against a real bcoin regtest node (installed by set-up)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.addresses import BitcoinAccount, btc_script_for_address
from gateway.chains.bitcoin_blocks import block_facts, parse_block, parse_transaction, transaction_facts
from gateway.chains.bitcoin_rpc import RpcError
from sandbox.demo import demo_account_keys
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from tests.integration.gateway_process import cli_env

pytestmark = pytest.mark.integration


async def test_real_node_blocks_parse_and_match_watched_scripts(tmp_path: Path) -> None:
    account = BitcoinAccount(demo_account_keys()[0])
    watched = {account.script_pubkey(0): "inv_a", account.script_pubkey(1): "inv_b"}
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as devnet:
        rpc = devnet.rpc
        assert rpc is not None
        mined = await devnet.mine(2, account.address(0, REGTEST_HRP))
        mined += await devnet.mine(1, account.address(1, REGTEST_HRP))
        assert await rpc.block_count() == 3
        assert await rpc.best_block_hash() == mined[-1]
        # one round trip for three heights, in call order
        assert await rpc.batch([("getblockhash", [h]) for h in (1, 2, 3)]) == mined
        header = await rpc.block_header(mined[0])
        assert header["height"] == 1 and header["hash"] == mined[0]

        seen = []
        for block_hash in mined:
            block = parse_block(await rpc.raw_block(block_hash))
            for facts in block_facts(block, watched):
                seen += [(m.watch, m.amount_sat, m.vout) for m in facts.matches]
                # the coinbase's raw transaction, fetched alone, gives the same facts
                again = transaction_facts(parse_transaction(await rpc.raw_transaction(facts.txid)), watched)
                assert again == facts
        assert seen == [("inv_a", 50 * 10**8, 0), ("inv_a", 50 * 10**8, 0), ("inv_b", 50 * 10**8, 0)]

        assert await rpc.mempool_txids() == []
        assert await rpc.mempool_entry("ab" * 32) is None
        with pytest.raises(RpcError):
            await rpc.block_hash(10_000)
        pid = devnet.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by its PID


def test_devnet_command_mines_to_segwit_funds_and_mines_on_a_schedule(tmp_path: Path) -> None:
    funded_address = BitcoinAccount(demo_account_keys()[0]).address(7, REGTEST_HRP)
    process = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "sandbox.cli",
            "devnet",
            "bitcoin",
            "--mine-every",
            "0.3",
            "--fund",
            f"{funded_address}=0.5",
        ],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        banner = ""
        deadline = time.monotonic() + 60
        while "Stop with Ctrl-C" not in banner and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner += line
        match = re.search(
            r"pid (\d+)\) at (http://127\.0\.0\.1:\d+/)\n\s+RPC user: any, password \(api key\): (\w+)",
            banner,
        )
        assert match is not None, banner + (process.stderr.read() if process.poll() is not None else "")
        node_pid, url, api_key = int(match.group(1)), match.group(2), match.group(3)
        mined_line = process.stdout.readline()  # one scheduled block
        assert mined_line.startswith("mined ")
        request = urllib.request.Request(url, data=b'{"method":"getblockcount","params":[]}', method="POST")  # noqa: S310
        request.add_header("Authorization", "Basic " + base64.b64encode(f"x:{api_key}".encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            assert int(json.loads(response.read())["result"]) >= 434
        funded = re.search(rf"funded {funded_address} with 0\.5 BTC \((\w{{64}})\)", banner)
        assert funded is not None, banner
        body = json.dumps({"method": "getrawtransaction", "params": [funded.group(1), False]}).encode()
        request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310
        request.add_header("Authorization", "Basic " + base64.b64encode(f"x:{api_key}".encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            tx = parse_transaction(bytes.fromhex(json.loads(response.read())["result"]))
        script = btc_script_for_address(funded_address, REGTEST_HRP)
        assert [int(o.nValue) for o in tx.vout if bytes(o.scriptPubKey) == script] == [50_000_000]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()  # type: ignore[union-attr]
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(node_pid, 0)  # the node went down with the command
