"""What the agent tells people (report problems, notices, its log) is words, never object text."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.site_agents import agent_config, device_config, start_enrolled_agent, write_credential
from testkit.waiting import wait_until

from polyfleet.agent.service import AgentService
from polyfleet.controller.testing import running_controller
from polyfleet.shared.fingerprint import short_fingerprint
from polyfleet.simulator.testing import make_device

#: Object text and library names that must never reach a person: reprs, class names, errnos.
OBJECT_TEXT = re.compile(
    r"object at 0x[0-9a-fA-F]+|<[A-Za-z_][\w.]*[ >]|\baiohttp\b|\bSSLContext\b|\bFingerprint\b"
    r"|\b\w+(?:Error|Exception)\b|\[Errno"
)


def leaks(texts: list[str]) -> list[str]:
    return [t for t in texts if OBJECT_TEXT.search(t)]


async def test_device_failures_reach_the_controller_and_log_in_words(
    lab_factory: Any, password_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed certificate or host key and a device that is off read as words, with short pins."""
    caplog.set_level(logging.INFO, logger="polyfleet")
    lab = await lab_factory(
        [make_device("WORDCERT"), make_device("WORDOFF"), make_device("WORDSSH")]
    )
    cert, off, ssh = (lab.devices[s] for s in ("WORDCERT", "WORDOFF", "WORDSSH"))
    async with running_controller(tmp_path / "ctl") as controller:
        config = agent_config(
            tmp_path,
            [device_config(d, password_file) for d in (cert, off, ssh)],
            controller_url=controller.url,
            poll_interval_s=0.3,
            send_interval_s=0.05,
            ssh_cross_check_every=1,
        )
        service = await start_enrolled_agent(controller, "krk", config)
        try:
            async with aiohttp.ClientSession(headers=controller.admin_headers) as http:

                async def health() -> dict[str, Any]:
                    async with http.get(controller.url + "/api/v1/devices") as resp:
                        return {d["serial"]: d["health"] for d in (await resp.json())["devices"]}

                async def all_ok() -> bool:
                    found = await health()
                    wanted = ("WORDCERT", "WORDOFF", "WORDSSH")
                    return all(found.get(s, {}).get("state") == "ok" for s in wanted)

                await wait_until(all_ok, what="three healthy devices, pins learned")
                old_tls, old_ssh = cert.tls_fingerprint, ssh.ssh_fingerprint
                await cert.renew_identity(certificate=True)
                await ssh.renew_identity(host_key=True)
                await off.power_off()

                async def failing() -> dict[str, Any] | None:
                    found = await health()
                    codes = {s: [p["code"] for p in h["problems"]] for s, h in found.items()}
                    off_details = [p["detail"] for p in found["WORDOFF"]["problems"]]
                    done = (
                        "certificate_changed" in codes["WORDCERT"]
                        and "unreachable" in codes["WORDOFF"]
                        # A poll in flight when the power went reads "closed before an
                        # answer"; the polls after it meet the switched-off device.
                        and any("connection refused" in text for text in off_details)
                        and "certificate_changed" in codes["WORDSSH"]
                    )
                    return found if done else None

                found = await wait_until(failing, what="the three failures at the controller")
                async with http.get(controller.url + "/api/v1/events?kind=agent_notice") as resp:
                    notices = [e["data"] for e in (await resp.json())["events"]]
        finally:
            await service.stop()
    details = {s: [p["detail"] for p in h["problems"]] for s, h in found.items()}
    assert not leaks([d for texts in details.values() for d in texts]), details
    [cert_text] = details["WORDCERT"]
    assert (
        "the device's certificate does not match the pinned one "
        f"(device {short_fingerprint(cert.tls_fingerprint)}, pinned {short_fingerprint(old_tls)})"
    ) in cert_text
    assert cert.tls_fingerprint not in cert_text, "shortened, not the whole fingerprint"
    assert "cannot connect (connection refused)" in details["WORDOFF"][0]
    assert any(
        "the device's SSH host key does not match the pinned one "
        f"(device {short_fingerprint(ssh.ssh_fingerprint)}, pinned {short_fingerprint(old_ssh)})"
        in text
        for text in details["WORDSSH"]
    ), details["WORDSSH"]
    changed = [n["detail"] for n in notices if n["notice"] == "certificate_changed"]
    assert any("WORDCERT: the device's certificate changed" in n for n in changed), changed
    assert any("WORDSSH: the device's SSH host key changed" in n for n in changed), changed
    assert all("polyfleet agent pins accept" in n for n in changed) and not leaks(changed)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("polyfleet")]
    # The first failure of the switched-off device is logged: refused, or, for a poll in
    # flight at that moment, closed before its answer; in words either way.
    in_words = ("connection refused", "the connection closed before an answer")
    assert any(any(w in m for w in in_words) for m in logged), "\n".join(logged)
    assert not leaks(logged), leaks(logged)


async def test_unreachable_controller_over_https_is_logged_in_words(
    lab_factory: Any, password_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a CA file (an SSLContext), a controller that refuses is 'cannot connect', no object."""
    caplog.set_level(logging.INFO, logger="polyfleet")
    lab = await lab_factory([make_device("WORDUP")])
    device = lab.devices["WORDUP"]
    assert device.tls is not None
    closed = "https://127.0.0.1:9"  # the discard port: nothing listens on loopback
    config = agent_config(
        tmp_path,
        [device_config(device, password_file)],
        controller_url=closed,
        controller_ca_file=device.tls.cert_path,
        poll_interval_s=0.3,
        send_interval_s=0.05,
        backoff_max_s=0.1,
    )
    write_credential(config.credential_path, closed)
    service = AgentService(config)
    await service.start()
    try:

        async def told() -> bool:
            return any("controller not taking reports" in r.getMessage() for r in caplog.records)

        await wait_until(told, what="the outage logged")
    finally:
        await service.stop()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("polyfleet")]
    line = next(m for m in logged if "controller not taking reports" in m)
    assert f"POST {closed}/api/v1/agent/reports: cannot connect (connection refused)" in line
    assert not leaks(logged), leaks(logged)
