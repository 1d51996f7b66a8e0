"""The Bitcoin watcher against scripted node snapshots, with the real invoice service and SQLite store.

The scripted node lets each test arrange what bcoin cannot do on demand: a BIP125 replacement, an eviction,
a block that lands between two RPC calls, a reorg of chosen depth. Everything after the node (matching,
the store, the lifecycle, the outbox) is the production code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin import BitcoinWatcher, WatcherRefused, WatcherSettings, check_bitcoin_node
from gateway.chains.bitcoin_rpc import RpcUnavailable
from gateway.chains.chain_state import ChainState
from gateway.money import Chain
from tests.conftest import Gateway
from tests.unit.bitcoin_fake_node import FakeNode, fake_outpoint, payment_tx

HRP = "bcrt"
SMALL = "12500.00"  # 0 confirmations by the default policy
MEDIUM = "100000.00"  # 1 confirmation
LARGE = "600000.00"  # 3 confirmations


def make_watcher(gateway: Gateway, node: FakeNode, **settings: Any) -> BitcoinWatcher:
    state = ChainState(gateway.store, Chain.BITCOIN, keep=settings.pop("keep", 100))
    settings.setdefault("network", "regtest")
    return BitcoinWatcher(node, state, gateway.service, WatcherSettings(hrp=HRP, **settings))


async def btc_invoice(gateway: Gateway, amount: str) -> tuple[str, bytes, int]:
    invoice = await gateway.create_invoice(amount, assets=["BTC"])
    method = invoice["payment_methods"][0]
    return invoice["id"], btc_script_for_address(method["address"], HRP), method["amount_due_minor"]


async def invoice(gateway: Gateway, invoice_id: str) -> dict[str, Any]:
    response = await gateway.client.get(f"/v1/invoices/{invoice_id}", headers=gateway.auth())
    body: dict[str, Any] = await response.json()
    return body


async def payments(gateway: Gateway, invoice_id: str) -> list[dict[str, Any]]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT payment_key, status, confirmations, block_height, payer FROM payments WHERE invoice_id = ?",
            (invoice_id,),
        )
    )
    return [dict(r) for r in rows]


async def drop_reasons(gateway: Gateway, invoice_id: str) -> list[str]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall(
            "SELECT payload FROM outbox WHERE invoice_id = ? AND type = 'payment.dropped' ORDER BY seq",
            (invoice_id,),
        )
    )
    return [json.loads(r["payload"])["data"]["reason"] for r in rows]


async def event_types(gateway: Gateway, invoice_id: str) -> list[str]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT type FROM outbox WHERE invoice_id = ? ORDER BY seq", (invoice_id,))
    )
    return [r["type"] for r in rows]


async def test_mempool_payment_settles_at_zero_confirmations_and_counts_confirmations(
    gateway: Gateway,
) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, SMALL)  # created while the watcher runs
    payer = bytes.fromhex("02" + "ab" * 32)
    txid = node.broadcast(payment_tx([(script, due)], payer_pubkey=payer))
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    [row] = await payments(gateway, invoice_id)
    assert row["payment_key"] == f"{txid}:0" and row["confirmations"] == 0 and row["block_height"] is None
    assert row["payer"] is not None and row["payer"].startswith("0014")  # the payer's P2WPKH script

    node.mine()
    await watcher.poll_once()
    node.mine([])
    node.mine([])
    await watcher.poll_once()
    [row] = await payments(gateway, invoice_id)
    assert row["confirmations"] == 3 and row["block_height"] == 1
    assert (await event_types(gateway, invoice_id)).count("invoice.settled") == 1


async def test_rbf_signalling_payment_waits_for_a_confirmation(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    invoice_id, script, due = await btc_invoice(gateway, SMALL)
    node.broadcast(payment_tx([(script, due)], rbf=True))
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "processing"
    node.mine()
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"


async def test_replaced_transaction_is_dropped_and_the_invoice_goes_back_to_new(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    coin = fake_outpoint()
    original = node.broadcast(payment_tx([(script, due)], inputs=[coin], rbf=True))
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "processing"

    # BIP125: the payer replaces it with a transaction spending the same coin back to themselves
    del node.mempool[original]
    node.broadcast(payment_tx([(b"\x00\x14" + b"\x22" * 20, due - 500)], inputs=[coin], rbf=True))
    await watcher.poll_once()
    body = await invoice(gateway, invoice_id)
    assert body["status"] == "new" and body["amount_paid_tiyn"] == 0
    [row] = await payments(gateway, invoice_id)
    assert row["status"] == "dropped"
    assert await drop_reasons(gateway, invoice_id) == ["replaced"]


async def test_evicted_zero_confirmation_payment_reverses_a_settled_invoice(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    invoice_id, script, due = await btc_invoice(gateway, SMALL)
    txid = node.broadcast(payment_tx([(script, due)]))
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    del node.mempool[txid]  # evicted (low fee, expiry): nothing spent its coin
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "reversed"
    assert await drop_reasons(gateway, invoice_id) == ["evicted"]

    node.broadcast(payment_tx([(script, due)], inputs=[]))  # another transaction pays again
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"


async def test_a_transaction_mined_between_calls_is_not_called_dropped(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    tx = payment_tx([(script, due)])
    node.broadcast(tx)
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "processing"
    # the next snapshot: the mempool is read empty-handed because the block lands right after it
    node.block_between_calls = [tx]
    node.mempool.clear()
    await watcher.poll_once()
    body = await invoice(gateway, invoice_id)
    assert body["status"] == "settled"
    assert "payment.dropped" not in await event_types(gateway, invoice_id)


async def test_underpay_overpay_and_two_payments_adding_up(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    under_id, under_script, under_due = await btc_invoice(gateway, MEDIUM)
    over_id, over_script, over_due = await btc_invoice(gateway, MEDIUM)
    sum_id, sum_script, sum_due = await btc_invoice(gateway, MEDIUM)
    node.broadcast(payment_tx([(under_script, under_due // 2)]))
    node.broadcast(payment_tx([(over_script, over_due * 2)]))
    node.broadcast(payment_tx([(sum_script, sum_due // 2)]))
    await watcher.poll_once()
    assert (await invoice(gateway, sum_id))["flags"] == ["underpaid"]
    node.broadcast(payment_tx([(sum_script, sum_due - sum_due // 2)]))
    node.mine()
    await watcher.poll_once()
    under, over, both = [await invoice(gateway, i) for i in (under_id, over_id, sum_id)]
    assert (under["status"], under["flags"]) == ("new", ["underpaid"])
    assert (over["status"], over["flags"]) == ("settled", ["overpaid"])
    assert (both["status"], both["flags"]) == ("settled", [])
    assert len(await payments(gateway, sum_id)) == 2


async def test_reorg_depth_one_back_to_mempool_and_depth_three_double_spend(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    medium_id, medium_script, medium_due = await btc_invoice(gateway, MEDIUM)
    medium_tx = payment_tx([(medium_script, medium_due)])
    node.broadcast(medium_tx)
    node.mine()
    await watcher.poll_once()
    assert (await invoice(gateway, medium_id))["status"] == "settled"

    # depth 1: the block is replaced; the payment is back in the mempool, unconfirmed again
    node.reorg(1, [[], []])
    node.broadcast(medium_tx)
    await watcher.poll_once()
    body = await invoice(gateway, medium_id)
    assert (body["status"], body["flags"]) == ("processing", ["reorged"])
    assert watcher.status.reorgs == 1
    node.mine()
    await watcher.poll_once()
    assert (await invoice(gateway, medium_id))["status"] == "settled"

    # depth 3 with a double spend: a large invoice settled at 3 confirmations loses its coin for good
    large_id, large_script, large_due = await btc_invoice(gateway, LARGE)
    coin = fake_outpoint()
    node.broadcast(payment_tx([(large_script, large_due)], inputs=[coin]))
    node.mine()
    node.mine([])
    node.mine([])
    await watcher.poll_once()
    assert (await invoice(gateway, large_id))["status"] == "settled"
    theft = payment_tx([(b"\x00\x14" + b"\x33" * 20, large_due)], inputs=[coin])
    node.reorg(3, [[theft], [], [], []])
    await watcher.poll_once()
    body = await invoice(gateway, large_id)
    assert body["status"] == "reversed" and body["amount_paid_tiyn"] == 0
    [row] = await payments(gateway, large_id)
    assert row["status"] == "dropped"
    assert await drop_reasons(gateway, large_id) == ["double_spent"]
    # the medium invoice's payment was mined two blocks before the fork: untouched
    assert (await invoice(gateway, medium_id))["status"] == "settled"


async def test_restarted_watcher_catches_up_without_missing_or_double_counting(gateway: Gateway) -> None:
    node = FakeNode()
    first = make_watcher(gateway, node)
    await first.poll_once()
    invoices = [await btc_invoice(gateway, MEDIUM) for _ in range(5)]
    # the watcher is down while 20 blocks are mined, each of the first five carrying one payment
    for _, script, due in invoices:
        node.mine([payment_tx([(script, due)])])
    for _ in range(15):
        node.mine([])
    second = make_watcher(gateway, node)
    await second.poll_once()
    await second.poll_once()
    for invoice_id, _, _ in invoices:
        assert (await invoice(gateway, invoice_id))["status"] == "settled"
        [row] = await payments(gateway, invoice_id)
        assert row["confirmations"] >= 6
    stored = await ChainState(gateway.store, Chain.BITCOIN).recent_blocks()
    assert stored[-1].height == node.height and stored[-1].hash == node.main[-1]


async def test_a_crash_between_payments_and_checkpoint_reprocesses_the_block_once(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    node.mine([payment_tx([(script, due)])])

    state = watcher._state  # make writing the checkpoint fail once, after the payment was recorded
    original = state.connect
    calls = 0

    async def failing_connect(block: Any, spends: Any = ()) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        await original(block, spends)

    state.connect = failing_connect  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await watcher.poll_once()
    restarted = make_watcher(gateway, node)  # a new process: memory gone, only the store remains
    await restarted.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    assert len(await payments(gateway, invoice_id)) == 1
    assert (await event_types(gateway, invoice_id)).count("payment.detected") == 1


async def test_node_outage_is_retried_and_nothing_is_missed(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    node.down = True
    with pytest.raises(RpcUnavailable):
        await watcher.poll_once()
    node.down = False
    node.mine([payment_tx([(script, due)])])
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"


async def test_refuses_mainnet_and_the_wrong_network(gateway: Gateway) -> None:
    with pytest.raises(WatcherRefused, match="mainnet"):
        await make_watcher(gateway, FakeNode(chain="main"), network="mainnet").poll_once()
    with pytest.raises(WatcherRefused, match="signet"):
        await make_watcher(gateway, FakeNode(chain="regtest"), network="signet").poll_once()
    with pytest.raises(WatcherRefused, match="genesis"):
        await make_watcher(gateway, FakeNode(), genesis_hash="00" * 32).poll_once()


async def test_mempool_transactions_are_fetched_once(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    for _ in range(5):
        node.broadcast(payment_tx([(b"\x00\x14" + b"\x44" * 20, 1000)]))
    await watcher.poll_once()
    fetched = node.calls.count("getrawtransaction")
    assert fetched == 5
    await watcher.poll_once()
    await watcher.poll_once()
    assert node.calls.count("getrawtransaction") == fetched


async def test_new_invoice_addresses_are_decoded_once_not_at_every_poll(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = make_watcher(gateway, FakeNode())
    decoded: list[str] = []
    decode = watcher._watch_key

    def counting(address: str) -> bytes:
        decoded.append(address)
        return decode(address)

    monkeypatch.setattr(watcher, "_watch_key", counting)
    created = [await btc_invoice(gateway, SMALL) for _ in range(3)]
    for _ in range(4):  # within the refresh margin every poll reads the same addresses again
        await watcher.poll_once()
    assert len(decoded) == len(set(decoded)) == 3
    assert {btc_script_for_address(a, HRP) for a in decoded} == {script for _, script, _ in created}


async def test_a_node_whose_chain_got_shorter_retracts_payments_above_its_tip(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node)
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    node.mine([payment_tx([(script, due)])])
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    node.main.pop()  # e.g. a node restarted from an older snapshot: the block is simply gone
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "reversed"
    assert await drop_reasons(gateway, invoice_id) == ["reorged_out"]


async def test_a_reorg_deeper_than_the_stored_window_re_anchors_and_goes_on(gateway: Gateway) -> None:
    node = FakeNode()
    watcher = make_watcher(gateway, node, keep=3)
    for _ in range(5):
        node.mine([])
    await watcher.poll_once()
    invoice_id, script, due = await btc_invoice(gateway, MEDIUM)
    node.reorg(5, [[], [], [], [], [payment_tx([(script, due)])], []])  # replaces every stored height
    await watcher.poll_once()
    assert (await invoice(gateway, invoice_id))["status"] == "settled"
    stored = await ChainState(gateway.store, Chain.BITCOIN).recent_blocks()
    assert [b.hash for b in stored] == node.main[-3:]


class _Answers:
    """A node whose chain-check answers are given: what a garbled or misrouted answer looks like."""

    def __init__(self, info: Any, genesis: Any) -> None:
        self._answers = {"getblockchaininfo": info, "getblockhash": genesis}

    async def call(self, method: str, *params: Any) -> Any:
        return self._answers[method]

    async def batch(self, calls: Any) -> list[Any]:
        raise AssertionError("the chain check makes single calls")


@pytest.mark.parametrize(
    ("info", "genesis"),
    [
        (None, "0f" * 32),  # a null result
        ("0f" * 32, "0f" * 32),  # another call's answer (a block hash) for getblockchaininfo
        ({"blocks": 432}, "0f" * 32),  # an object without a chain name
        ({"chain": "regtest"}, 432),  # another call's answer (a height) for the genesis hash
    ],
)
async def test_a_garbled_chain_check_answer_is_unavailable_never_a_refusal(info: Any, genesis: Any) -> None:
    """A refusal stops the watcher for good; "the node is on ''" from a null or crossed answer did that to a
    healthy node (found with tests/reliability/rpc_fault_proxy.py). Such answers are asked again instead."""
    settings = WatcherSettings(hrp="rb", network="regtest")
    with pytest.raises(RpcUnavailable):
        await check_bitcoin_node(_Answers(info, genesis), settings)
    await check_bitcoin_node(_Answers({"chain": "regtest"}, "0f" * 32), settings)  # a real answer passes
