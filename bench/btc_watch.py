"""Bitcoin block processing and detection latency.

1. Parse a 2,000-transaction block and match it against 10 vs 100,000 watched scripts. Matching is a dict
   lookup per output, so the time per block should not depend on how many invoices are open (target:
   100,000 watched scripts cost <= 1.5x of 10). Both watched sets contain the same 10 scripts that the block
   pays, so the matches found are identical and only the size of the set differs. Also reports the raw
   block parsing rate (transactions per second).
2. The same through the whole watcher (`BitcoinWatcher.poll_once` on a new block: fetch as hex, parse,
   match, double-spend check of followed inputs, the 10 payment facts handed on, the checkpoint written to
   a SQLite store), again with 10 vs 100,000 watched scripts.
3. Detection latency on a real bcoin node (bench/btc_detection.py): sendrawtransaction → the invoice's
   `processing` event, p50/p99 (target p99 <= poll interval + 200 ms).

    python bench/btc_watch.py          # 2,000-tx block, 15 repetitions, 60 payments
    python bench/btc_watch.py --quick  # CI: 200-tx block, 3 repetitions, 5 payments; fails only on errors
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

from bitcoin.core import (  # noqa: E402
    CBlock,
    CMutableTransaction,
    COutPoint,
    CScriptWitness,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    b2lx,
)
from bitcoin.core.script import CScript  # noqa: E402

from bench.btc_detection import measure_detection  # noqa: E402
from bench.detection_harness import CountingSink  # noqa: E402
from gateway.chains.bitcoin import BitcoinWatcher, WatcherSettings  # noqa: E402
from gateway.chains.bitcoin_blocks import block_facts, parse_block  # noqa: E402
from gateway.chains.chain_state import ChainState  # noqa: E402
from gateway.config import StoreConfig  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from gateway.money import Chain  # noqa: E402
from gateway.store import open_store  # noqa: E402

PAID = 10


def p2wpkh(rng: random.Random) -> bytes:
    return b"\x00\x14" + rng.randbytes(20)


def build_block(transactions: int, paid_scripts: list[bytes], rng: random.Random) -> bytes:
    """A block of P2WPKH spends with two outputs each; the first few pay the given scripts."""
    vtx = [
        CMutableTransaction(
            [CTxIn(COutPoint(), CScript(b"\x01\x01"))], [CTxOut(5_000_000_000, CScript(p2wpkh(rng)))]
        )
    ]
    for i in range(transactions - 1):
        target = paid_scripts[i] if i < len(paid_scripts) else p2wpkh(rng)
        vin = [CTxIn(COutPoint(rng.randbytes(32), 0), nSequence=0xFFFFFFFD if i % 7 == 0 else 0xFFFFFFFF)]
        vout = [
            CTxOut(rng.randrange(1_000, 10**8), CScript(target)),
            CTxOut(rng.randrange(1_000, 10**8), CScript(p2wpkh(rng))),
        ]
        witness = CTxWitness([CTxInWitness(CScriptWitness([rng.randbytes(71), b"\x02" + rng.randbytes(32)]))])
        vtx.append(CMutableTransaction(vin, vout, witness=witness))
    return bytes(CBlock(vtx=vtx).serialize())


def measure(raw: bytes, sets: dict[str, dict[bytes, str]], repetitions: int) -> dict[str, dict[str, float]]:
    """Median parse and match times per watched set; the sets take turns so that drift hits both alike."""
    block_facts_count = {name: 0 for name in sets}
    parse_s: dict[str, list[float]] = {name: [] for name in sets}
    match_s: dict[str, list[float]] = {name: [] for name in sets}
    parse_block(raw)  # warm-up: first-use costs are not block processing
    for _ in range(repetitions):
        for name, watched in sets.items():
            started = time.perf_counter()
            block = parse_block(raw)
            parsed = time.perf_counter()
            block_facts_count[name] = sum(len(f.matches) for f in block_facts(block, watched))
            matched = time.perf_counter()
            parse_s[name].append(parsed - started)
            match_s[name].append(matched - parsed)
    return {
        name: {
            "parse_ms": 1000 * statistics.median(parse_s[name]),
            "match_ms": 1000 * statistics.median(match_s[name]),
            "total_ms": 1000
            * statistics.median(p + m for p, m in zip(parse_s[name], match_s[name], strict=True)),
            "matches": block_facts_count[name],
        }
        for name in sets
    }


class _OneBlockNode:
    """Serves a chain of a parent and one block (the benchmark block), as bcoin would over JSON-RPC."""

    def __init__(self, raw_block: bytes) -> None:
        self.block = CBlock.deserialize(raw_block)
        self.raw_hex = raw_block.hex()
        self.parent = b2lx(self.block.hashPrevBlock)
        self.hash = b2lx(self.block.GetHash())
        self.height = 0  # 0: only the parent exists; 1: the block is mined

    async def call(self, method: str, *params: Any) -> Any:
        match method:
            case "getblockchaininfo":
                return {"chain": "regtest"}
            case "getblockcount":
                return self.height
            case "getbestblockhash":
                return self.hash if self.height else self.parent
            case "getblockhash":
                return [self.parent, self.hash][int(params[0])]
            case "getblock":
                if params[0] == self.parent:
                    return CBlock(vtx=self.block.vtx[:1]).serialize().hex()
                return self.raw_hex
            case "getrawmempool":
                return []
        raise AssertionError(f"unexpected call {method}")

    async def batch(self, calls: Any) -> list[Any]:
        return [await self.call(method, *params) for method, params in calls]


async def measure_watcher(raw: bytes, sets: dict[str, dict[bytes, str]], repetitions: int) -> dict[str, Any]:
    """Median time of the watcher's poll that processes the new block, per watched set (interleaved)."""
    times: dict[str, list[float]] = {name: [] for name in sets}
    facts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as workdir:
        store = await open_store(StoreConfig(path=str(Path(workdir) / "bench.sqlite3")))
        try:
            for _ in range(repetitions + 1):
                for name, watched in sets.items():
                    await store.transaction(lambda tx: tx.execute("DELETE FROM chain_blocks"))
                    node = _OneBlockNode(raw)
                    sink = CountingSink()
                    watcher = BitcoinWatcher(
                        node,
                        ChainState(store, Chain.BITCOIN),
                        sink,  # type: ignore[arg-type]
                        WatcherSettings(hrp="bcrt", network="regtest"),
                    )
                    await watcher.poll_once()  # start-up at the parent
                    watcher._watched = watched  # the watch dict as 10 or 100,000 open invoices would fill it
                    node.height = 1
                    started = time.perf_counter()
                    await watcher.poll_once()
                    times[name].append(time.perf_counter() - started)
                    facts[name] = sink.facts
        finally:
            await store.close()
    return {
        name: {"total_ms": 1000 * statistics.median(times[name][1:]), "facts": facts[name]} for name in sets
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--payments", type=int, default=60, help="payments timed for detection latency")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure_logging("warning", "console")
    transactions, repetitions = (200, 3) if args.quick else (args.transactions, args.repetitions)
    rng = random.Random(20261123)
    paid = [p2wpkh(rng) for _ in range(PAID)]
    raw = build_block(transactions, paid, rng)
    small = {script: f"inv_{i}" for i, script in enumerate(paid)}
    large = dict(small)
    while len(large) < 100_000:
        large[p2wpkh(rng)] = f"inv_{len(large)}"
    sets = {"10": small, "100000": large}
    results = measure(raw, sets, repetitions)
    if results["10"]["matches"] != PAID or results["100000"]["matches"] != PAID:
        print(f"wrong matches: {results}", file=sys.stderr)
        return 1
    watcher = asyncio.run(measure_watcher(raw, sets, repetitions))
    if watcher["10"]["facts"] != PAID or watcher["100000"]["facts"] != PAID:
        print(f"wrong watcher facts: {watcher}", file=sys.stderr)
        return 1
    detection = asyncio.run(measure_detection(5 if args.quick else args.payments))
    ratio = results["100000"]["total_ms"] / results["10"]["total_ms"]
    watcher_ratio = watcher["100000"]["total_ms"] / watcher["10"]["total_ms"]
    parse_rate = transactions / (results["10"]["parse_ms"] / 1000)
    print(f"block: {transactions} transactions, {len(raw):,} bytes; median of {repetitions}")
    print(f"{'watched':>8}{'parse ms':>10}{'match ms':>10}{'total ms':>10}{'matches':>9}{'watcher ms':>12}")
    for name, r in results.items():
        print(
            f"{name:>8}{r['parse_ms']:>10.2f}{r['match_ms']:>10.2f}{r['total_ms']:>10.2f}{r['matches']:>9}"
            f"{watcher[name]['total_ms']:>12.2f}"
        )
    print(
        f"100,000 / 10 watched: parse+match {ratio:.2f}x, whole watcher {watcher_ratio:.2f}x "
        f"(target <= 1.5x: {'met' if max(ratio, watcher_ratio) <= 1.5 else 'MISSED'}); "
        f"parsing {parse_rate:,.0f} tx/s"
    )
    print(
        f"detection (sendrawtransaction -> invoice.processing, {detection['payments']} payments, poll "
        f"{detection['poll_interval_s']} s): p50 {detection['p50_ms']} ms, p99 {detection['p99_ms']} ms "
        f"(target p99 <= {detection['target_p99_ms']} ms: {'met' if detection['target_met'] else 'MISSED'})"
    )
    report = {
        "benchmark": "btc_watch",
        "quick": args.quick,
        "transactions": transactions,
        "block_bytes": len(raw),
        "cpus": os.cpu_count(),
        "ratio_100000_to_10": round(ratio, 3),
        "watcher_ratio_100000_to_10": round(watcher_ratio, 3),
        "target_ratio": 1.5,
        "target_met": max(ratio, watcher_ratio) <= 1.5,
        "parse_tx_per_second": round(parse_rate),
        "results": results,
        "watcher": watcher,
        "detection": detection,
    }
    out = args.out or ROOT / "bench" / "results" / (
        "btc_watch.quick.json" if args.quick else "btc_watch.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
