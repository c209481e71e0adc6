"""The README's demo examples, run as written against a running demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cli_testkit import running_demo

from polyfleet.shared.process import polyfleet_argv

ROOT = Path(__file__).resolve().parents[2]
MARK = "=== next command ==="


def readme_demo_commands() -> list[str]:
    """The shell block after "Try, while it runs", one command per item (continuations joined)."""
    text = (ROOT / "README.md").read_text("utf-8")
    after = text[text.index("Try, while it runs") :]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None
    return block.group(1).replace("\\\n", " ").strip().splitlines()


@pytest.mark.timeout(900)
@pytest.mark.expected_seconds(25)
def test_readme_examples_missed_the_demo_and_its_lab(tmp_path: Path) -> None:
    """Every README demo example works against a demo whose ports are not the usual ones."""
    commands = readme_demo_commands()
    assert all("8080" not in command for command in commands)
    # The README is read from the repository: .venv/bin/polyfleet and ./polyfleet-demo.
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "polyfleet").symlink_to(Path(sys.executable).parent / "polyfleet")
    with running_demo(polyfleet_argv(), tmp_path / "polyfleet-demo", cwd=tmp_path) as demo:
        with urllib.request.urlopen(demo.info["lab_control_url"] + "/devices") as response:
            lab = json.loads(response.read())["devices"]
        expected = demo.wait_for_devices(len(lab))
        script = "set -eu\n" + "".join(f"{command}\necho '{MARK}'\n" for command in commands)
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr
    outputs = done.stdout.split(MARK + "\n")
    assert len(outputs) == len(commands) + 1 and outputs[-1] == ""

    def output_of(fragment: str) -> str:
        (index,) = [i for i, command in enumerate(commands) if fragment in command]
        return outputs[index]

    devices = json.loads(output_of("/api/v1/devices"))["devices"]
    assert {d["serial"] for d in devices} >= {d["serial"] for d in expected}
    assert "tickets" in json.loads(output_of("/api/v1/tickets"))
    assert "sites" in json.loads(output_of("/api/v1/entitlement/forecast"))
    listed = output_of("controller devices").splitlines()
    assert listed[0].split()[:2] == ["SERIAL", "MODEL"] and len(listed) > len(expected)
    assert output_of("tickets list").startswith("TICKET")
    found = output_of("agent discover").strip().splitlines()
    # The demo's faults come and go (off, slow, wedged): most devices answer as Poly, and
    # every host listed as Poly is a lab device; the three hosts that are not are told apart.
    poly = {line.split()[0] for line in found[1:-1] if "NOT A POLY" not in line}
    assert poly <= {d["address"] for d in lab} and len(poly) >= len(lab) * 2 // 3, found
    others = {line.split()[0] for line in found if "NOT A POLY VIDEOOS DEVICE" in line}
    assert {"127.0.1.50", "127.0.2.50", "127.0.3.50"} <= others, found
    assert found[-1].startswith(f"{len(poly)} Poly devices, "), found
    assert len(json.loads(output_of("lab_control_url"))["devices"]) == len(lab)
