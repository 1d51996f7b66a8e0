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
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from embit import bip39  # noqa: E402

from gateway.accounts.merchants import MerchantRegistry  # noqa: E402
from gateway.api.state import REGISTRY  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.extensions import Extensions  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from gateway.money import Asset  # noqa: E402
from gateway.outbox import OutboxEvent  # noqa: E402
from gateway.store import Tx  # noqa: E402
from sandbox.demo import demo_account_keys  # noqa: E402
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet  # noqa: E402
from wallets.bitcoin import BitcoinWallet  # noqa: E402


class ProcessingClock:
    """An outbox consumer that notes when each invoice's `invoice.processing` event reaches it."""

    name = "bench-detection"

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def handle(self, tx: Tx, events: Sequence[OutboxEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            if event.type == "invoice.processing" and event.invoice_id is not None:
                self.seen.setdefault(event.invoice_id, now)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def measure_detection(payments: int, *, seed: int = 20261201) -> dict[str, Any]:
    rng = random.Random(seed)
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as workdir:
        async with BitcoinDevnet(log_path=Path(workdir) / "bcoin.log") as devnet:
            assert devnet.rpc is not None
            rpc = devnet.rpc
            wallet = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(rng.randbytes(16)), REGTEST_HRP)
            await devnet.fund(wallet)
            config = load_config(
                None,
                environ={
                    "CRYPTOCITY_STORE__PATH": str(Path(workdir) / "gateway.sqlite3"),
                    "CRYPTOCITY_LOGGING__LEVEL": "warning",
                    "CRYPTOCITY_SERVER__PORT": "0",
                    "CRYPTOCITY_ADDRESSES__DERIVE_WORKERS": "0",
                    "CRYPTOCITY_BITCOIN__HRP": REGTEST_HRP,
                    "CRYPTOCITY_BITCOIN__RPC__URL": devnet.url,
                    "CRYPTOCITY_BITCOIN__RPC__PASSWORD": devnet.api_key,
                },
            )
            clock = ProcessingClock()
            app = create_app(config, Extensions(consumers=[clock]))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            registry: MerchantRegistry = app[REGISTRY]
            btc, eth = demo_account_keys()
            _, key = await registry.create(
                "Bench Shop", btc_account_key=btc, eth_account_key=eth, accepted_assets=[Asset.BTC]
            )
            latencies: list[float] = []
            try:
                async with aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key.plaintext}"}
                ) as http:
                    await asyncio.sleep(1.5)  # the watcher's first poll: its checkpoint is the tip
                    for i in range(payments):
                        async with http.post(
                            "/v1/invoices", json={"amount": f"{100000 + i}.00", "currency": "KZT"}
                        ) as response:
                            invoice = await response.json()
                        method = next(m for m in invoice["payment_methods"] if m["asset"] == "BTC")
                        payment = wallet.build_payment(method["address"], method["amount_due_minor"])
                        await asyncio.sleep(rng.uniform(0, config.bitcoin.watcher.poll_interval_seconds))
                        await rpc.send_raw_transaction(payment.raw)
                        sent = time.perf_counter()
                        deadline = sent + 30
                        while invoice["id"] not in clock.seen and time.perf_counter() < deadline:
                            await asyncio.sleep(0.002)
                        if invoice["id"] not in clock.seen:
                            raise RuntimeError(f"payment {i} was not detected within 30 s")
                        latencies.append(clock.seen[invoice["id"]] - sent)
                        if (i + 1) % 20 == 0:  # keep unconfirmed chains short (bcoin allows 25 ancestors)
                            await devnet.mine(1, wallet.address(0))
                            await wallet.scan(rpc)
            finally:
                await runner.cleanup()
    poll = config.bitcoin.watcher.poll_interval_seconds
    return {
        "payments": payments,
        "poll_interval_s": poll,
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "target_p99_ms": round(1000 * poll + 200),
        "target_met": percentile(latencies, 99) <= poll + 0.2,
    }


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
