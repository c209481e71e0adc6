"""docs/operations.md, run: every command block in order, each host on a root of its own.

The commands are read from the document itself, so the document cannot drift from what
works. Each ```sh block starts with ``# on HOST``; it runs with bash (``-euo pipefail``)
in one shared working directory (where the release wheel and ``deploy/`` lie, and where
files handed from host to host are left), with these changes and no others:

- absolute paths under the prefixes in :data:`HOST_PATHS` point into ``<sandbox>/<host>``;
- the example names point to loopback: controllers to ``localhost`` on ports of their
  own, the databases to PostgreSQL servers started here as the tests start theirs;
- what only root on a real host may do is played by stand-ins first on ``PATH``:
  ``useradd``, ``chown``, ``chgrp`` (nothing to do: one user runs everything here),
  ``sudo`` (runs the command; as PostgreSQL's own user for ``-u postgres``) and
  ``systemctl`` (runs a unit's ``ExecStart`` from the file the document installed, with
  the same path mapping, and PostgreSQL's cluster unit);
- pip finds polyfleet's dependencies in this checkout's environment (no network).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from polyfleet.controller.store.local_postgres import LocalPostgres, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
HOST_MARK = re.compile(r"^# on ([a-z0-9.-]+)")
#: Absolute paths that live on the host a block runs on.
HOST_PATHS = (
    "/etc/polyfleet",
    "/etc/systemd/system",
    "/etc/prometheus",
    "/opt/polyfleet",
    "/var/lib/polyfleet-controller",
    "/var/lib/polyfleet-agent",
    "/var/backups/polyfleet",
    "/var/lib/postgresql",
)
CONTROLLERS = ("ctl-a.example.com", "ctl-b.example.com")
DATABASES = ("db-1.example.com", "db-2.example.com")
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    section: str
    host: str
    script: str
    line: int


def doc_blocks(text: str) -> list[Block]:
    """Every ```sh block of the document, with its section and host."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#") and not line.startswith("# on"):
            section = line.lstrip("#").strip()
        if line.strip() == "```sh":
            start = index + 1
            end = lines.index("```", start)
            body = lines[start:end]
            mark = HOST_MARK.match(body[0]) if body else None
            assert mark, f"docs/operations.md line {start}: a block starts with '# on HOST'"
            blocks.append(Block(section, mark.group(1), "\n".join(body) + "\n", start + 1))
            index = end
        index += 1
    return blocks


def host_folder(host: str) -> str:
    """The folder of a host's root: its name without dots, so no rewrite of names touches it."""
    return host.replace(".", "_")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


SUDO = r"""#!/usr/bin/env bash
# sudo, played: run the command; as PostgreSQL's own user for -u postgres (when root).
user=""
while [ $# -gt 0 ]; do
    case "$1" in
        -u) user="$2"; shift 2 ;;
        -E|-H) shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
assignments=()
while [ $# -gt 0 ] && [[ "$1" == [A-Za-z_]*=* ]]; do assignments+=("$1"); shift; done
if [ "$user" = "postgres" ] && [ "$(id -u)" = 0 ] && [ -n "${DOC_PG_OS_USER:-}" ]; then
    cd /
    exec runuser -u "$DOC_PG_OS_USER" -- env "${assignments[@]}" "$@"
fi
exec env "${assignments[@]}" "$@"
"""

NOTHING = """#!/usr/bin/env bash
# played: one user runs everything here, so there is nothing to do.
exit 0
"""

OWNERSHIP = r"""#!/usr/bin/env bash
# {name}, played: for a user this system has (PostgreSQL's), done; for the others
# (polyfleet's service users, which the sandbox does not create), nothing to do.
args=("$@")
for arg in "${{args[@]}}"; do
    case "$arg" in -*) continue ;; esac
    owner="${{arg%%[:.]*}}"
    if [ -n "$owner" ] && getent passwd "$owner" >/dev/null && [ "$(id -u)" = 0 ]; then
        exec /bin/{name} "$@"
    fi
    exit 0
done
exit 0
"""

SYSTEMCTL = r'''#!{python}
"""systemctl, played: units from the host's /etc/systemd/system, run as plain processes."""
import os, re, signal, subprocess, sys, time
from pathlib import Path

root = Path(os.environ["DOC_HOST_ROOT"])
prefixes = os.environ["DOC_HOST_PATHS"].split(":")


def mapped(text):
    for prefix in prefixes:
        text = re.sub(r"(?<![\w/.-])" + re.escape(prefix), str(root) + prefix, text)
    return text


def pid_file(unit):
    return root / "run" / f"{{unit}}.pid"


def running(unit):
    path = pid_file(unit)
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def pg(action, unit):
    data = root / "var/lib/postgresql/15/main"
    bin_dir = os.environ["POLYFLEET_PG_BIN"]
    user = os.environ.get("DOC_PG_OS_USER")
    prefix = ["runuser", "-u", user, "--"] if user and os.getuid() == 0 else []
    if action == "stop":
        if (data / "postmaster.pid").exists():
            stop = [f"{{bin_dir}}/pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w"]
            subprocess.run(prefix + stop, check=True)
        return
    sockets = root / "run"
    options = (f"-c port={{os.environ['DOC_PG_PORT']}} -c listen_addresses=127.0.0.1 "
               f"-c unix_socket_directories={{sockets}}")
    subprocess.run(prefix + [f"{{bin_dir}}/pg_ctl", "start", "-D", str(data), "-w", "-o", options,
                    "-l", str(root / "run" / "postgresql.log")], check=True)


def start(unit):
    if unit.startswith("postgresql@"):
        return pg("start", unit)
    if running(unit):
        return
    text = (root / "etc/systemd/system" / f"{{unit}}.service").read_text()
    command = mapped(re.search(r"^ExecStart=(.*)$", text, re.M).group(1)).split()
    state = re.search(r"^StateDirectory=(.*)$", text, re.M)
    if state:
        (root / "var/lib" / state.group(1).strip()).mkdir(parents=True, exist_ok=True, mode=0o700)
    log = open(root / "run" / f"{{unit}}.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                               cwd=root, start_new_session=True)
    pid_file(unit).write_text(str(process.pid))


def stop(unit):
    if unit.startswith("postgresql@"):
        return pg("stop", unit)
    pid = running(unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while running(unit) and time.monotonic() < deadline:
        time.sleep(0.1)  # waits-for: the unit to exit after SIGTERM
    if running(unit):
        os.kill(pid, signal.SIGKILL)


(root / "run").mkdir(parents=True, exist_ok=True)
args = [arg for arg in sys.argv[1:] if arg not in ("--now", "--quiet")]
action, units = args[0], args[1:]
for unit in units:
    unit = unit.removesuffix(".service")
    if action in ("start", "enable"):
        start(unit)
    elif action == "stop":
        stop(unit)
    elif action == "restart":
        stop(unit)
        start(unit)
    elif action == "is-active":
        sys.exit(0 if running(unit) else 3)
sys.exit(0)
'''


@dataclass
class Sandbox:
    """Roots of the hosts, the shared working directory and the databases."""

    root: Path
    work: Path
    ports: dict[str, int]
    primary: LocalPostgres

    def host_root(self, host: str) -> Path:
        """The host's root (:func:`host_folder`), with the folders a fresh Debian host has."""
        path = self.root / host_folder(host)
        if not path.exists():
            path.mkdir()
            path.chmod(0o755)
            (path / "etc/systemd/system").mkdir(parents=True)
            (path / "home").mkdir()
        return path

    def rewrite(self, block: Block) -> str:
        text = block.script
        for prefix in HOST_PATHS:
            text = re.sub(
                r"(?<![\w/.-])" + re.escape(prefix), str(self.host_root(block.host)) + prefix, text
            )
        for host in CONTROLLERS:
            text = text.replace(f"{host}:8443", f"localhost:{self.ports[host]}")
            text = text.replace(host, "localhost")
        for host in DATABASES:
            text = text.replace(f"{host}:5432", f"127.0.0.1:{self.ports[host]}")
        if block.host in CONTROLLERS:
            text = text.replace('"0.0.0.0:8443"', f'"127.0.0.1:{self.ports[block.host]}"')
        return text

    def environment(self, block: Block, stubs: Path) -> dict[str, str]:
        venv_bin = Path(sys.executable).parent
        env = {
            **os.environ,
            "PATH": f"{stubs}:{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.host_root(block.host) / "home"),
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONPATH": sysconfig.get_paths()["purelib"],
            "DOC_HOST_ROOT": str(self.host_root(block.host)),
            "DOC_HOST_PATHS": ":".join(HOST_PATHS),
            "POLYFLEET_PG_BIN": str(find_bin_dir()),
        }
        if self.primary.user is not None:
            env["DOC_PG_OS_USER"] = self.primary.user.pw_name
        if block.host in DATABASES:
            env.update(
                PGHOST="127.0.0.1",
                PGPORT=str(self.ports[block.host]),
                PGUSER="postgres",
                PGPASSWORD=self.primary.password,
                PGDATABASE="postgres",
                DOC_PG_PORT=str(self.ports[block.host]),
            )
        return env


def make_stubs(directory: Path) -> Path:
    directory.mkdir()
    for name, text in {
        "sudo": SUDO,
        "useradd": NOTHING,
        "chown": OWNERSHIP.format(name="chown"),
        "chgrp": OWNERSHIP.format(name="chgrp"),
        "systemctl": SYSTEMCTL.format(python=sys.executable),
    }.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="polyfleet-doc-"))
    root.chmod(0o755)
    primary = LocalPostgres.start()
    try:
        work = root / "work"
        work.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--wheel-dir",
                str(work),
                str(REPO),
            ],
            check=True,
            timeout=600,
        )
        shutil.copytree(REPO / "deploy", work / "deploy")
        ports = {host: free_port() for host in CONTROLLERS}
        ports[DATABASES[0]] = primary.port
        ports[DATABASES[1]] = free_port()
        box = Sandbox(root, work, ports, primary)
        # db-1's cluster is the server started here; db-2 has an empty cluster folder
        # owned by PostgreSQL's user, as a fresh Debian install leaves it.
        clusters = box.host_root(DATABASES[0]) / "var/lib/postgresql/15"
        clusters.mkdir(parents=True)
        (clusters / "main").symlink_to(primary.data_dir)
        replica = box.host_root(DATABASES[1]) / "var/lib/postgresql/15"
        replica.mkdir(parents=True)
        for host in DATABASES:
            (box.host_root(host) / "run").mkdir(exist_ok=True)
            (box.host_root(host) / "var/backups").mkdir(parents=True, exist_ok=True)
        if primary.user is not None:
            for path in (replica, box.host_root(DATABASES[1]) / "run"):
                os.chown(path, primary.user.pw_uid, primary.user.pw_gid)
            for parent in (replica.parent, replica.parent.parent, replica.parent.parent.parent):
                parent.chmod(0o755)
        yield box
    finally:
        for pid_file in root.glob("*/run/*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.killpg(int(pid_file.read_text()), 9)
        replica_data = root / host_folder(DATABASES[1]) / "var/lib/postgresql/15/main"
        if (replica_data / "postmaster.pid").exists():
            command = [str(find_bin_dir() / "pg_ctl"), "stop", "-D", str(replica_data)]
            if primary.user is not None:
                command = ["runuser", "-u", primary.user.pw_name, "--", *command]
            subprocess.run([*command, "-m", "immediate"], check=False, capture_output=True)
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_block(box: Sandbox, block: Block, stubs: Path) -> str:
    script = box.rewrite(block)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=box.work,
        env=box.environment(block, stubs),
        capture_output=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    if result.returncode != 0:
        logs = "".join(
            f"\n--- {log}\n{log.read_text(errors='replace')[-3000:]}"
            for log in box.root.glob("*/run/*.log")
        )
        raise AssertionError(
            f"docs/operations.md line {block.line} ({block.section}, on {block.host}) "
            f"failed with {result.returncode}:\n{script}\n{output[-4000:]}{logs}"
        )
    return output


@pytest.mark.timeout(BLOCK_TIMEOUT_S * 3)
@pytest.mark.expected_seconds(90)
def test_every_command_of_the_operations_guide_works(sandbox: Sandbox) -> None:
    """The operations guide's commands, run in order, install, secure, watch, back up,
    move to PostgreSQL, fail over and upgrade a working fleet."""
    blocks = doc_blocks(DOC.read_text(encoding="utf-8"))
    sections = {block.section for block in blocks}
    for wanted in (
        "Installing the controller",
        "TLS for the controller's listener",
        "Installing an agent",
        "Prometheus",
        "The embedded store",
        "Moving to PostgreSQL",
        "The PostgreSQL store",
        "Two controllers on PostgreSQL, with a replica",
        "Upgrading",
    ):
        assert wanted in sections, wanted
    stubs = make_stubs(sandbox.root / "stubs")
    outputs = [run_block(sandbox, block, stubs) for block in blocks]
    assert outputs

    # What the guide promised holds: both controllers run, one of them active, and it writes.
    roles = {}
    for host in CONTROLLERS:
        answer = subprocess.run(
            [
                "curl",
                "--silent",
                "--fail",
                "--cacert",
                str(sandbox.work / "ca.crt"),
                f"https://localhost:{sandbox.ports[host]}/healthz",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        roles[host] = json.loads(answer.stdout)["role"]
    assert sorted(roles.values()) == ["active", "standby"], roles
    credential = sandbox.host_root("agent-krakow.example.com") / "var/lib/polyfleet-agent"
    assert (credential / "credential.json").exists()
    assert (
        sandbox.host_root(CONTROLLERS[0]) / "var/backups/polyfleet/controller.jsonl.gz"
    ).exists()
    metrics = DOC.read_text(encoding="utf-8").split("### What the metrics mean", 1)[1]
    documented = set(re.findall(r"^\| `(polyfleet_[a-z_]+)` \|", metrics, re.M))
    assert "polyfleet_controller_active" in documented
