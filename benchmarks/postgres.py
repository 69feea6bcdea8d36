"""A throwaway PostgreSQL server for the DuckLake tests and benchmark: Debian's binaries, a temp directory.

The server listens only on a Unix socket in its own temporary directory (no TCP, so
trust authentication reaches nobody else) and is stopped and deleted by ``stop``.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user the
Debian package creates. ``scripts/system-deps.sh`` installs the package.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = "install Debian's postgresql package: scripts/system-deps.sh (scripts/test.sh runs it)"


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest PostgreSQL server binaries on this machine."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {INSTALL_HINT}"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self, user: str = "persona"):
        self.user = user
        self.bindir = find_bindir()
        self.run_as: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and there is no 'postgres' user to run the server as; {INSTALL_HINT}"
                ) from None
            self.run_as = ["runuser", "-u", "postgres", "--"]
        # Under /tmp, not pytest's tmp_path: that is private to root, and the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="persona-postgres-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.port = _free_port()
        self.started = False

    def _run(self, *argv: str) -> None:
        result = subprocess.run([*self.run_as, *argv], capture_output=True, text=True)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise PostgresUnavailable(f"{' '.join(argv[:2])} failed: {result.stderr.strip()}\n{log[-2000:]}")

    def start(self) -> PostgresServer:
        self.socket_dir.mkdir()
        if self.owner:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' -c max_connections=200"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.user,
            name,
        )
        return self.dsn(name)

    def dsn(self, database: str) -> str:
        """A libpq connection string for ``database`` over the server's socket."""
        return f"dbname={database} host={self.socket_dir} port={self.port} user={self.user}"

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True,
            )
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
