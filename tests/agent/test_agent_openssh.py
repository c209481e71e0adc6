"""The agent's SSH client against a stock OpenSSH sshd whose forced command plays the device."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from polyfleet.agent.config import DeviceConfig, Secret
from polyfleet.agent.drivers.base import DriverContext, Pins
from polyfleet.agent.drivers.videoos import VideoOSDriver
from polyfleet.agent.transport.ssh import SshClient
from polyfleet.shared.errors import (
    CertificateMismatch,
    DeviceError,
    DeviceUnreachable,
    NotAPolyDevice,
)
from polyfleet.shared.fingerprint import normalise_fingerprint

SSHD = "/usr/sbin/sshd"

# The legacy command line as a login shell: late banner, "-> " prompt, \r\n from the
# script turned into \r\r\n by the pty, the command echoed by the terminal.
DEVICE_SCRIPT = r"""#!/bin/bash
banner() {
  printf 'Hi, my name is : Stock Room\r\n'
  printf 'Here is what I know about myself:\r\n'
  printf 'Model: Studio X30\r\n'
  printf 'Serial Number: OSSH0001\r\n'
  printf 'Software Version: 4.1.0\r\n'
  printf 'Build Information: 382263\r\n'
}
sleep 0.3
banner
printf -- '-> '
while IFS= read -r line; do
  line=${line%$'\r'}
  case "$line" in
    whoami) banner ;;
    status) printf 'inacall offline\r\ncamera offline\r\nmicrophones online\r\n'
            printf 'sipserver disabled\r\nlogthreshold full\r\nstatus end\r\n' ;;
    "callinfo all") printf 'system is not in a call\r\n' ;;
    "uptime get") printf '3 Days, 2 Hours, 5 Minutes\r\n' ;;
    exit) exit 0 ;;
    *) printf 'error: command not found\r\n' ;;
  esac
  printf -- '-> '
done
"""

pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists() or shutil.which("ssh-keygen") is None,
    reason="openssh-server not installed (apt-get install openssh-server)",
)


@dataclass
class StockSshd:
    port: int
    user: str
    client_key: Path
    host_fingerprint: str

    def client(self, *, pin: str | None = None, **options: float) -> SshClient:
        """The agent's SSH client for this sshd: its key, and its host key pinned (or ``pin``)."""
        return SshClient(
            "127.0.0.1",
            self.port,
            user=self.user,
            password=None,
            pin=pin or self.host_fingerprint,
            key_file=self.client_key,
            **options,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running_sshd(tmp_path: Path, login_script: str) -> AsyncIterator[StockSshd]:
    """sshd on a loopback port with its own config and host key; key login runs the script."""
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    script = tmp_path / "device-shell"
    script.write_text(login_script)
    script.chmod(0o755)
    host_key = tmp_path / "host_ed25519"
    client_key = tmp_path / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(host_key) + ".pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nAuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"ForceCommand {script}\nLogLevel ERROR\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"sshd did not start: {err}") from None
            await asyncio.sleep(0.02)  # waits-for: sshd to listen (deadline above)
    try:
        yield StockSshd(
            port=port,
            user=getpass.getuser(),
            client_key=client_key,
            host_fingerprint=normalise_fingerprint(listing.split()[1]),
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def stock_sshd(tmp_path: Path) -> AsyncIterator[StockSshd]:
    """sshd whose login runs the device script."""
    async with running_sshd(tmp_path, DEVICE_SCRIPT) as sshd:
        yield sshd


async def test_driver_reads_device_over_stock_sshd(stock_sshd: StockSshd) -> None:
    """The VideoOS SSH read works on OpenSSH: late banner, echo, \\r\\r\\n, pinned host key."""
    device = DeviceConfig(
        host="127.0.0.1",
        rest_port=1,
        ssh_port=stock_sshd.port,
        user=stock_sshd.user,
        password=Secret(origin="unused"),
        ssh_key_file=stock_sshd.client_key,
    )
    async with aiohttp.ClientSession() as session:
        pins = Pins(ssh=stock_sshd.host_fingerprint)
        driver = VideoOSDriver(device, "", DriverContext(session=session, pins=pins))
        [snap] = await driver.poll_fallback(RuntimeError("REST not tried"))
    assert (snap.serial, snap.model.value, snap.via.value) == ("OSSH0001", "studio_x30", "ssh")
    assert (snap.firmware.version, snap.firmware.build) == ("4.1.0", "382263")
    assert snap.system_name == "Stock Room"
    assert {p.code.value for p in snap.health.problems} == {
        "api_error",
        "camera_down",
        "log_storage_full",
    }
    assert snap.uptime_s == 3 * 86400 + 2 * 3600 + 5 * 60
    assert snap.in_call is False
    assert pins.seen_ssh == stock_sshd.host_fingerprint


async def test_stock_sshd_outputs_are_clean(stock_sshd: StockSshd) -> None:
    """Command outputs come back without echo, prompt or carriage returns."""
    client = stock_sshd.client()
    session = await client.run(["status", "bogus"])
    assert session.outputs["status"].splitlines()[-1] == "status end"
    assert "\r" not in session.outputs["status"] and "-> " not in session.outputs["status"]
    assert session.outputs["bogus"] == "error: command not found"
    assert "Serial Number: OSSH0001" in session.banner


async def test_stock_sshd_wrong_pin_refused_before_login(
    stock_sshd: StockSshd, tmp_path: Path
) -> None:
    """A host key that differs from the pin stops the connection before authentication."""
    client = stock_sshd.client(pin="SHA256:" + "A" * 43)
    with pytest.raises(CertificateMismatch) as caught:
        await client.run(["whoami"])
    assert caught.value.seen == stock_sshd.host_fingerprint


@pytest.mark.parametrize(
    ("login_script", "expected", "says"),
    [
        # A plain Linux host: a real interactive shell and its prompt ("$ ", "# " as root).
        ("#!/bin/sh\nexec /bin/sh -i\n", NotAPolyDevice, "a shell prompt"),
        (
            "#!/bin/sh\nexec /bin/bash --norc --noprofile -i\n",
            NotAPolyDevice,
            "a shell prompt ('bash-",
        ),
        # An appliance that greets in its own words and never shows "-> ".
        (
            "#!/bin/sh\nprintf 'ACME NAS 7.1\\r\\nMenu: 1) Status 2) Exit\\r\\n'\nexec sleep 30\n",
            NotAPolyDevice,
            "no VideoOS prompt within 1.5s (last said 'Menu: 1) Status 2) Exit')",
        ),
        # Silence may be a VideoOS unit greeting late: no verdict on what it is.
        ("#!/bin/sh\nexec sleep 30\n", DeviceUnreachable, "no prompt within 1.5s"),
    ],
    ids=["sh", "bash", "own-greeting", "silent"],
)
async def test_stock_sshd_that_is_no_videoos_unit(
    tmp_path: Path, login_script: str, expected: type[DeviceError], says: str
) -> None:
    """Over stock OpenSSH a shell or a foreign greeting is 'not Poly'; silence stays unreachable."""
    async with running_sshd(tmp_path, login_script) as sshd:
        client = sshd.client(timeout=1.5)
        with pytest.raises(DeviceError) as caught:
            await client.run(["whoami"])
    assert type(caught.value) is expected, caught.value
    assert says in str(caught.value)
