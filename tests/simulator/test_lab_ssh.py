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
from lab_client import LabFactory, connect, exec_command, read_identification
from testkit.waiting import wait_until

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import fleet_of, make_device


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


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
async def test_host_key_is_pinned_and_persisted(tmp_path: Path, key_type: str) -> None:
    """A device serves its pinned host key of its type; key, cert and ports survive a restart."""
    spec = make_device(ssh_host_key_type=key_type)
    lab = Lab(fleet_of([spec]), data_dir=tmp_path / "lab")
    await lab.start()
    try:
        device = lab.devices[spec.serial]
        client = await asyncio.to_thread(connect, device)
        transport = client.get_transport()
        assert transport is not None
        expected = {"rsa": "ssh-rsa", "ed25519": "ssh-ed25519"}[key_type]
        assert transport.get_remote_server_key().get_name() == expected
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
    await wait_until(lambda: device.boot_time != boots_before and device.power == "on")
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


async def test_ssh_identification_is_openssh_not_paramiko(lab_factory: LabFactory) -> None:
    """The server identifies as OpenSSH (or what ssh_server_version says), never as paramiko."""
    lab = await lab_factory([make_device(), make_device(ssh_server_version="OpenSSH_7.4 Poly")])
    default, custom = lab.devices.values()
    line = await asyncio.to_thread(read_identification, default.address, default.ssh_port)
    assert line == b"SSH-2.0-OpenSSH_8.4"
    line = await asyncio.to_thread(read_identification, custom.address, custom.ssh_port)
    assert line == b"SSH-2.0-OpenSSH_7.4 Poly"
    client = await asyncio.to_thread(connect, custom)
    try:
        transport = client.get_transport()
        assert transport is not None and transport.remote_version == "SSH-2.0-OpenSSH_7.4 Poly"
    finally:
        client.close()


async def test_status_in_a_call_and_lan_degraded(lab_factory: LabFactory) -> None:
    """``status`` says ``inacall online`` in a call and ``ipnetwork offline`` under lan_degraded."""
    lab = await lab_factory([make_device(in_call=True)])
    device = next(iter(lab.devices.values()))
    await device.set_fault("lan_degraded", True)
    output, _ = await asyncio.to_thread(exec_command, device, "status")
    lines = output.split("\r\n")
    assert lines[0] == "inacall online" and "ipnetwork offline" in lines
    await device.set_fault("lan_degraded", False)
    await device.end_call()
    output, _ = await asyncio.to_thread(exec_command, device, "status")
    lines = output.split("\r\n")
    assert lines[0] == "inacall offline" and "ipnetwork online" in lines


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("whoami", "Hi, my name is : "),
        ("systemsetting get systemname", 'systemsetting systemname "'),
        ("systemsetting set model", "error: command has illegal parameters"),
        ("uptime", "error: command needs more parameters to execute successfully"),
        ("uptime set", "error: command has illegal parameters"),
        ("callinfo", "error: command needs more parameters to execute successfully"),
        ("callinfo some", "error: command has illegal parameters"),
        ("reboot", "error: command needs more parameters to execute successfully"),
    ],
)
async def test_exec_answers_and_error_lines(
    lab_factory: LabFactory, command: str, answer: str
) -> None:
    """Each command form gets its documented answer; error lines give exit status 1."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    output, code = await asyncio.to_thread(exec_command, device, command)
    assert output.startswith(answer)
    assert code == (1 if answer.startswith("error:") else 0)
    assert device.power == "on"


async def test_ssh_slow_and_locked_out_faults(lab_factory: LabFactory) -> None:
    """slow delays SSH answers; locked_out refuses even the right password until cleared."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    await device.set_fault("slow", True, latency_ms=300)
    started = time.monotonic()
    output, _ = await asyncio.to_thread(exec_command, device, "uptime get")
    assert time.monotonic() - started >= 0.3 and output.endswith(" Minutes\r\n")
    await device.set_fault("slow", False)
    await device.set_fault("locked_out", True)
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(connect, device)
    await device.set_fault("locked_out", False)
    output, _ = await asyncio.to_thread(exec_command, device, "whoami")
    assert "Serial Number: " in output


async def test_wedged_rest_leaves_ssh_working(lab_factory: LabFactory) -> None:
    """A wedged unit still answers the SSH command-line API (the agent's fallback path)."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    await device.set_fault("wedged", True)
    output, code = await asyncio.to_thread(exec_command, device, "status")
    assert code == 0 and output.endswith("status end\r\n")


def type_and_hang_up(device: SimDevice, line: bytes) -> None:
    """Open a shell, type ``line`` and close at once, without reading anything."""
    client = connect(device)
    try:
        channel = client.invoke_shell()
        channel.sendall(line)
    finally:
        client.close()


async def test_reboot_now_typed_before_hanging_up_still_reboots(lab_factory: LabFactory) -> None:
    """``reboot now`` typed by a client that hangs up before the late banner still reboots."""
    lab = await lab_factory([make_device(ssh_banner_delay_ms=200)])
    device = next(iter(lab.devices.values()))
    boots_before = device.boot_time
    await asyncio.to_thread(type_and_hang_up, device, b"reboot now\n")
    await wait_until(lambda: device.boot_time != boots_before and device.power == "on")


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        ("camera_down", "camera offline"),
        ("e70_down", "trackablecamera offline"),
        ("microphone_down", "microphones offline"),
        ("sip_unregistered", "sipserver offline"),
        ("log_storage_full", "logthreshold full"),
        ("lan_degraded", "ipnetwork offline"),
    ],
)
async def test_status_lines_follow_faults(lab_factory: LabFactory, fault: str, line: str) -> None:
    """Each fault shows in its legacy ``status`` line, and only while it is raised."""
    lab = await lab_factory([make_device(model="g7500")])
    device = next(iter(lab.devices.values()))
    before, _ = await asyncio.to_thread(exec_command, device, "status")
    assert line not in before.split("\r\n")
    await device.set_fault(fault, True)
    during, _ = await asyncio.to_thread(exec_command, device, "status")
    assert line in during.split("\r\n")
