"""`cryptocity simulate [--residents N] [--days D] [--seed S] [--out DIR]`: the city's day, then the report.

Exit status: 0 when every reconciliation check passed, 1 when one failed (the report says which), 2 on bad
options. A progress bar shows the virtual time and live counts; a one-screen summary closes the run.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.config import Config


def add_simulate_command(subparsers: Any) -> None:
    simulate = subparsers.add_parser(
        "simulate", help="play a day of the Alatau pilot on local chains; write a report"
    )
    simulate.add_argument(
        "--residents", type=int, help="residents (default simulation.residents; 52000 = the city)"
    )
    simulate.add_argument("--days", type=int, help="virtual days (default simulation.days)")
    simulate.add_argument("--seed", type=int, help="same seed, same outcome counts (default simulation.seed)")
    simulate.add_argument("--out", type=Path, default=Path("simulation-report"), help="output folder")
    simulate.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")


def _with_options(config: Config, args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k) for k in ("residents", "days", "seed") if getattr(args, k) is not None}
    simulation = config.simulation.model_validate({**config.simulation.model_dump(), **overrides})
    return config.model_copy(update={"simulation": simulation})


async def run_simulate_command(args: argparse.Namespace, config: Config) -> int:
    from sandbox.simulation.driver import CitySimulation, SimulationStuck

    try:
        config = _with_options(config, args)
    except ValueError as exc:
        print(f"bad simulation option: {exc}")
        return 2
    from gateway.logging import configure_logging

    configure_logging("error", config.logging.format)  # the progress bar and the report say what happens
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]Alatau[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
        transient=False,
    )
    task = progress.add_task("setting up: nodes, gateway, merchants, residents", total=None)

    def show(state: Any, done: int, total: int) -> None:
        c = state.counters
        progress.update(
            task,
            total=total,
            completed=done,
            description=(
                f"invoices {c.get('invoices', 0)} · paid BTC {c.get('btc_payments', 0)} ETH/USDT "
                f"{c.get('eth_payments', 0)} · refused {c.get('refused_cap', 0) + c.get('refused_rates', 0)}"
            ),
        )

    simulation = CitySimulation(config, args.out.resolve(), progress=show)
    with progress:
        try:
            figures = await simulation.run()
        except SimulationStuck as exc:
            console.print(f"[red]simulation stuck:[/red] {exc}")
            return 1
    _summary(Console(), figures, args.out.resolve())
    return 0 if figures["ok"] else 1


def _summary(console: Console, figures: dict[str, Any], out: Path) -> None:
    run = figures["run"]
    table = Table(title="Alatau CryptoCity, simulated", show_header=False)
    rss = run["peak_rss_bytes"]
    for label, value in (
        ("residents · merchants · days", f"{run['residents']} · {run['merchants']} · {run['days']}"),
        ("purchases planned", figures["plan"]["purchases"]),
        ("invoices by status", figures["invoices"]["by_status"]),
        ("held by reason", figures["sandbox"]["payments"]["held_by_reason"]),
        ("accepted volume", f"{figures['sandbox']['volume']['total_tiyn'] / 100:,.2f} KZT"),
        (
            "webhooks received · duplicates",
            f"{figures['webhooks']['received']} · {figures['webhooks']['duplicates']}",
        ),
        ("wall time (set-up excluded)", f"{run['play_seconds']} s, {run['payments_per_second']} payments/s"),
        ("peak RSS, whole process tree", "unavailable" if rss is None else f"{rss / 2**20:,.0f} MiB"),
    ):
        table.add_row(label, str(value))
    for check in figures["reconciliation"]:
        mark = "[green]passed[/green]" if check["ok"] else "[red]FAILED[/red]"
        table.add_row(check["name"], f"{mark} {check['detail']}")
    console.print(table)
    console.print(
        f"report: {out / 'report.html'}   figures: {out / 'summary.json'}   exports: {out / 'exports'}"
    )


def simulate(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(run_simulate_command(args, config))
