"""Back-off between attempts: doubling from the first wait, capped, jittered within bounds."""

from __future__ import annotations

import pytest

from polyfleet.shared.retry import Backoff


def test_waits_double_from_the_first_up_to_the_cap() -> None:
    """1, 2, 4, 8 s... never above the cap, also after very many failures."""
    policy = Backoff(first_s=1.0, max_s=10.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0


def test_jitter_draws_from_the_upper_part_of_the_wait() -> None:
    """With jitter 0.5 each wait lies between half the un-jittered wait and all of it."""
    policy = Backoff(first_s=2.0, max_s=300.0, jitter=0.5)
    for failures in (1, 3, 12):
        ceiling = policy.ceiling(failures)
        waits = [policy.delay(failures) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert len(set(waits)) > 1


@pytest.mark.parametrize(
    "bad",
    [
        {"first_s": -1.0, "max_s": 1.0},
        {"first_s": 1.0, "max_s": 1.0, "factor": 0.5},
        {"first_s": 1.0, "max_s": 1.0, "jitter": 2.0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(bad: dict[str, float]) -> None:
    """Negative waits, a shrinking factor or jitter outside 0..1 are refused when built."""
    with pytest.raises(ValueError, match="back-off"):
        Backoff(**bad)
