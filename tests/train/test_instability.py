"""The instability guard's verdicts and the goodput ledger's accounting, on hand-made inputs."""

from __future__ import annotations

import math

from jijian.files.rundir import summarize_goodput
from jijian.train.trainer import InstabilityGuard


def test_non_finite_values_are_flagged_and_kept_out_of_the_window():
    guard = InstabilityGuard(nonfinite=True, zscore=0, window=4)
    assert guard.check(2.0, 1.0) is None
    assert "non-finite" in guard.check(math.nan, 1.0)
    assert "non-finite" in guard.check(2.0, math.inf)
    assert list(guard.recent) == [2.0]


def test_a_loss_spike_is_flagged_only_once_the_window_is_full():
    guard = InstabilityGuard(nonfinite=True, zscore=6.0, window=5)
    assert guard.check(10.0, 1.0) is None  # no history yet: nothing to compare with
    for loss in [3.0, 3.1, 2.9, 3.0, 3.05]:
        assert guard.check(loss, 1.0) is None
    assert guard.check(3.2, 1.0) is None  # within 6 sigma of the window
    reason = guard.check(9.0, 1.0)
    assert reason is not None and "spike" in reason
    assert guard.check(2.0, 1.0) is None  # a drop is never a spike


def test_disabled_checks_let_everything_through():
    guard = InstabilityGuard(nonfinite=False, zscore=0, window=3)
    assert not guard.active
    assert guard.check(math.nan, math.nan) is None


def test_the_ledger_separates_productive_recomputed_restart_and_checkpoint_time():
    events = [
        {"time": 0.0, "event": "attempt"},
        {"time": 1.0, "event": "resume", "to_step": 0},
        {"time": 2.0, "event": "step", "step": 1, "duration_s": 1.0},
        {"time": 3.0, "event": "step", "step": 2, "duration_s": 1.0},
        {"time": 3.5, "event": "checkpoint", "step": 2, "blocking_s": 0.5},
        {"time": 4.5, "event": "step", "step": 3, "duration_s": 1.0},  # lost: the rank dies after it
        {"time": 10.0, "event": "attempt"},
        {"time": 11.0, "event": "resume", "to_step": 2},
        {"time": 12.0, "event": "step", "step": 3, "duration_s": 1.0},
        {"time": 13.0, "event": "step", "step": 4, "duration_s": 1.0},
        {"time": 13.0, "event": "end"},
    ]
    s = summarize_goodput(events)
    assert s["wall_s"] == 13.0
    assert s["productive_s"] == 4.0  # steps 1-4 of the final trajectory
    assert s["recomputed_s"] == 1.0  # the first run of step 3
    assert s["checkpoint_blocking_s"] == 0.5
    assert s["restart_lost_s"] == 11.0 - 4.5  # from the last sign of life to the first step of attempt 2
    assert s["attempts"] == 2 and s["goodput"] == 4.0 / 13.0
