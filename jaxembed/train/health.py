"""Stop a run that has stopped learning: a non-finite loss or gradient, or a collapsed model.

Per step the trainer already has the loss and the gradient norm on the host
(they are logged), so these checks cost nothing:

* **non-finite**: ``loss`` or ``grad_norm`` NaN/inf raises
  :class:`~jaxembed.train.errors.NonFiniteError` (before the step's state can
  be saved; the train state itself is checked at every save, see
  :mod:`jaxembed.train.checkpoint`).
* **collapse**: a gradient norm of exactly ``0.0`` for ``collapse_steps``
  consecutive steps raises :class:`CollapsedRunError` instead of exporting a
  dead model with exit status 0. A healthy float32 gradient over millions of
  parameters is never exactly zero; an exact zero means the loss no longer
  depends on the parameters (e.g. ``learning_rate=1e6`` saturated every unit
  after one update). ``collapse_steps=0`` disables the check.

Example::

    health = Health(collapse_steps=3)
    for step ...:
        health.observe(step, loss=m["loss"], grad_norm=m["grad_norm"], last_checkpoint=ckpt_step)
"""

from __future__ import annotations

import math

from jaxembed.train.errors import NonFiniteError, RunError


class CollapsedRunError(RunError):
    """The gradient has been exactly zero for ``collapse_steps`` steps in a row."""


class Health:
    def __init__(self, *, collapse_steps: int):
        self.collapse_steps = collapse_steps
        self.zero_since: int | None = None  # first step of the current run of zero gradients

    def observe(self, step: int, *, loss: float, grad_norm: float,
                last_checkpoint: int | None = None) -> None:
        """Check step ``step`` (1-based, the step just computed); raises on a sick run."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            last = (f"the last checkpoint (step {last_checkpoint}) is finite" if last_checkpoint
                    is not None else "no checkpoint was written")
            raise NonFiniteError(
                f"non-finite loss/gradient at step {step} (loss {loss}, grad_norm {grad_norm}); "
                f"{last}. For whitening objectives a singular group covariance is the usual "
                f"cause: set whitening_eps > 0; otherwise lower learning_rate.")
        if grad_norm != 0.0:
            self.zero_since = None
            return
        if self.zero_since is None:
            self.zero_since = step
        if self.collapse_steps and step - self.zero_since + 1 >= self.collapse_steps:
            first = self.zero_since
            where = ("the initial parameters already give zero gradients" if first == 1 else
                     f"the parameters after step {first - 1} already give zero gradients, so "
                     f"checkpoints from step {first - 1} on hold the collapsed model")
            raise CollapsedRunError(
                f"the gradient has been exactly zero for steps {first}-{step} "
                f"(collapse_steps={self.collapse_steps}): the model has collapsed, usually from "
                f"a learning_rate far too high; not exported ({where})")
