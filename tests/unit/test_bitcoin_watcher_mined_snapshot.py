"""A payment mined between the watcher's mempool snapshot and its sync is not taken back to the mempool.

Found by the crash harness (tests/reliability/test_crash_harness.py): a restarted gateway catching up on
blocks while payments were being mined had a settled BTC invoice reversed, its payment "evicted", although
the transaction was in the main chain. The poll's snapshot (``getrawmempool``) still listed the transaction;
the block that mined it arrived before the sync asked for the node's height, so the sync recorded the
payment in that block; then the mempool scan of the older snapshot fetched it as a new mempool
transaction. A node that indexes transactions (bcoin ``--index-tx``, Bitcoin Core ``-txindex``) answers
``getrawtransaction`` for a mined one too, so the payment was recorded again with 0 confirmations and no
block, and at the next poll, not in the mempool, judged dropped. Its block was already behind the
watcher, so nothing ever counted it again.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Gateway
from tests.unit.bitcoin_fake_node import FakeNode, payment_tx
from tests.unit.test_bitcoin_watcher import MEDIUM, btc_invoice, event_types, invoice, make_watcher, payments


class IndexingNode(FakeNode):
    """The scripted node with a transaction index: ``getrawtransaction`` finds mined transactions too."""

    def _answer(self, method: str, params: list[Any]) -> Any:
        if method == "getrawtransaction" and params[0] not in self.mempool:
            for block_hash in self.main:
                for tx in self.blocks[block_hash].vtx:
                    if tx.GetTxid()[::-1].hex() == params[0]:
                        return tx.serialize().hex()
        return super()._answer(method, params)


async def test_a_payment_mined_after_the_snapshot_keeps_its_block_and_is_never_dropped(
    gateway: Gateway,
) -> None:
    node = IndexingNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)  # 1 confirmation
    tx = payment_tx([(script, due)])
    node.broadcast(tx)
    node.block_between_calls = [tx]  # getrawmempool lists it, then the block mining it lands
    await watcher.poll_once()
    await watcher.poll_once()  # at the tip now: the mempool no longer has it
    [row] = await payments(gateway, invoice_id)
    assert (row["status"], row["confirmations"], row["block_height"]) == ("accepted", 1, 1)
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    types = await event_types(gateway, invoice_id)
    assert "payment.dropped" not in types and "invoice.reorged" not in types
    node.mine([])
    await watcher.poll_once()
    [row] = await payments(gateway, invoice_id)
    assert row["confirmations"] == 2
