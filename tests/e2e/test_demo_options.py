"""The demo's --time-scale: checked before anything starts, and what it makes quicker."""

from __future__ import annotations

import pytest

from polyfleet.cli import main
from polyfleet.demo import DEMO_FLEET, quicker_devices
from polyfleet.simulator.fleet import load_fleet


@pytest.mark.parametrize("factor", ["0.5", "11", "fast"])
def test_a_time_scale_out_of_range_is_a_usage_error(
    factor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--time-scale below 1, above 10 or not a number stops at once, naming the option."""
    assert main(["demo", "--time-scale", factor, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "--time-scale" in err and factor in err


def test_quicker_devices_shorten_boots_and_installs_only() -> None:
    """Scaled by 5, every boot and install takes a fifth; faults, calls and the rest stay."""
    fleet = load_fleet(DEMO_FLEET)
    quick = quicker_devices(fleet, 5)
    pairs = list(zip(fleet.placed_devices(), quick.placed_devices(), strict=True))
    assert pairs
    for (_, _, before), (_, _, after) in pairs:
        assert after.boot_seconds == pytest.approx(before.boot_seconds / 5)
        assert after.update.install_seconds == pytest.approx(before.update.install_seconds / 5)
        assert (after.faults, after.calls, after.serial) == (
            before.faults,
            before.calls,
            before.serial,
        )
    assert quicker_devices(fleet, 1) is fleet
