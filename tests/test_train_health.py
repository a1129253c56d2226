"""Per-step health: non-finite loss/gradient and collapsed (exactly zero) gradients stop a run."""

from __future__ import annotations

import pytest

from jaxembed.train.errors import NonFiniteError, RunError
from jaxembed.train.health import CollapsedRunError, Health


@pytest.mark.parametrize("loss,grad_norm", [(float("nan"), 1.0), (0.5, float("inf")),
                                            (float("-inf"), 0.0)])
def test_non_finite_step_names_the_last_checkpoint(loss, grad_norm):
    with pytest.raises(NonFiniteError,
                       match=r"at step 7 .*the last checkpoint \(step 5\) is finite"):
        Health(collapse_steps=3).observe(7, loss=loss, grad_norm=grad_norm, last_checkpoint=5)
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        Health(collapse_steps=3).observe(1, loss=loss, grad_norm=grad_norm)


def test_collapse_needs_consecutive_exact_zeros(rng):
    n = int(rng.integers(2, 6))
    health = Health(collapse_steps=n)
    step = 0
    for _ in range(3):  # runs of n - 1 zeros, broken by a tiny non-zero norm, are fine
        for _ in range(n - 1):
            step += 1
            health.observe(step, loss=1.0, grad_norm=0.0)
        step += 1
        health.observe(step, loss=1.0, grad_norm=float(rng.uniform(1e-30, 1e-20)))
    for _ in range(n - 1):
        step += 1
        health.observe(step, loss=1.0, grad_norm=0.0)
    with pytest.raises(CollapsedRunError) as info:
        health.observe(step + 1, loss=1.0, grad_norm=0.0)
    first = step + 2 - n
    assert isinstance(info.value, RunError)
    assert f"exactly zero for steps {first}-{step + 1} (collapse_steps={n})" in str(info.value)
    assert f"checkpoints from step {first - 1} on hold the collapsed model" in str(info.value)


def test_collapse_check_can_be_disabled():
    health = Health(collapse_steps=0)
    for step in range(1, 50):
        health.observe(step, loss=2.0, grad_norm=0.0)
    with pytest.raises(CollapsedRunError, match="initial parameters already give zero gradients"):
        h = Health(collapse_steps=1)
        h.observe(1, loss=2.0, grad_norm=0.0)
