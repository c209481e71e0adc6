"""What a simulated device's subsystems say (LAN, cameras, microphones, SIP), over REST and SSH."""

from __future__ import annotations

from typing import Any

from polyfleet.simulator.device import SimDevice


def lan_status(device: SimDevice) -> dict[str, Any]:
    """``lanStatus``: ``LAN_DOWN`` under lan_degraded (the unit still answers) [assumed]."""
    if device.has_fault("lan_degraded"):
        return {"duplex": "UNKNOWN", "speedMbps": 0, "state": "LAN_DOWN"}
    return {"duplex": "FULL", "speedMbps": 1000, "state": "LAN_UP"}


def camera_state(device: SimDevice) -> str:
    """``system.status.mr.camera``: ``all_up``, ``some_down`` or ``all_down``."""
    if device.has_fault("camera_down"):
        return "all_down"
    if device.has_fault("e70_down"):
        # A G7500's only camera is its E70; a bar keeps its built-in camera.
        return "all_down" if device.model == "g7500" else "some_down"
    return "all_up"


def microphones(device: SimDevice) -> list[dict[str, Any]]:
    mics: list[dict[str, Any]] = [
        {"index": 0, "name": "Built-in microphone", "serialNumber": "", "type": "BUILT_IN"}
    ]
    for p in device.peripherals:
        if p.kind == "microphone":
            mics.append(
                {
                    "index": len(mics),
                    "name": p.product_name,
                    "serialNumber": p.serial,
                    "type": "EXTERNAL",
                }
            )
    down = device.has_fault("microphone_down")
    for mic in mics:
        # The fault silences the first microphone (all of them when there is only one).
        mic["state"] = "MIC_STATE_RED" if down and mic["index"] == 0 else "MIC_STATE_GREEN"
        mic["muted"] = False
    return mics


def audio_state(device: SimDevice) -> str:
    if not device.has_fault("microphone_down"):
        return "all_up"
    return "all_down" if len(microphones(device)) == 1 else "some_down"


def status_entries(device: SimDevice) -> list[tuple[str, str]]:
    """(subsystem, state) as ``/rest/system/status`` and the SSH ``status`` command report them."""
    sip = "off"
    if device.spec.sip:
        sip = "down" if device.has_fault("sip_unregistered") else "up"
    camera_bad = device.has_fault("camera_down") or device.has_fault("e70_down")
    return [
        ("ipnetwork", "down" if device.has_fault("lan_degraded") else "up"),
        ("trackablecamera", "down" if camera_bad else "up"),
        ("sipserver", sip),
        ("gatekeeper", "off"),
        ("mr.camera", camera_state(device)),
        ("mr.audio", audio_state(device)),
        ("provisioning", "up" if device.config.get("upgrade.auto.server.address") else "off"),
        ("remotecontrol", "up"),
        ("logthreshold", "full" if device.has_fault("log_storage_full") else "up"),
        ("autoanswerp2p", "off"),
        ("globaldirectory", "unknown"),
        ("calendar", "up" if device.provider_mode in ("teams", "zoom") else "off"),
    ]


def peripheral_state(device: SimDevice, serial: str, kind: str) -> str:
    if kind == "e70" and device.has_fault("e70_down"):
        return "ERROR"
    fault = device.faults.get("peripheral_disconnected")
    if fault is None:
        return "CONNECTED"
    target = fault.get("serial")
    if target is None:
        kinds = [p.kind for p in device.peripherals]
        preferred = next(
            (k for k in ("touch_controller", "e70") if k in kinds), kinds[0] if kinds else ""
        )
        first = next((p.serial for p in device.peripherals if p.kind == preferred), None)
        target = first
    return "DISCONNECTED" if serial == target else "CONNECTED"
