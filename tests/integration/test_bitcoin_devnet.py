"""The Bitcoin RPC client and block parser against a real bcoin regtest node (installed by set-up)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.addresses import BitcoinAccount
from gateway.chains.bitcoin_blocks import block_facts, parse_block, parse_transaction, transaction_facts
from gateway.chains.bitcoin_rpc import RpcError
from sandbox.demo import demo_account_keys
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet

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
