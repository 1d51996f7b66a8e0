"""End-of-run reconciliation: five independent checks that nothing was lost or invented.

1. Chain against gateway: a fresh scan of both chains from the blocks the gateway first watched finds every
   output (BTC), ether transfer and token Transfer to an invoice address; each must be a payment the
   gateway recorded and still counts, with the same amount, and every counted confirmed payment must be on
   the chain.
2. The digital-tenge ledger's trial balance is zero and its maintained balances match its lines.
3. Shop against gateway: every settled invoice has exactly one order, marked paid once per time the
   invoice settled (a reorg can take a settled payment away and the new branch mine it again); no other
   order is paid.
4. The audit chain verifies under the run's key, and its head is authenticated.
5. Limits: no accepted payment exceeded its resident's per-operation limit, and no resident's accepted
   payments of a month exceeded the monthly limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bitcoin.core import b2lx
from hexbytes import HexBytes

from gateway.addresses import btc_script_for_address
from gateway.chains.bitcoin_blocks import parse_block, parse_transaction
from gateway.store import Tx
from sandbox.audit.verify import verify
from sandbox.devnets.bitcoin import REGTEST_HRP
from sandbox.ledger import store as ledger
from sandbox.limits import SandboxRules, Tier

if TYPE_CHECKING:
    from sandbox.simulation.driver import CitySimulation

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


async def reconcile(sim: CitySimulation) -> list[Check]:
    return [
        await _chains(sim),
        await _ledger(sim),
        await _shop(sim),
        await _audit(sim),
        await _limits(sim),
    ]


async def _counted_payments(tx: Tx, chain: str) -> dict[str, dict[str, Any]]:
    rows = await tx.fetchall(
        "SELECT payment_key, amount_minor, status, block_height FROM payments WHERE chain = ? AND status != 'dropped'",
        (chain,),
    )
    return {r["payment_key"]: dict(r) for r in rows}


async def _chains(sim: CitySimulation) -> Check:
    store = sim.store
    addresses = await store.read(lambda tx: tx.fetchall("SELECT chain, address FROM invoice_addresses"))
    btc_scripts = {
        btc_script_for_address(r["address"], REGTEST_HRP): r["address"]
        for r in addresses
        if r["chain"] == "bitcoin"
    }
    eth_addresses = {r["address"].lower() for r in addresses if r["chain"] == "ethereum"}
    found: dict[str, int] = {}
    rpc = sim.rpc
    first = sim.first_heights["bitcoin"]
    tip = await rpc.block_count()
    for height in range(first, tip + 1):
        raw = await rpc.call("getblock", await rpc.call("getblockhash", height), False)
        block = parse_block(bytes.fromhex(str(raw)))
        for tx in block.vtx:
            txid = b2lx(tx.GetTxid())
            for vout, out in enumerate(tx.vout):
                if bytes(out.scriptPubKey) in btc_scripts:
                    found[f"{txid}:{vout}"] = int(out.nValue)
    btc_mempool = 0
    for txid in await rpc.call("getrawmempool"):
        tx = parse_transaction(bytes.fromhex(str(await rpc.call("getrawtransaction", txid, False))))
        for vout, out in enumerate(tx.vout):
            if bytes(out.scriptPubKey) in btc_scripts:
                found[f"{txid}:{vout}"] = int(out.nValue)
                btc_mempool += 1
    w3 = sim.eth.w3
    eth_first = sim.first_heights["ethereum"]
    eth_tip = await sim.eth.block_number()
    eth_found: dict[str, int] = {}
    for height in range(eth_first, eth_tip + 1):
        block = await w3.eth.get_block(height, full_transactions=True)
        items: list[Any] = list(block["transactions"])
        for item in items:
            to = item.get("to")
            if to is not None and str(to).lower() in eth_addresses and int(item["value"]) > 0:
                receipt = await w3.eth.get_transaction_receipt(item["hash"])
                if int(receipt["status"]) == 1:
                    eth_found[HexBytes(item["hash"]).to_0x_hex()] = int(item["value"])
    logs = await w3.eth.get_logs({"fromBlock": eth_first, "toBlock": eth_tip, "topics": [TRANSFER_TOPIC]})
    for entry in logs:
        topics = entry["topics"]
        if len(topics) == 3 and ("0x" + HexBytes(topics[2]).hex()[-40:]) in eth_addresses:
            key = f"{HexBytes(entry['transactionHash']).to_0x_hex()}:{int(entry['logIndex'])}"
            eth_found[key] = int.from_bytes(bytes(HexBytes(entry["data"])), "big")
    problems: list[str] = []
    for chain, on_chain in (("bitcoin", found), ("ethereum", eth_found)):
        counted = await store.read(lambda tx, c=chain: _counted_payments(tx, c))  # type: ignore[misc]
        for key, amount in on_chain.items():
            row = counted.get(key)
            if row is None:
                problems.append(f"{chain} {key}: on chain, not counted by the gateway")
            elif int(row["amount_minor"]) != amount:
                problems.append(f"{chain} {key}: {amount} on chain, {row['amount_minor']} counted")
        for key, row in counted.items():
            if key not in on_chain:
                problems.append(f"{chain} {key}: counted ({row['status']}) but not on the chain")
    total = len(found) + len(eth_found)
    detail = (
        f"{total} payments to invoice addresses on chain ({len(found)} BTC, {btc_mempool} of them unconfirmed;"
        f" {len(eth_found)} ETH/USDT), all counted by the gateway"
        if not problems
        else f"{len(problems)} mismatches: " + "; ".join(problems[:10])
    )
    return Check("chain payments accounted for", not problems, detail)


async def _ledger(sim: CitySimulation) -> Check:
    async def read(tx: Tx) -> tuple[int, list[str]]:
        return await ledger.trial_balance(tx), [m.account for m in await ledger.verify_balances(tx)]

    balance, mismatches = await sim.store.read(read)
    ok = balance == 0 and not mismatches
    detail = f"trial balance {balance} tiyn; balances that disagree with their lines: {mismatches or 'none'}"
    return Check("ledger trial balance is zero", ok, detail)


async def _shop(sim: CitySimulation) -> Check:
    settled = {
        r["id"]
        for r in await sim.store.read(
            lambda tx: tx.fetchall("SELECT id FROM invoices WHERE status = 'settled'")
        )
    }
    # An invoice can settle more than once: settled, its payment reorged out (reversed), mined again in the
    # new branch (settled again). Its order must then have been marked paid once per settlement.
    settlements = {
        r["invoice_id"]: int(r["n"])
        for r in await sim.store.read(
            lambda tx: tx.fetchall(
                "SELECT invoice_id, COUNT(*) AS n FROM outbox WHERE type = 'invoice.settled' GROUP BY invoice_id"
            )
        )
    }
    db = sim.shops.orders._db
    async with db.execute("SELECT id, invoice_id, status FROM orders") as cursor:
        orders = [dict(r) for r in await cursor.fetchall()]
    async with db.execute(
        "SELECT order_id, COUNT(*) AS n FROM order_history WHERE to_status = 'paid' GROUP BY order_id"
    ) as cursor:
        paid_transitions = {r[0]: int(r[1]) for r in await cursor.fetchall()}
    problems = []
    by_invoice: dict[str, list[dict[str, Any]]] = {}
    for order in orders:
        if order["invoice_id"]:
            by_invoice.setdefault(order["invoice_id"], []).append(order)
    for invoice_id in settled:
        found = by_invoice.get(invoice_id, [])
        if len(found) != 1:
            problems.append(f"{invoice_id}: {len(found)} orders")
        elif found[0]["status"] != "paid" or paid_transitions.get(found[0]["id"], 0) != settlements.get(
            invoice_id, 0
        ):
            problems.append(
                f"{invoice_id}: order {found[0]['status']}, paid {paid_transitions.get(found[0]['id'], 0)} times"
                f" for {settlements.get(invoice_id, 0)} settlements"
            )
    for order in orders:
        if order["status"] == "paid" and order["invoice_id"] not in settled:
            problems.append(f"order {order['id']} paid but its invoice is not settled")
    detail = (
        f"{len(settled)} settled invoices, each with exactly one order, paid once per settlement"
        f" ({sum(1 for i in settled if settlements.get(i, 0) > 1)} settled again after a reorg)"
        if not problems
        else f"{len(problems)} problems: " + "; ".join(problems[:10])
    )
    return Check("every settled invoice paid exactly one order", not problems, detail)


async def _audit(sim: CitySimulation) -> Check:
    result = await verify(sim.out / "gateway.sqlite3", sim.audit_key)
    return Check("audit chain verifies", result.ok, result.verdict())


async def _limits(sim: CitySimulation) -> Check:
    rules = SandboxRules(sim.gateway_config.sandbox)
    conversion = rules.conversion()
    rows = await sim.store.read(
        lambda tx: tx.fetchall(
            "SELECT s.resident_id, s.month, s.value_tiyn, r.tier FROM sandbox_payments s"
            " JOIN residents r ON r.id = s.resident_id WHERE s.decision = 'accepted'"
        )
    )
    problems = []
    monthly: dict[tuple[str, str], int] = {}
    for row in rows:
        limits = rules.tier_limits(Tier(row["tier"]), conversion)
        value = int(row["value_tiyn"])
        if value > limits.per_operation_tiyn:
            problems.append(f"{row['resident_id']}: {value} over the per-operation limit")
        key = (row["resident_id"], row["month"])
        monthly[key] = monthly.get(key, 0) + value
        if monthly[key] > limits.monthly_tiyn:
            problems.append(f"{row['resident_id']} {row['month']}: {monthly[key]} over the monthly limit")
    detail = (
        f"{len(rows)} accepted payments of {len({k[0] for k in monthly})} residents, all within their limits"
        if not problems
        else f"{len(problems)} breaches: " + "; ".join(problems[:10])
    )
    return Check("no accepted payment exceeded a limit", not problems, detail)
