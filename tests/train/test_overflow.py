"""Gradient-norm overflow detection with a real GradScaler loop (CPU AMP scaler)."""

from __future__ import annotations

import math

import pytest
import torch

from hardneg.train.overflow import GradNormOverflow


def _run(steps: int, overflow_steps: set[int], patience: int = 5, amp: bool = True):
    """The documented loop on a 3-parameter model; the loss overflows on ``overflow_steps``."""
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    monitor = GradNormOverflow(patience=patience)
    done = 0
    for step in range(steps):
        factor = 1e30 if step in overflow_steps else 1.0  # (1e30 w)² → inf gradient
        scaler.scale((w * factor).pow(2).sum()).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_([w], 1.0)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        monitor.update(norm, skipped=scaler.is_enabled() and scaler.get_scale() < scale, step=step)
        done += 1
    return done, w


def test_overflow_at_every_step_stops_after_patience_with_advice():
    with pytest.raises(FloatingPointError, match=r"5 consecutive steps.*at step 4.*disable AMP"):
        _run(steps=50, overflow_steps=set(range(50)))


def test_below_patience_no_error_and_the_scaler_really_skipped():
    """4 < 5 overflowing steps: no error, and the parameters never moved (steps skipped)."""
    done, w = _run(steps=4, overflow_steps=set(range(4)))
    assert done == 4
    assert torch.equal(w.detach(), torch.ones(3))


def test_transient_overflows_are_tolerated_and_reset():
    # 4 skipped steps, recovery, 4 again: never 5 in a row, and the model trains in between
    done, w = _run(steps=20, overflow_steps={0, 1, 2, 3, 8, 9, 10, 11})
    assert done == 20
    assert (w.detach() < 1).all()


def test_applied_non_finite_step_raises_at_once():
    with pytest.raises(FloatingPointError, match="at step 2 and the optimizer step was applied"):
        _run(steps=10, overflow_steps={2}, amp=False)


def test_state_dict_round_trip_keeps_the_count():
    monitor = GradNormOverflow(patience=3)
    monitor.update(math.inf, skipped=True)
    monitor.update(torch.tensor(math.nan), skipped=True)
    resumed = GradNormOverflow(patience=3)
    resumed.load_state_dict(monitor.state_dict())
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        resumed.update(math.inf, skipped=True)


@pytest.mark.parametrize("patience", [0, 2.5, True, "3"])
def test_bad_patience_is_named(patience):
    with pytest.raises(ValueError, match="patience"):
        GradNormOverflow(patience=patience)
