"""Every benchmark in bench/, one after another, and one table of where the project stands.

Each benchmark runs as its own process (`python bench/<name>.py [--quick]`), writes its JSON to
bench/results/, and is read back here for the figures that have a target in docs/performance.md. The
table marks each target met or missed; bench/results/latest.json holds the same rows, each benchmark's
exit status and wall time, and the commit measured.

    python bench/run.py             # full size (about an hour on 2 cores; the city day alone ~15 min)
    python bench/run.py --quick     # CI: every benchmark small; fails only on errors, never on timing
    python bench/run.py --only api_latency webhooks    # some of them (the others keep their latest entry)

Full-size runs want a quiet machine: the figures are wall-clock and CPU on 2 shared cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True, slots=True)
class Measure:
    """One figure of a benchmark, with its target when docs/performance.md sets one."""

    benchmark: str
    name: str
    value: float | None
    unit: str
    target: str = ""  # e.g. ">= 0.5", "<= 300"; empty: reported, no target
    met: bool | None = None  # None: no target, not judged at this size, or not measured


def _judge(value: float | None, target: str) -> bool | None:
    if value is None or not target:
        return None
    op, _, bound = target.partition(" ")
    return value >= float(bound) if op == ">=" else value <= float(bound)


def _m(benchmark: str, name: str, value: Any, unit: str, target: str = "", judged: bool = True) -> Measure:
    number = None if value is None else float(value)
    return Measure(benchmark, name, number, unit, target, _judge(number, target) if judged else None)


def _get(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


# -- what each benchmark's JSON holds ----------------------------------------------------------------


def _api_create(d: dict[str, Any], full: bool) -> list[Measure]:
    b = "api_create"
    out = [
        _m(b, "durable creates/s", _get(d, "durable.rps"), "req/s"),
        _m(b, "bare handler req/s", _get(d, "bare.rps"), "req/s"),
        _m(b, "durable / bare throughput", d.get("ratio_durable_to_bare"), "x", ">= 0.5", full),
        _m(b, "durable create p99 at saturation", _get(d, "durable.p99_ms"), "ms"),
    ]
    medians = _get(d, "processes.medians") or {}
    for row in ("sqlite x1", "postgresql x1", "postgresql x2"):
        if row in medians:
            out.append(
                _m(
                    b,
                    f"{row}: creates per gateway CPU-second",
                    medians[row]["creates_per_cpu_second"],
                    "/cpu-s",
                )
            )
    ratio = _get(d, "processes.ratio_2_to_1_per_cpu_second")
    out.append(_m(b, "postgresql x2 / x1 per gateway CPU-second", ratio, "x", ">= 0.9", full))
    return out


def _api_latency(d: dict[str, Any], full: bool) -> list[Measure]:
    judged = full and d.get("target_met") is not None
    return [
        _m(
            "api_latency",
            f"{op} p{q} at {d.get('rate', 0):.0f} req/s",
            _get(d, f"{op}.p{q}_ms"),
            "ms",
            t,
            judged,
        )
        for op in ("create", "read")
        for q, t in (("50", ""), ("99", "<= 100"))
    ]


def _store_floor(d: dict[str, Any], full: bool) -> list[Measure]:
    return [_m("store_floor", "SQLite rows of one create alone", d.get("invoices_per_second"), "creates/s")]


def _btc_watch(d: dict[str, Any], full: bool) -> list[Measure]:
    b = "btc_watch"
    return [
        _m(
            b,
            "block parse+match, 100,000 / 10 watched scripts",
            d.get("ratio_100000_to_10"),
            "x",
            "<= 1.5",
            full,
        ),
        _m(
            b,
            "whole watcher, 100,000 / 10 watched scripts",
            d.get("watcher_ratio_100000_to_10"),
            "x",
            "<= 1.5",
            full,
        ),
        _m(b, "raw transaction parse rate", d.get("parse_tx_per_second"), "tx/s"),
        _m(b, "detection p99 (poll 1 s)", _get(d, "detection.p99_ms"), "ms", "<= 1200", full),
    ]


def _eth_watch(d: dict[str, Any], full: bool) -> list[Measure]:
    b = "eth_watch"
    return [
        _m(
            b,
            "block through the watcher, 100,000 / 10 watched",
            d.get("ratio_100000_to_10"),
            "x",
            "<= 1.5",
            full,
        ),
        _m(b, "detection p99 (poll 1 s)", _get(d, "detection.p99_ms"), "ms", "<= 1200", full),
    ]


def _webhooks(d: dict[str, Any], full: bool) -> list[Measure]:
    b = "webhooks"
    return [
        _m(b, "deliveries per second", _get(d, "throughput.per_second"), "/s", ">= 1000", full),
        _m(b, "state change to receiver p99", _get(d, "latency.p99_ms"), "ms", "<= 200", full),
    ]


def _city_day(d: dict[str, Any], full: bool) -> list[Measure]:
    judged = full and bool(_get(d, "targets.applies"))
    rss = d.get("peak_rss_bytes")
    return [
        _m(
            "city_day",
            f"the day, {d.get('residents', 0):,} residents",
            d.get("day_seconds"),
            "s",
            "<= 600",
            judged,
        ),
        _m(
            "city_day",
            "peak RSS, whole process tree",
            None if rss is None else rss / 2**20,
            "MiB",
            "<= 1024",
            judged,
        ),
    ]


def _open_invoices(d: dict[str, Any], full: bool) -> list[Measure]:
    judged = full and d.get("target_met") is not None
    name = f"gateway RSS with {d.get('invoices', 0):,} open invoices"
    return [_m("open_invoices", name, d.get("gateway_worst_mb"), "MB", "<= 300", judged)]


@dataclass(frozen=True, slots=True)
class Bench:
    name: str
    extract: Callable[[dict[str, Any], bool], list[Measure]]
    result: str  # file name under bench/results (full size); quick runs write <stem>.quick.json


BENCHES = (
    Bench("api_create", _api_create, "api_create.json"),
    Bench("api_latency", _api_latency, "api_latency.json"),
    Bench("store_floor", _store_floor, "store_floor.json"),
    Bench("btc_watch", _btc_watch, "btc_watch.json"),
    Bench("eth_watch", _eth_watch, "eth_watch.json"),
    Bench("webhooks", _webhooks, "webhooks.json"),
    Bench("open_invoices", _open_invoices, "open_invoices.json"),
    Bench("city_day", _city_day, "city_day.json"),
)


def result_path(bench: Bench, quick: bool) -> Path:
    name = bench.result.replace(".json", ".quick.json") if quick else bench.result
    return RESULTS / name


def run_one(bench: Bench, quick: bool) -> dict[str, Any]:
    argv = [sys.executable, str(ROOT / "bench" / f"{bench.name}.py"), *(["--quick"] if quick else [])]
    print(f"\n== {bench.name}: {' '.join(argv[1:])}", flush=True)
    path = result_path(bench, quick)
    path.unlink(missing_ok=True)  # a stale file must not pass for this run's figures
    started = time.monotonic()
    rc = subprocess.run(argv, cwd=ROOT, check=False).returncode
    seconds = time.monotonic() - started
    measures: list[Measure] = []
    error = ""
    if path.exists():
        measures = bench.extract(json.loads(path.read_text()), not quick)
    else:
        error = f"{path.relative_to(ROOT)} was not written"
    if rc != 0:
        error = f"exit status {rc}" + (f"; {error}" if error else "")
    return {
        "benchmark": bench.name,
        "exit_status": rc,
        "seconds": round(seconds, 1),
        "error": error,
        "measures": [asdict(m) for m in measures],
    }


def verdict(measure: dict[str, Any], quick: bool) -> str:
    if not measure["target"]:
        return ""
    if measure["met"] is None:
        return "not judged (quick)" if quick else "not judged"
    return "met" if measure["met"] else "MISSED"


def print_table(runs: list[dict[str, Any]], quick: bool) -> None:
    print(f"\n{'benchmark':<14}{'measure':<52}{'value':>14}  {'target':<10}{'verdict'}")
    for run in runs:
        if run["error"]:
            print(f"{run['benchmark']:<14}{'FAILED: ' + run['error']}")
        for m in run["measures"]:
            value = "-" if m["value"] is None else f"{m['value']:,.2f}".rstrip("0").rstrip(".")
            print(
                f"{run['benchmark']:<14}{m['name']:<52}{value + ' ' + m['unit']:>14}  {m['target']:<10}"
                f"{verdict(m, quick)}"
            )
    judged = [m for run in runs for m in run["measures"] if m["met"] is not None]
    if judged:
        met = sum(1 for m in judged if m["met"])
        print(f"\ntargets met: {met} of {len(judged)}")


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every benchmark small; fail only on errors")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these")
    parser.add_argument("--out", type=Path, help="default: bench/results/latest[.quick].json")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = git_commit()
    runs = [{**run_one(bench, args.quick), "started": started, "commit": commit} for bench in chosen]
    out = args.out or RESULTS / ("latest.quick.json" if args.quick else "latest.json")
    if args.only and out.exists():
        # Some benchmarks again: the others keep their latest entries (each says when and at which commit).
        ran = {run["benchmark"] for run in runs}
        kept = [
            run for run in json.loads(out.read_text()).get("benchmarks", []) if run["benchmark"] not in ran
        ]
        order = [b.name for b in BENCHES]
        runs = sorted([*kept, *runs], key=lambda run: order.index(run["benchmark"]))
    print_table(runs, args.quick)
    report = {"quick": args.quick, "started": started, "commit": commit, "benchmarks": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [run["benchmark"] for run in runs if run["error"] and run["started"] == started]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
