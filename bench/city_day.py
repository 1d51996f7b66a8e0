"""The city's day as a benchmark: the simulation at full size, timed and measured.

Runs `cryptocity simulate` (sandbox/simulation) for one day and reports wall time of the day (set-up
excluded: nodes, funding, registration), payments per second end to end, peak RSS summed over the whole
process tree (driver, gateway, shops, bcoin, anvil; sampled from /proc every 0.5 s), where the day's time
went (paying, mining, waiting for the gateway at each step, the reconciliation scan), and whether every
reconciliation check passed. Targets (full city, 2 cores): <= 10 minutes and <= 1 GiB.

    python bench/city_day.py                    # the full city: 52,000 residents, one day
    python bench/city_day.py --residents 2000   # any size
    python bench/city_day.py --quick            # CI: 150 residents; fails only on errors

Writes bench/results/city_day.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402
from sandbox.simulation.driver import CitySimulation  # noqa: E402

TARGET_SECONDS = 600.0
TARGET_RSS_BYTES = 1 << 30


def _table(result: dict[str, Any]) -> str:
    rss = result["peak_rss_bytes"]
    rows = [
        ("residents", f"{result['residents']:,}"),
        ("purchases planned", f"{result['purchases']:,}"),
        ("payments made", f"{result['payments']:,}"),
        ("set-up (excluded)", f"{result['setup_seconds']:.0f} s"),
        (
            "wall time of the day",
            f"{result['day_seconds']:.0f} s (target <= {TARGET_SECONDS:.0f} s at full size)",
        ),
        ("payments per second", f"{result['payments_per_second']:.2f}"),
        ("peak RSS, process tree", "n/a" if rss is None else f"{rss / 2**20:,.0f} MiB (target <= 1,024 MiB)"),
        *((f"  time: {name}", f"{seconds:.1f} s") for name, seconds in result["breakdown"].items()),
        ("reconciliation", "all passed" if result["ok"] else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


async def run(residents: int, out: Path) -> dict[str, Any]:
    config = load_config(ROOT / "config.toml", environ={"CRYPTOCITY_SIMULATION__RESIDENTS": str(residents)})
    figures = await CitySimulation(config, out).run()
    run_figures = figures["run"]
    paid = figures["purchases"]["counters"].get("btc_payments", 0)
    paid += figures["purchases"]["counters"].get("eth_payments", 0)
    full = residents >= 52_000
    return {
        "residents": residents,
        "purchases": figures["plan"]["purchases"],
        "payments": paid,
        "setup_seconds": run_figures["setup_seconds"],
        "day_seconds": run_figures["play_seconds"],
        "payments_per_second": run_figures["payments_per_second"],
        "peak_rss_bytes": run_figures["peak_rss_bytes"],
        "breakdown": run_figures["play_breakdown_seconds"],
        "ok": figures["ok"],
        "targets": {
            "day_seconds_max": TARGET_SECONDS,
            "peak_rss_bytes_max": TARGET_RSS_BYTES,
            "applies": full,
            "met": None
            if not full
            else run_figures["play_seconds"] <= TARGET_SECONDS
            and (run_figures["peak_rss_bytes"] or 0) <= TARGET_RSS_BYTES,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--residents", type=int, default=52_000)
    parser.add_argument("--quick", action="store_true", help="150 residents (CI); fails only on errors")
    parser.add_argument("--out", type=Path, help="keep the run's report here (default: a temporary folder)")
    args = parser.parse_args()
    residents = 150 if args.quick else args.residents
    configure_logging("error", "json")
    with tempfile.TemporaryDirectory(prefix="city-day-") as scratch:
        result = asyncio.run(run(residents, args.out or Path(scratch) / "city"))
    print(_table(result))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    name = "city_day.quick.json" if args.quick else "city_day.json"  # a quick run keeps the full figures
    (results / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
