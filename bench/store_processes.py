"""The rows of bench/api_create.py that compare stores and process counts (issue "PostgreSQL and several
processes"): durable creates on SQLite with 1 process, on PostgreSQL with 1 and with 2 processes.

Each row is real `cryptocity serve` processes (`serve --processes 2`, the supervisor and its SO_REUSEPORT
workers, for the last row), on a fresh store (a temporary SQLite file, or a fresh schema of the PostgreSQL
database, dropped afterwards), on a free loopback port, loaded by the Python client in the bench process
(bench/create_load.py) at a fixed concurrency for a fixed time.

Why CPU-normalised: on a 2-core machine the second gateway process competes for the cores with
PostgreSQL and with the load generator, so wall-clock creates/s cannot double. What several processes
must not do is make each create dearer. So each row reports the gateway's CPU seconds over the measured
window (utime+stime from /proc/<pid>/stat of every process of the gateway's tree: the workers, their
address-derivation processes, the idle supervisor) and creates per gateway CPU-second; the target is that
2 processes reach >= 0.9x of 1 process. The per-process split, the PostgreSQL backends' CPU (the pool's
sessions, found by application_name) and the load generator's CPU say where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandbox.devnets.process import free_port

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.9
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Load = Callable[[int, str, float, int, str], dict[str, Any]]  # port, key, seconds, connections, tag
MakeMerchant = Callable[[dict[str, str]], str]  # environment -> API key


@dataclass(frozen=True, slots=True)
class RowSpec:
    name: str
    store: str  # "sqlite" or "postgresql"
    processes: int


ROWS = (
    RowSpec("sqlite x1", "sqlite", 1),
    RowSpec("postgresql x1", "postgresql", 1),
    RowSpec("postgresql x2", "postgresql", 2),
)


@dataclass(slots=True)
class ProcessCpu:
    pid: int
    role: str
    cpu_seconds: float
    user_seconds: float
    system_seconds: float
    context_switches: int  # voluntary + involuntary, over the window


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one process: user and system CPU seconds, and context switches so far."""

    user: float
    system: float
    switches: int

    @property
    def cpu(self) -> float:
        return self.user + self.system


@dataclass(slots=True)
class RowResult:
    name: str
    store: str
    processes: int
    round: int
    requests: int
    errors: int
    seconds: float
    creates_per_second: float
    p50_ms: float
    p99_ms: float
    gateway_cpu_seconds: float  # the load's seconds plus the drain after it (see run_row)
    gateway_cpu_seconds_during_load: float
    drain_seconds: float
    creates_per_cpu_second: float
    client_cpu_seconds: float
    postgres_backend_cpu_seconds: float | None
    per_process: list[ProcessCpu] = field(default_factory=list)


# -- processes and their CPU ----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    return sample(pid).cpu


def sample(pid: int) -> Sample:
    """utime and stime (fields 14 and 15 of /proc/<pid>/stat) and the context switches of /proc/<pid>/status."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    switches = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            switches += int(line.split()[1])
    return Sample(int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK, switches)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/<pid>/task/<tid>/children."""
    found = [pid]
    i = 0
    while i < len(found):
        tasks = Path(f"/proc/{found[i]}/task")
        i += 1
        try:
            for task in tasks.iterdir():
                found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def tree_samples(pid: int) -> dict[int, Sample]:
    samples: dict[int, Sample] = {}
    for member in process_tree(pid):
        try:
            samples[member] = sample(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return samples


def tree_cpu(pid: int) -> dict[int, float]:
    return {member: s.cpu for member, s in tree_samples(pid).items()}


def wait_idle(pid: int, *, limit: float = 30.0, interval: float = 0.5, busy: float = 0.1) -> float:
    """Wait until the gateway's tree uses less than ``busy`` of a core over ``interval`` (its background work
    has caught up: the address pool derived, the outbox consumers through their backlog), at most ``limit``
    seconds; the seconds waited."""
    started = time.monotonic()
    before = sum(tree_cpu(pid).values())
    while time.monotonic() - started < limit:
        time.sleep(interval)
        now = sum(tree_cpu(pid).values())
        if now - before < busy * interval:
            break
        before = now
    return time.monotonic() - started


def role_of(pid: int) -> str:
    """What a process of a gateway's tree is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return "gone"
    text = b" ".join(argv).decode(errors="replace")
    if "resource_tracker" in text:
        return "resource tracker"
    if "multiprocessing" in text:
        return "address derivation"
    if "--worker" in text:
        return "gateway worker"
    if "--processes" in text:
        return "supervisor"
    if "serve" in text:
        return "gateway"
    return text[:40]


@dataclass
class Server:
    """A `cryptocity serve` (or its supervisor) started for one row; its output in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM by PID (the supervisor passes it on to its workers), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(env: dict[str, str], processes: int, log: Path, timeout: float = 60.0) -> Server:
    """Start the gateway and wait until each of its ``processes`` printed its ``listening on`` line."""
    port = free_port()
    args = ["serve", "--port", str(port)]
    if processes > 1:
        args += ["--processes", str(processes)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "sandbox.cli", *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(r"listening on http://", server.output())) >= processes:
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the gateway ({' '.join(args)}) did not start:\n{server.output()[-4000:]}")


def start_py_spy(top: int, seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy (raw collapsed stacks, GIL-holding samples only) on every serving process of the tree, for
    the load's duration: what each event loop spends its time on."""
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for pid in process_tree(top):
        if role_of(pid) not in ("gateway", "gateway worker"):
            continue
        argv = [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        argv += ["--gil", "--nonblocking", "--format", "raw", "--output", str(out / f"{pid}.txt")]
        spies.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


# -- PostgreSQL ------------------------------------------------------------------------------------------


def with_application_name(dsn: str, name: str) -> str:
    """The DSN with ``application_name`` set, so the row's pooled sessions can be found on the server."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "application_name"] + [("application_name", name)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def _backend_pids(dsn: str, application_name: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
        )
        return [int(row["pid"]) for row in rows]
    finally:
        await conn.close()


def backend_cpu(dsn: str, application_name: str) -> dict[int, float] | None:
    """CPU seconds of the server processes serving ``application_name``, or None if the server is not on
    this machine (its processes are not in our /proc)."""
    pids = asyncio.run(_backend_pids(dsn, application_name))
    cpu: dict[int, float] = {}
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() not in ("postgres", "postmaster"):
                return None
            cpu[pid] = process_cpu_seconds(pid)
        except FileNotFoundError:
            return None
    return cpu


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# -- one row ---------------------------------------------------------------------------------------------


def _delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU spent per process between two readings (a process born in between counts from zero)."""
    return {pid: after[pid] - before.get(pid, 0.0) for pid in after}


def _split(before: dict[int, Sample], after: dict[int, Sample]) -> list[ProcessCpu]:
    """Per process of the tree: CPU (user, system) and context switches between two readings."""
    zero = Sample(0.0, 0.0, 0)
    out = []
    for pid, end in sorted(after.items()):
        start = before.get(pid, zero)
        user, system = end.user - start.user, end.system - start.system
        out.append(
            ProcessCpu(
                pid,
                role_of(pid),
                round(user + system, 2),
                round(user, 2),
                round(system, 2),
                end.switches - start.switches,
            )
        )
    return out


def run_row(
    spec: RowSpec,
    base_env: dict[str, str],
    workdir: Path,
    *,
    dsn: str,
    seconds: float,
    warmup: float,
    connections: int,
    tag: str,
    load: Load,
    make_merchant: MakeMerchant,
    profile_dir: Path | None = None,
    round_no: int = 1,
) -> RowResult:
    """One row. The gateway starts and is warmed up (connections, caches, the address pool), then left to
    go idle; the CPU window opens, the load runs, and the window closes once the gateway is idle again,
    so it holds all the work the measured creates caused (the leader's outbox consumers, the pool's
    derivation refills) and none from before."""
    env = dict(base_env)
    slug = f"{spec.name.replace(' ', '-')}-r{round_no}"
    application_name = f"cc-bench-{slug}-{tag}"
    schema = ""
    if spec.store == "postgresql":
        schema = f"bench_{secrets.token_hex(5)}"
        env["CRYPTOCITY_STORE__DSN"] = with_application_name(dsn, application_name)
        env["CRYPTOCITY_STORE__SCHEMA"] = schema
    else:
        env.pop("CRYPTOCITY_STORE__DSN", None)
        env.pop("CRYPTOCITY_STORE__SCHEMA", None)
        env["CRYPTOCITY_STORE__PATH"] = str(workdir / f"{slug}.sqlite3")
    try:
        key = make_merchant(env)
        server = start_server(env, spec.processes, workdir / f"{slug}.log")
        try:
            top = server.process.pid
            load(server.port, key, warmup, connections, f"{tag}-{slug}-w")
            wait_idle(top)
            pg_before = backend_cpu(dsn, application_name) if schema else None
            gw_before = tree_samples(top)
            spies = start_py_spy(top, seconds, profile_dir / slug) if profile_dir is not None else []
            client_before = time.process_time()
            result = load(server.port, key, seconds, connections, f"{tag}-{slug}")
            client_cpu = time.process_time() - client_before
            gw_load = _split(gw_before, tree_samples(top))
            drain = wait_idle(top)
            per_process = _split(gw_before, tree_samples(top))
            pg_after = backend_cpu(dsn, application_name) if schema else None
            for spy in spies:
                spy.wait(timeout=seconds + 30)
        finally:
            server.stop()
    finally:
        if schema:
            asyncio.run(_drop_schema(dsn, schema))
    pg_cpu = None
    if pg_before is not None and pg_after is not None:
        pg_cpu = round(sum(_delta(pg_before, pg_after).values()), 2)
    gateway_cpu = sum(p.cpu_seconds for p in per_process)
    created = result["requests"] - result["errors"]
    return RowResult(
        name=spec.name,
        store=spec.store,
        processes=spec.processes,
        round=round_no,
        requests=result["requests"],
        errors=result["errors"],
        seconds=round(result["seconds"], 3),
        creates_per_second=created / result["seconds"] if result["seconds"] else 0.0,
        p50_ms=round(result["p50_ms"], 2),
        p99_ms=round(result["p99_ms"], 2),
        gateway_cpu_seconds=round(gateway_cpu, 2),
        gateway_cpu_seconds_during_load=round(sum(p.cpu_seconds for p in gw_load), 2),
        drain_seconds=round(drain, 2),
        creates_per_cpu_second=created / gateway_cpu if gateway_cpu else 0.0,
        client_cpu_seconds=round(client_cpu, 2),
        postgres_backend_cpu_seconds=pg_cpu,
        per_process=per_process,
    )


def run_rows(
    base_env: dict[str, str],
    workdir: Path,
    *,
    dsn: str,
    seconds: float,
    warmup: float,
    connections: int,
    tag: str,
    load: Load,
    make_merchant: MakeMerchant,
    profile_dir: Path | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Every row (PostgreSQL's only with a DSN) ``rounds`` times, the rows taking turns (so that a change in
    the machine's load hits them alike), and the 2-process / 1-process ratio of the median creates per
    gateway CPU-second."""
    report: dict[str, Any] = {
        "client": "python-aiohttp (in the bench process)",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "target_ratio": TARGET_RATIO,
        "rows": [],
    }
    if not dsn:
        report["skipped_postgresql"] = (
            "no PostgreSQL DSN (set CRYPTOCITY_TEST_PG_DSN or pass --pg-dsn): PostgreSQL rows skipped"
        )
    measured: dict[str, list[RowResult]] = {}
    for round_no in range(1, rounds + 1):
        for spec in ROWS:
            if spec.store == "postgresql" and not dsn:
                continue
            row = run_row(
                spec,
                base_env,
                workdir,
                dsn=dsn,
                seconds=seconds,
                warmup=warmup,
                connections=connections,
                tag=tag,
                load=load,
                make_merchant=make_merchant,
                profile_dir=profile_dir,
                round_no=round_no,
            )
            measured.setdefault(spec.name, []).append(row)
            report["rows"].append(asdict(row))
    report["medians"] = {
        name: {
            "creates_per_second": statistics.median(r.creates_per_second for r in rows),
            "creates_per_cpu_second": statistics.median(r.creates_per_cpu_second for r in rows),
            "errors": sum(r.errors for r in rows),
        }
        for name, rows in measured.items()
    }
    one, two = report["medians"].get("postgresql x1"), report["medians"].get("postgresql x2")
    if one is not None and two is not None and one["creates_per_cpu_second"]:
        ratio = two["creates_per_cpu_second"] / one["creates_per_cpu_second"]
        report["ratio_2_to_1_per_cpu_second"] = round(ratio, 3)
        report["ratio_per_round"] = [
            round(b.creates_per_cpu_second / a.creates_per_cpu_second, 3)
            if a.creates_per_cpu_second
            else None
            for a, b in zip(measured["postgresql x1"], measured["postgresql x2"], strict=True)
        ]
        report["target_met"] = ratio >= TARGET_RATIO
    else:
        report["ratio_2_to_1_per_cpu_second"] = None
        report["target_met"] = None
    return report


def print_rows(report: dict[str, Any]) -> None:
    print()
    print(
        f"durable creates by store and processes ({report['client']}, {report['connections']} connections,"
        f" {report['seconds']:.0f} s each, {report['rounds']} round(s))"
    )
    print(
        f"{'row':<15}{'round':>6}{'creates/s':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'gw cpu s':>10}"
        f"{'creates/cpu-s':>15}{'pg cpu s':>10}{'client cpu s':>14}"
    )
    for row in report["rows"]:
        pg = row["postgres_backend_cpu_seconds"]
        print(
            f"{row['name']:<15}{row['round']:>6}{row['creates_per_second']:>10.0f}{row['errors']:>8}{row['p50_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['gateway_cpu_seconds']:>10.2f}{row['creates_per_cpu_second']:>15.0f}"
            f"{'-' if pg is None else f'{pg:.2f}':>10}{row['client_cpu_seconds']:>14.2f}"
        )
        for p in row["per_process"]:
            if p["cpu_seconds"] >= 0.01:
                print(
                    f"{'':<15}{p['role']} {p['pid']}: {p['cpu_seconds']:.2f} s cpu (user {p['user_seconds']:.2f},"
                    f" system {p['system_seconds']:.2f}), {p['context_switches']} context switches"
                )
    if report["rounds"] > 1:
        for name, median in report["medians"].items():
            print(
                f"{name:<15}{'median':>6}{median['creates_per_second']:>10.0f}{median['errors']:>8}"
                f"{'':>28}{median['creates_per_cpu_second']:>15.0f}"
            )
    if "skipped_postgresql" in report:
        print(report["skipped_postgresql"])
    ratio = report["ratio_2_to_1_per_cpu_second"]
    if ratio is not None:
        verdict = "met" if report["target_met"] else "MISSED"
        rounds = ""
        if report["rounds"] > 1:
            rounds = f"; by round: {', '.join(f'{r:.2f}x' for r in report['ratio_per_round'])}"
        print(
            f"postgresql x2 / x1 creates per gateway CPU-second (medians): {ratio:.2f}x"
            f" (target >= {TARGET_RATIO}x: {verdict}){rounds}"
        )
