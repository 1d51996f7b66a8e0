"""Ethereum block processing and detection latency, on a real anvil node.

1. A block with 500 tUSDT transfers (to 500 different addresses, 10 of which are invoice addresses) is
   mined on anvil. The whole watcher (`EthereumWatcher.poll_once`: the head, `eth_getLogs` for the block,
   the block with its transactions, matching, the 10 payment facts handed on, the checkpoint committed to a
   SQLite store) processes it with 10 and with 100,000 watched addresses, the two sets taking turns.
   Target: 100,000 watched addresses cost <= 1.5x of 10.
2. Detection latency: a gateway (in this process, as `cryptocity serve` builds it) watches anvil with the
   default 1 s poll and no WebSocket. For each payment the resident's transaction is sent, a block is mined
   at a random moment of the poll cycle, and the clock runs from the moment the block exists (inclusion)
   to the moment an outbox consumer is handed the invoice's `invoice.processing` event.
   Target: p99 <= poll interval + 200 ms.

    python bench/eth_watch.py          # 500 transfers, 9 repetitions, 60 payments
    python bench/eth_watch.py --quick  # CI: 50 transfers, 2 repetitions, 5 payments; fails only on errors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.detection_harness import CountingSink, bench_gateway, latency_summary  # noqa: E402
from gateway.chains.chain_state import ChainState  # noqa: E402
from gateway.chains.ethereum import EthereumSettings, EthereumWatcher  # noqa: E402
from gateway.config import StoreConfig  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from gateway.money import Asset, Chain  # noqa: E402
from gateway.store import open_store  # noqa: E402
from sandbox.devnets.ethereum import EthereumDevnet  # noqa: E402
from wallets.ethereum import EthereumWallet  # noqa: E402

PAID = 10


async def mine_transfer_block(
    devnet: EthereumDevnet, transfers: int, rng: random.Random
) -> tuple[int, list[str]]:
    """Mine one block of ``transfers`` token transfers; its number and the recipients, paid ones first."""
    senders = devnet.accounts[1:]
    for sender in senders:
        await devnet.mint(sender.address, 10**15)
    recipients = ["0x" + rng.randbytes(20).hex() for _ in range(transfers)]
    nonces = {s.address: await devnet.w3.eth.get_transaction_count(s.address) for s in senders}
    raws = []
    for i, to in enumerate(recipients):
        sender = senders[i % len(senders)]
        raws.append(await devnet.sign_token_transfer(sender, to, 1_000 + i, nonce=nonces[sender.address]))
        nonces[sender.address] += 1
    await devnet.set_automine(False)
    await devnet.send_raw_batch(raws)
    number = await devnet.mine(1)
    if await devnet.pending_count():
        raise RuntimeError("the transfers did not fit one block")
    block = await devnet.w3.eth.get_block(number)
    if len(block["transactions"]) != transfers:
        raise RuntimeError(f"block {number} has {len(block['transactions'])} transactions, not {transfers}")
    return number, recipients


async def measure_block(
    devnet: EthereumDevnet, number: int, sets: dict[str, dict[str, str]], repetitions: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in sets}
    facts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as workdir:
        store = await open_store(StoreConfig(path=str(Path(workdir) / "bench.sqlite3")))
        try:
            for _ in range(repetitions + 1):  # the first round warms caches and connections up
                for name, watched in sets.items():
                    await store.transaction(lambda tx: tx.execute("DELETE FROM chain_blocks"))
                    sink = CountingSink()
                    watcher = EthereumWatcher(
                        devnet.w3,
                        ChainState(store, Chain.ETHEREUM),
                        sink,
                        EthereumSettings(
                            chain_id=devnet.chain_id,
                            tokens={devnet.token_address.lower(): Asset.USDT},
                            start_block=number,
                        ),
                    )
                    watcher._watched = watched  # as 10 or 100,000 open invoices would fill it
                    await watcher._start(watcher._first_height)  # checkpoint: the block before
                    started = time.perf_counter()
                    await watcher.poll_once()
                    times[name].append(time.perf_counter() - started)
                    facts[name] = sink.facts
        finally:
            await store.close()
    return {
        name: {"total_ms": 1000 * statistics.median(times[name][1:]), "facts": facts[name]} for name in sets
    }


async def measure_detection(devnet: EthereumDevnet, payments: int, rng: random.Random) -> dict[str, Any]:
    env = {
        "CRYPTOCITY_ETHEREUM__RPC__URL": devnet.url,
        "CRYPTOCITY_ETHEREUM__CHAIN_ID": str(devnet.chain_id),
        "CRYPTOCITY_ETHEREUM__TOKEN_ADDRESS": devnet.token_address,
    }
    resident = EthereumWallet.from_private_key(devnet.accounts[9].private_key)
    await devnet.mint(resident.address, 10**14, wait=False)
    await devnet.mine(1)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        async with bench_gateway(Path(workdir), env, [Asset.ETH, Asset.USDT]) as gateway:
            poll = gateway.config.ethereum.watcher.poll_interval_seconds
            for i in range(payments):
                invoice = await gateway.create_invoice(f"{600000 + i}.00")
                asset = "USDT" if i % 2 else "ETH"
                method = next(m for m in invoice["payment_methods"] if m["asset"] == asset)
                await resident.pay_uri(devnet.w3, method["uri"], wait=False)
                await asyncio.sleep(rng.uniform(0, poll))
                await devnet.mine(1)
                latencies.append(await gateway.clock.wait_for(invoice["id"], time.perf_counter()))
    return latency_summary(latencies, poll)


async def run(transfers: int, repetitions: int, payments: int) -> dict[str, Any]:
    rng = random.Random(20261201)
    with tempfile.TemporaryDirectory() as workdir:
        async with EthereumDevnet(log_path=Path(workdir) / "anvil.log") as devnet:
            number, recipients = await mine_transfer_block(devnet, transfers, rng)
            paid = {address: address for address in recipients[:PAID]}
            large = dict(paid)
            while len(large) < 100_000:
                address = "0x" + rng.randbytes(20).hex()
                large[address] = address
            block = await measure_block(devnet, number, {"10": paid, "100000": large}, repetitions)
            await devnet.set_automine(False)
            detection = await measure_detection(devnet, payments, rng)
    return {"block_number": number, "block": block, "detection": detection}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transfers", type=int, default=500)
    parser.add_argument("--repetitions", type=int, default=9)
    parser.add_argument("--payments", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure_logging("warning", "console")
    transfers, repetitions, payments = (
        (50, 2, 5) if args.quick else (args.transfers, args.repetitions, args.payments)
    )
    result = asyncio.run(run(transfers, repetitions, payments))
    block, detection = result["block"], result["detection"]
    if block["10"]["facts"] != PAID or block["100000"]["facts"] != PAID:
        print(f"wrong matches: {block}", file=sys.stderr)
        return 1
    ratio = block["100000"]["total_ms"] / block["10"]["total_ms"]
    print(f"block: {transfers} token transfers on anvil; median of {repetitions}")
    print(f"{'watched':>8}{'watcher ms':>12}{'payments':>10}")
    for name, r in block.items():
        print(f"{name:>8}{r['total_ms']:>12.2f}{r['facts']:>10}")
    print(f"100,000 / 10 watched: {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})")
    print(
        f"detection (block inclusion -> invoice.processing, {detection['payments']} payments, poll "
        f"{detection['poll_interval_s']} s): p50 {detection['p50_ms']} ms, p99 {detection['p99_ms']} ms "
        f"(target p99 <= {detection['target_p99_ms']} ms: {'met' if detection['target_met'] else 'MISSED'})"
    )
    report = {
        "benchmark": "eth_watch",
        "quick": args.quick,
        "transfers": transfers,
        "cpus": os.cpu_count(),
        "ratio_100000_to_10": round(ratio, 3),
        "target_ratio": 1.5,
        "target_met": ratio <= 1.5,
        **result,
    }
    out = args.out or ROOT / "bench" / "results" / (
        "eth_watch.quick.json" if args.quick else "eth_watch.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
