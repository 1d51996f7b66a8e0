"""Detection latency on a real bcoin regtest node: sendrawtransaction → the invoice's `processing` event.

A gateway (in this process, as `cryptocity serve` builds it) watches a fresh bcoin node with the default
poll interval. A resident wallet pays invoices one at a time at random moments (so payments land at every
phase of the poll cycle); the clock starts when the node has answered `sendrawtransaction` and stops when an
outbox consumer is handed the invoice's `invoice.processing` event, i.e. after it was durably committed.
Target: p99 <= poll interval + 200 ms.

Used by bench/btc_watch.py; runs alone too:

    python bench/btc_detection.py [--payments 60] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embit import bip39  # noqa: E402

from bench.detection_harness import bench_gateway, latency_summary  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from gateway.money import Asset  # noqa: E402
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet  # noqa: E402
from wallets.bitcoin import BitcoinWallet  # noqa: E402


async def measure_detection(payments: int, *, seed: int = 20261201) -> dict[str, Any]:
    rng = random.Random(seed)
    configure_logging("warning", "console")
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        async with BitcoinDevnet(log_path=Path(workdir) / "bcoin.log") as devnet:
            assert devnet.rpc is not None
            rpc = devnet.rpc
            wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(rng.randbytes(16)), REGTEST_HRP)
            await devnet.fund(wallet)
            env = {
                "CRYPTOCITY_BITCOIN__HRP": REGTEST_HRP,
                "CRYPTOCITY_BITCOIN__RPC__URL": devnet.url,
                "CRYPTOCITY_BITCOIN__RPC__PASSWORD": devnet.api_key,
            }
            async with bench_gateway(Path(workdir), env, [Asset.BTC]) as gateway:
                poll = gateway.config.bitcoin.watcher.poll_interval_seconds
                for i in range(payments):
                    invoice = await gateway.create_invoice(f"{100000 + i}.00")
                    method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
                    payment = wallet.build_payment(method["address"], method["amount_due_minor"])
                    await asyncio.sleep(rng.uniform(0, poll))
                    await rpc.send_raw_transaction(payment.raw)
                    latencies.append(await gateway.clock.wait_for(invoice["id"], time.perf_counter()))
                    if (i + 1) % 20 == 0:  # keep unconfirmed chains short (bcoin allows 25 ancestors)
                        await devnet.mine(1, wallet.address(0))
                        await wallet.scan(rpc)
    return latency_summary(latencies, poll)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure_detection(5 if args.quick else args.payments))
    print(result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
