"""The wheel alone runs the demo: built once, installed into a fresh virtual environment."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_testkit import DemoRun, running_demo

ROOT = Path(__file__).resolve().parents[2]
#: Top-level folders of the checkout named like the packages, and the package itself.
SHADOWING = ("agent", "controller", "shared", "simulator", "polyfleet")


@dataclass(frozen=True)
class Installed:
    """A fresh virtual environment holding polyfleet from its wheel, and that wheel."""

    venv: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "polyfleet")]


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from the checkout, installed alone into a new virtual environment.

    Built once per test run, by whichever worker asks first (a lock in the run's shared
    temporary folder). The third-party dependencies come from this run's own environment
    through a path file, as tests reach no package registry; polyfleet comes only from
    the wheel.
    """
    # The run's own temporary folder: with xdist, the parent of the worker's one (without,
    # that parent is shared by every run of this user, and would hand out an old wheel).
    run_root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        run_root = run_root.parent
    shared = run_root / "polyfleet-wheel"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "installed").exists():
            _build_and_install(shared)
            (shared / "installed").touch()
    (wheel,) = (shared / "dist").glob("polyfleet-*.whl")
    return Installed(shared / "venv", wheel)


def _build_and_install(work: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True, capture_output=True, cwd=work, timeout=600,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("polyfleet-*.whl")
    venv = work / "venv"
    # Without a pip of its own (making one takes seconds): this environment's pip installs
    # into it, as its own would.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    python = str(venv / "bin" / "python")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, cwd=work, timeout=300,
    )  # fmt: skip
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = subprocess.run(
        [python, "-c", purelib], check=True, capture_output=True, text=True
    ).stdout.strip()
    # Only the dependencies: the .pth files in that folder (the checkout's editable hook)
    # are not read, as Python reads them only in its own site folders.
    (Path(site_packages) / "polyfleet-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )


def _stop_cleanly(demo: DemoRun) -> None:
    demo.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert demo.process.wait(timeout=120) == 0
    output = demo.output.read_text("utf-8")
    assert "demo stopped cleanly" in output and "Traceback" not in output, output[-3000:]


def test_the_wheel_lacked_files_the_commands_read(installed: Installed) -> None:
    """Every file of the packages that is not Python (demo inputs, catalogues, pages) ships."""
    listed = subprocess.run(
        ["git", "ls-files", *SHADOWING, "deploy/examples"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    wanted = set()
    for path in listed:
        if path.endswith(".py") or (ROOT / path).is_symlink():
            continue
        if path.startswith("deploy/examples/"):
            wanted.add(path.replace("deploy/examples/", "polyfleet/examples/", 1))
        else:
            wanted.add(path if path.startswith("polyfleet/") else f"polyfleet/{path}")
    assert {"polyfleet/examples/fleet-demo.toml", "polyfleet/examples/assets-demo.csv"} <= wanted
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        assert wanted <= names, sorted(wanted - names)
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in wheel.read(metadata).decode()
        licence = next(name for name in names if name.endswith(".dist-info/licenses/LICENSE"))
        assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()


@pytest.mark.timeout(900)
@pytest.mark.expected_seconds(45)
def test_a_wheel_could_not_run_the_demo(installed: Installed, tmp_path: Path) -> None:
    """polyfleet demo from the wheel alone, elsewhere, beside folders named agent, controller,
    shared, simulator and polyfleet: the controller answers, devices report, nothing of
    those folders is imported."""
    show = "import json, polyfleet, sys; print(json.dumps([polyfleet.__file__, sys.path]))"
    where = subprocess.run(
        [str(installed.python), "-c", show], check=True, capture_output=True, text=True,
        cwd=tmp_path,
    ).stdout  # fmt: skip
    package, path = json.loads(where)
    assert package.startswith(str(installed.venv)), package
    # The checkout is nowhere on the path (its environment's dependencies are, see above).
    dependencies = sysconfig.get_paths()["purelib"]
    assert not [p for p in path if p.startswith(str(ROOT)) and p != dependencies], path
    # Folders named like the packages in the working directory change nothing (one demo run
    # checks both: each run costs the suite some twenty seconds).
    for name in SHADOWING:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('the folder {name}/ of the working directory was imported')\n",
            encoding="utf-8",
        )
    data_dir = tmp_path / "polyfleet-demo"
    with running_demo(installed.command, data_dir, cwd=tmp_path, seconds=900) as demo:
        # The admin token comes from a child process (polyfleet controller token create).
        assert demo.info["admin_token"].startswith("pft_")
        devices = demo.wait_for_devices(20)
        assert {d["model"] for d in devices} >= {"studio_x30", "studio_x50", "g7500"}
        sites = {site["id"] for site in demo.api("/api/v1/sites")["sites"]}
        assert sites == {"krakow", "warszawa", "gdansk"}
        assert demo.api("/api/v1/assets")["assets"]  # the shipped registry was imported
        # The dashboard's pages and files come from the wheel too.
        with urllib.request.urlopen(demo.info["url"] + "/") as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        _stop_cleanly(demo)
    assert "was imported" not in demo.output.read_text("utf-8")
