"""A PostgreSQL server of a test's own: ``initdb`` and ``pg_ctl`` in a temporary directory, on a free
loopback port.

Why not the shared test server (CRYPTOCITY_TEST_PG_DSN): a test that stops and starts PostgreSQL would
take it away from every other test and session using it. This one belongs to the test alone, so the test
may stop it (``pg_ctl stop -m fast``) and start it again on the same data directory and port.

PostgreSQL refuses to run as root. When the tests run as root, the directory is handed to the ``postgres``
OS user (which the server packages create) and the server's commands run as that user (``subprocess``'s
``user=``/``group=``; no ``su``, no shell). Clients connect over TCP with ``trust``, so the gateways, which
run as the test's user, need no password.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.devnets.process import free_port

SUPERUSER = "postgres"  # the cluster's superuser (initdb -U) and, when we are root, the OS user running it
_BIN_ENV = "CRYPTOCITY_TEST_PG_BIN"  # a directory holding initdb and pg_ctl, to override the search


def find_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: CRYPTOCITY_TEST_PG_BIN, else the newest Debian-style
    /usr/lib/postgresql/<major>/bin, else PATH. None when there is no initdb."""
    candidates: list[Path] = []
    if os.environ.get(_BIN_ENV):
        candidates.append(Path(os.environ[_BIN_ENV]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        majors = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(majors, key=lambda p: int(p.name), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The OS identity the server's commands run under: ourselves, or ``postgres`` when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_server(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            account = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise RuntimeError(
                f"running as root, and there is no {SUPERUSER!r} OS user to run initdb as"
                " (PostgreSQL refuses root); create one or run the tests as another user"
            ) from None
        return cls(account.pw_uid, account.pw_gid)

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, argv: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        if self.uid is None:
            return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
        return subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LC_ALL": "C"},
        )


@dataclass
class PrivateCluster:
    """One throw-away PostgreSQL server. :meth:`create` makes and starts it; :meth:`destroy` removes it."""

    bin_dir: Path
    base: Path
    port: int
    run_as: _RunAs = field(default_factory=_RunAs)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls, bin_dir: Path) -> PrivateCluster:
        """initdb in a new directory under the system temp dir (not pytest's tmp_path: that is mode 700
        and root's, so a ``postgres`` OS user could not reach it), configure loopback only, start."""
        run_as = _RunAs.for_server()
        base = Path(tempfile.mkdtemp(prefix="cryptocity-pg-"))
        cluster = cls(bin_dir, base, free_port(), run_as)
        try:
            run_as.chown(base)
            cluster._pg(
                "initdb",
                "--pgdata",
                str(cluster.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
                timeout=120,
            )
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(cluster.port),
                "unix_socket_directories": f"'{base}'",  # never the shared server's socket directory
                "max_connections": "60",
                "shared_buffers": "32MB",
                "logging_collector": "off",
            }
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# tests/cluster/private_postgres.py\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def start(self) -> None:
        """pg_ctl start, waiting until the server accepts connections."""
        self._pg("pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log_file), "--wait")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: ``fast`` ends every session (clients see their connections closed), checkpoints and
        exits, as an operator's restart does."""
        self._pg("pg_ctl", "stop", "--pgdata", str(self.data), "--mode", mode, "--wait")

    def destroy(self) -> None:
        """Stop the server if it runs (by its own pg_ctl, else its postmaster PID) and remove the directory."""
        if self.server_pid() is not None:
            with contextlib.suppress(Exception):
                self.stop("immediate")
            pid = self.server_pid()
            if pid is not None:  # pg_ctl could not stop it: SIGKILL the postmaster (its PID, nothing else)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    def server_pid(self) -> int | None:
        """The postmaster's PID while it runs (first line of postmaster.pid), else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _pg(self, program: str, *args: str, timeout: float = 60) -> None:
        result = self.run_as.run([str(self.bin_dir / program), *args], cwd=self.base, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n--- server log ---\n{self.log()[-4000:]}"
            )
