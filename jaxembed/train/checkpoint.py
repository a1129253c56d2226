"""Orbax checkpoints of the train state plus the data position, with verified restore.

Each step directory holds two items: ``state`` (the sharded
:class:`~jaxembed.train.state.TrainState`, Orbax ``StandardSave``) and
``meta`` (JSON: ``data_position`` = batches consumed, ``fingerprint`` = the
state's :func:`~jaxembed.train.state.fingerprint`, and run bookkeeping such as
the best STS-B dev score so far). Retention: the latest ``keep`` steps plus the
single best step by ``metrics["stsb_dev"]`` (Orbax preservation policies).

Saving is synchronous: Orbax writes into a temporary directory and renames it
when complete, so a process killed mid-save leaves no half checkpoint in
``all_steps()``. Restoring walks from the newest step down: a step whose
restore raises, or whose restored bits do not match the saved fingerprint, is
reported and skipped in favour of the previous one.

Example::

    ckpt = Checkpointer(workdir / "ckpt", keep=3)
    ckpt.save(100, state, meta={"data_position": 100})
    restored = ckpt.restore_latest(abstract_state)   # (state, meta) or None
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jaxembed.train.state import fingerprint

log = logging.getLogger("jaxembed.train")

BEST_METRIC = "stsb_dev"


class Checkpointer:
    def __init__(self, directory, *, keep: int = 3, report: Callable[[str], None] | None = None):
        self.directory = pathlib.Path(directory).absolute()
        self.report = report or log.warning
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=max(keep, 1)),
            cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
        self._fingerprint = jax.jit(fingerprint)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, *, meta: dict, metrics: dict | None = None) -> None:
        meta = dict(meta, step=int(step), fingerprint=[int(v) for v in np.asarray(self._fingerprint(state))])
        self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state):
        """Restore ``step`` and verify its fingerprint; raises on any failure."""
        out = self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state, meta = out["state"], out["meta"]
        got = [int(v) for v in np.asarray(self._fingerprint(state))]
        if got != list(meta["fingerprint"]):
            bad = [i for i, (a, b) in enumerate(zip(got, meta["fingerprint"])) if a != b]
            raise ValueError(f"restored bits differ from the saved fingerprint in leaves {bad[:8]}")
        return state, meta

    def restore_latest(self, abstract_state):
        """``(state, meta)`` from the newest step that restores intact, or ``None``."""
        for step in reversed(self.all_steps()):
            try:
                return self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means: fall back
                self.report(f"checkpoint at step {step} in {self.directory} is unusable "
                            f"({type(e).__name__}: {str(e)[:300]}); trying the previous one")
        return None

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree, shardings):
    """``ShapeDtypeStruct`` tree with ``shardings`` (what Orbax restores into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)
