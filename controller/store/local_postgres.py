"""A throwaway PostgreSQL server on loopback for tests and benchmarks, in a temporary directory.

``initdb`` and ``postgres`` from the system's packages (Debian's ``postgresql``: found under
``/usr/lib/postgresql/<version>/bin``, or where ``POLYFLEET_PG_BIN`` points) run as an
unprivileged user: the calling user, or when that is root (PostgreSQL refuses to run as
root) ``POLYFLEET_PG_USER``, else ``postgres``, else ``nobody``. The server listens on
127.0.0.1 only, on a free port, with a password for its one role; nothing outside the
temporary directory is touched.

Usage::

    server = LocalPostgres.start()
    url = server.create_database("t1")      # postgresql://polyfleet:...@127.0.0.1:PORT/t1
    server.restart(mode="immediate")          # as a crash would
    server.stop()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROLE = "postgres"
#: How long a start may take before it counts as failed.
START_TIMEOUT_S = 60.0
#: Unprivileged users tried, in order, when the caller is root.
FALLBACK_USERS = ("postgres", "nobody")

StopMode = Literal["smart", "fast", "immediate"]


class LocalPostgresError(RuntimeError):
    """The local server could not be set up or started; the message says what is missing."""


def find_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: POLYFLEET_PG_BIN, else the newest installed."""
    given = os.environ.get("POLYFLEET_PG_BIN")
    candidates = [Path(given)] if given else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = [path for path in root.iterdir() if path.name.isdigit()]
        candidates += [path / "bin" for path in sorted(versions, key=lambda p: -int(p.name))]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise LocalPostgresError(
        "no PostgreSQL server binaries found (initdb, postgres): install Debian's "
        "'postgresql' package or set POLYFLEET_PG_BIN to their directory"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["POLYFLEET_PG_USER"]] if os.environ.get("POLYFLEET_PG_USER") else []
    for name in [*names, *FALLBACK_USERS]:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LocalPostgresError(
        f"running as root, and none of the users {', '.join(FALLBACK_USERS)} exists to run "
        "PostgreSQL; create one or set POLYFLEET_PG_USER"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LocalPostgres:
    """A running server; ``url(database)`` connects to it as its one (super)user."""

    directory: Path
    bin_dir: Path
    port: int
    password: str
    fsync: bool
    user: pwd.struct_passwd | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, *, fsync: bool = False) -> LocalPostgres:
        """initdb into a new temporary directory and start the server.

        ``fsync=False`` suits tests (a crash of the machine is not what they exercise, and it
        makes creating databases fast); benchmarks keep it on, as a real server has it.
        """
        bin_dir = find_bin_dir()
        user = _server_user()
        directory = Path(tempfile.mkdtemp(prefix="polyfleet-pg-"))
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
        server = cls(
            directory=directory,
            bin_dir=bin_dir,
            port=0,
            password=secrets.token_urlsafe(18),
            fsync=fsync,
            user=user,
        )
        try:
            server._initdb()
            server._launch()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _as_server_user(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        pwfile.chmod(0o600)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--no-sync",
                "-D",
                str(self.data_dir),
                "-U",
                ROLE,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            cwd=self.directory,
            check=False,
            **self._as_server_user(),  # type: ignore[call-overload]
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise LocalPostgresError(
                f"initdb failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
            )
        # In the configuration file, not on the command line: a replica made from this
        # cluster by a base backup gets them too (a replica refuses lower limits).
        settings = {
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# polyfleet's local server\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())

    def _launch(self) -> None:
        for _ in range(5):
            self.port = _free_port()
            if self._try_launch():
                return
        raise LocalPostgresError(f"PostgreSQL did not start; see {self.log_file}")

    def _try_launch(self) -> bool:
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        try:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
                **self._as_server_user(),  # type: ignore[call-overload]
            )
        finally:
            log.close()
        if self.user is not None:
            os.chown(self.log_file, self.user.pw_uid, self.user.pw_gid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if self._ready():
                return True
            time.sleep(0.05)  # waits-for: the server to accept connections
        raise LocalPostgresError(f"PostgreSQL did not accept connections; see {self.log_file}")

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return result.returncode == 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def pause(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its data (``immediate``: as a crash would)."""
        if self._process is None:
            return
        result = subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"],
            capture_output=True,
            check=False,
            **self._as_server_user(),  # type: ignore[call-overload]
        )
        if result.returncode != 0 and self._process.poll() is None:
            self._process.kill()
        self._process.wait(timeout=60)
        self._process = None

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        if not self._try_launch():
            raise LocalPostgresError(f"PostgreSQL did not start again; see {self.log_file}")

    def restart(self, mode: StopMode = "fast") -> None:
        self.pause(mode)
        self.resume()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with ``psql`` (one statement or several); its output, unaligned."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalPostgresError(f"psql failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        with contextlib.suppress(Exception):
            self.pause("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
