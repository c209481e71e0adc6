"""The legacy SSH command-line API, driven by paramiko and the stock OpenSSH client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from lab_client import LabFactory, connect, exec_command, wait_for

from simulator.device import SimDevice
from simulator.lab import Lab
from simulator.testing import fleet_of, make_device


def read_until(channel: paramiko.Channel, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    channel.settimeout(timeout)
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} in {data!r}")
        chunk = channel.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_exec_status_lists_subsystems_and_ends(lab_factory: LabFactory) -> None:
    """``status`` prints one ``<name> <state>`` line per subsystem and ends with ``status end``."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    await device.set_fault("camera_down", True)
    output, code = await asyncio.to_thread(exec_command, device, "status")
    lines = output.split("\r\n")
    assert code == 0
    assert lines[0] == "inacall offline"
    assert "camera offline" in lines and "microphones online" in lines
    assert lines[-2:] == ["status end", ""]


async def test_exec_commands_and_errors(lab_factory: LabFactory) -> None:
    """systemsetting, uptime, callinfo and unknown commands answer as the legacy API does."""
    lab = await lab_factory([make_device(model="studio_x30")])
    device = next(iter(lab.devices.values()))
    model, _ = await asyncio.to_thread(exec_command, device, "systemsetting get model")
    assert model == 'systemsetting model "Studio X30"\r\n'
    uptime, _ = await asyncio.to_thread(exec_command, device, "uptime get")
    assert uptime.startswith("3 Days, 2 Hours, ")
    idle, _ = await asyncio.to_thread(exec_command, device, "callinfo all")
    assert idle == "system is not in a call\r\n"
    await device.start_call("sip:room@127.0.0.1")
    busy, _ = await asyncio.to_thread(exec_command, device, "callinfo all")
    assert busy.startswith("callinfo begin\r\n") and busy.endswith("callinfo end\r\n")
    unknown, code = await asyncio.to_thread(exec_command, device, "frobnicate")
    assert (unknown, code) == ("error: command not found\r\n", 1)
    short, _ = await asyncio.to_thread(exec_command, device, "systemsetting")
    assert short == "error: command needs more parameters to execute successfully\r\n"


def run_shell(device: SimDevice) -> tuple[bytes, bytes]:
    client = connect(device)
    try:
        channel = client.invoke_shell()
        greeting = read_until(channel, b"-> ")
        channel.sendall(b"whoami\r\n")
        answer = read_until(channel, b"-> ")
        channel.sendall(b"exit\n")
        return greeting, answer
    finally:
        client.close()


async def test_interactive_shell_banner_prompt_and_echo(lab_factory: LabFactory) -> None:
    """An interactive shell greets with the banner and ``-> ``, echoes commands and answers them."""
    lab = await lab_factory([make_device(serial="SHELL001", system_name="Sala Wawel")])
    device = next(iter(lab.devices.values()))
    greeting, answer = await asyncio.to_thread(run_shell, device)
    assert greeting.startswith(b"Hi, my name is : Sala Wawel\r\n")
    assert b"Serial Number: SHELL001\r\n" in greeting and greeting.endswith(b"-> ")
    assert answer.startswith(b"whoami\r\nHi, my name is : Sala Wawel\r\n")
    assert answer.endswith(b"-> ")


async def test_wrong_password_refused_and_counts_to_lockout(lab_factory: LabFactory) -> None:
    """SSH refuses a wrong password; failures count towards the shared lockout."""
    lab = await lab_factory([make_device(lockout_failures=2)])
    device = next(iter(lab.devices.values()))
    for _ in range(2):
        with pytest.raises(paramiko.AuthenticationException):
            await asyncio.to_thread(connect, device, "wrong")
    assert device.locked_out()
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(connect, device)


async def test_rsa_host_key_is_pinned_and_persisted(tmp_path: Path) -> None:
    """An ssh-rsa device serves its pinned RSA host key; key, cert and ports survive a restart."""
    spec = make_device(ssh_host_key_type="rsa")
    lab = Lab(fleet_of([spec]), data_dir=tmp_path / "lab")
    await lab.start()
    try:
        device = lab.devices[spec.serial]
        client = await asyncio.to_thread(connect, device)
        transport = client.get_transport()
        assert transport is not None
        assert transport.get_remote_server_key().get_name() == "ssh-rsa"
        client.close()
        fingerprints = (device.ssh_fingerprint, device.tls_fingerprint)
        ports = (device.rest_port, device.ssh_port)
    finally:
        await lab.stop()
    again = Lab(fleet_of([spec]), data_dir=tmp_path / "lab")
    await again.start()
    try:
        device = again.devices[spec.serial]
        assert (device.ssh_fingerprint, device.tls_fingerprint) == fingerprints
        assert (device.rest_port, device.ssh_port) == ports
    finally:
        await again.stop()


async def test_reboot_now_takes_the_device_down_and_back(lab_factory: LabFactory) -> None:
    """``reboot now`` over SSH reboots the device: it goes down, then serves again."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    boots_before = device.boot_time
    # No reply: the connection may drop as the device goes down.
    with contextlib.suppress(EOFError, OSError, paramiko.SSHException):
        await asyncio.to_thread(exec_command, device, "reboot now")
    await wait_for(lambda: device.boot_time != boots_before and device.power == "on")
    output, _ = await asyncio.to_thread(exec_command, device, "whoami")
    assert "Hi, my name is" in output


@pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("sshpass") is None,
    reason="needs the OpenSSH client and sshpass (apt-get install openssh-client sshpass)",
)
@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
async def test_openssh_client_logs_in_and_runs_status(
    lab_factory: LabFactory, tmp_path: Path, key_type: str
) -> None:
    """The stock OpenSSH client logs in by password and runs ``status``, checking the host key."""
    lab = await lab_factory([make_device(ssh_host_key_type=key_type)])
    device = next(iter(lab.devices.values()))
    known_hosts = tmp_path / "known_hosts"
    assert device.host_key is not None
    known_hosts.write_text(
        f"[{device.address}]:{device.ssh_port} {device.host_key.get_name()} "
        f"{device.host_key.get_base64()}\n"
    )
    command = [
        "sshpass",
        "-e",
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "ConnectTimeout=10",
        "-p",
        str(device.ssh_port),
        f"admin@{device.address}",
        "status",
    ]
    env = {**os.environ, "SSHPASS": device.admin_password}
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "status end"
    assert "ipnetwork online" in result.stdout.splitlines()


@pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("sshpass") is None,
    reason="needs the OpenSSH client and sshpass (apt-get install openssh-client sshpass)",
)
async def test_openssh_interactive_shell_reads_commands_from_stdin(lab_factory: LabFactory) -> None:
    """OpenSSH without a command opens the shell: banner, prompt, answers, exit status 0."""
    lab = await lab_factory([make_device(serial="SHELL002", firmware="3.12.0")])
    device = next(iter(lab.devices.values()))
    command = [
        "sshpass", "-e", "ssh", "-T", "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-p", str(device.ssh_port), f"admin@{device.address}",
    ]  # fmt: skip
    env = {**os.environ, "SSHPASS": device.admin_password}
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        input="systemsetting get model\nnonsense\nexit\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Hi, my name is : Studio X50 L002" and "Serial Number: SHELL002" in lines
    assert "-> systemsetting get model" in lines
    assert 'systemsetting model "Studio X50"' in lines
    assert "error: command not found" in lines and lines[-1] == "-> exit"


async def test_crcrlf_line_endings_and_late_banner(lab_factory: LabFactory) -> None:
    """A crcrlf unit ends lines in \\r\\r\\n; a late banner still comes before the prompt."""
    lab = await lab_factory([make_device(ssh_line_ending="crcrlf", ssh_banner_delay_ms=200)])
    device = next(iter(lab.devices.values()))
    output, _ = await asyncio.to_thread(exec_command, device, "uptime get")
    assert output.endswith(" Minutes\r\r\n")
    started = time.monotonic()
    greeting, answer = await asyncio.to_thread(run_shell, device)
    assert time.monotonic() - started >= 0.2
    assert greeting.startswith(b"Hi, my name is : ") and b"\r\r\n" in greeting
    assert answer.startswith(b"whoami\r\r\n")
