"""Orbax checkpoints of the train state plus the data position: verified, finite, recoverable.

Each step directory holds two items: ``state`` (the sharded
:class:`~jaxembed.train.state.TrainState`, Orbax ``StandardSave``) and
``meta`` (JSON: ``data_position`` = batches consumed, ``fingerprint`` = the
state's :func:`~jaxembed.train.state.fingerprint`, and run bookkeeping such as
the best STS-B dev score so far). Retention: the latest ``keep`` steps plus the
single best step by ``metrics["stsb_dev"]`` (Orbax preservation policies).

The policy, in order of what can go wrong:

* **Only finite states are saved.** :meth:`Checkpointer.save` computes the
  fingerprint and a per-leaf all-finite flag in one jitted pass over the state
  (only when saving, so the step itself pays nothing) and raises
  :class:`~jaxembed.train.errors.NonFiniteError` naming the bad leaves instead
  of writing NaN parameters over a good run: the newest checkpoint stays the
  last finite one.
* **A kill mid-save leaves no half checkpoint.** Saving is synchronous; Orbax
  writes into ``<step>.orbax-checkpoint-tmp`` and renames it when complete.
* **A damaged checkpoint is moved aside, never trusted, never deleted.**
  :meth:`Checkpointer.restore_latest` walks from the newest step down; a step
  whose files cannot be read, or whose restored bits differ from the saved
  fingerprint, is reported and skipped. Every step folder newer than the one
  restored is then moved to ``<ckpt>_quarantine/<step>-<time>`` (the report
  says where), so the next save of that step number does not collide with the
  wreck (Orbax ``StepAlreadyExistsError``) and retention never counts it.
* **A checkpoint of another model is refused.** If a step's saved tree (leaf
  names, shapes, dtypes) differs from the state this config builds, restoring
  raises :class:`IncompatibleCheckpointError` naming the differences; nothing
  is moved or deleted.
* **A full disk is one clear error.** An ENOSPC during a save removes the
  partial ``*.orbax-checkpoint-tmp`` folder at once (it would hold the space
  until the next start) and raises :class:`~jaxembed.train.errors.DiskFullError`.

Orbax reports its own failures through absl logging and leaves asyncio tasks
behind whose errors Python prints at garbage collection ("Exception ignored
in <coroutine>", "Event loop is closed"): hundreds of lines for one bad
checkpoint, printed whenever the failed call's traceback is freed. Every Orbax
call goes through :func:`_orbax`, which mutes both and turns an exception into
an :class:`OrbaxError` carrying only its text (the traceback, and the tasks it
pins, are freed while still muted); this module reports each failure itself,
in one line.

Example::

    ckpt = Checkpointer(workdir / "ckpt", keep=3)
    ckpt.save(100, state, meta={"data_position": 100})
    restored = ckpt.restore_latest(abstract_state)   # (state, meta) or None
"""

from __future__ import annotations

import contextlib
import gc
import logging
import pathlib
import shutil
import sys
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jaxembed.train.errors import DiskFullError, NonFiniteError, RunError, disk_full
from jaxembed.train.state import fingerprint

log = logging.getLogger("jaxembed.train")

BEST_METRIC = "stsb_dev"


class IncompatibleCheckpointError(RunError):
    """A checkpoint's saved tree differs from the state the config builds."""


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Mute Orbax's absl error logs, asyncio's, and the unraisable-exception reports of
    the tasks a failed Orbax call abandons (collected before leaving)."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class OrbaxError(RuntimeError):
    """An exception raised inside Orbax, as text (``disk_full``: whether it was ENOSPC)."""

    def __init__(self, text: str, *, disk_full: bool = False):
        super().__init__(text)
        self.disk_full = disk_full


def _orbax(call: Callable):
    """``call()`` with Orbax muted. An exception comes back as :class:`OrbaxError` holding
    only its text: its traceback pins the futures Orbax abandoned, whose finalizers print
    "Event loop is closed" wherever the traceback is finally freed, so it is freed in here."""
    with _quiet_orbax():
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - re-raised below as text
            failure = OrbaxError(f"{type(e).__name__}: {e}", disk_full=disk_full(e))
    raise failure


def _one_line(e: BaseException, limit: int = 240) -> str:
    text = str(e) if isinstance(e, OrbaxError) else f"{type(e).__name__}: {e}"  # typed already
    text = " ".join(text.split())
    return f"{text[:limit]}{'...' if len(text) > limit else ''}"


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_specs(tree) -> dict[str, tuple]:
    """``{"params.encoder.…": (shape, dtype)}`` of a tree of arrays, shape structs or Orbax
    array metadata, named as Orbax names checkpoint leaves (keys joined by dots)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(_key_name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
            for path, leaf in flat}


def tree_differences(saved: dict, expected: dict, *, limit: int = 4) -> str:
    """Human summary of how two :func:`leaf_specs` differ (``""`` when they agree)."""
    parts = []
    only_saved = sorted(set(saved) - set(expected))
    only_expected = sorted(set(expected) - set(saved))
    changed = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if only_saved:
        parts.append(f"{len(only_saved)} leaves only in the checkpoint "
                     f"({', '.join(only_saved[:limit])})")
    if only_expected:
        parts.append(f"{len(only_expected)} leaves missing from it "
                     f"({', '.join(only_expected[:limit])})")
    if changed:
        pairs = ", ".join(f"{k}: {saved[k]} vs {expected[k]}" for k in changed[:limit])
        parts.append(f"{len(changed)} leaves of another shape/dtype ({pairs})")
    return "; ".join(parts)


@jax.jit
def _check(state):
    """One pass over the state: its fingerprint and, per floating leaf, whether it is all finite."""
    finite = [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
              else jnp.bool_(True) for x in jax.tree.leaves(state)]
    return fingerprint(state), jnp.stack(finite) if finite else jnp.zeros((0,), bool)


_fingerprint = jax.jit(fingerprint)  # module-level: compiled once per state shape


class Checkpointer:
    def __init__(self, directory, *, keep: int = 3, report: Callable[[str], None] | None = None,
                 quarantine=None):
        self.directory = pathlib.Path(directory).absolute()
        self.quarantine_dir = (pathlib.Path(quarantine).absolute() if quarantine else
                               self.directory.parent / f"{self.directory.name}_quarantine")
        self.report = report or log.warning
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=max(keep, 1)),
            cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def require_finite(self, step: int, state) -> np.ndarray:
        """The fingerprint of ``state`` (see :func:`~jaxembed.train.state.fingerprint`);
        raises :class:`NonFiniteError` naming the leaves with a NaN or infinity."""
        fp, finite = jax.device_get(_check(state))
        if not finite.all():
            names = [n for n, ok in zip(leaf_specs(state), finite) if not ok]
            last = max(self.all_steps(), default=None)
            raise NonFiniteError(
                f"step {step}: {len(names)} arrays of the new train state are not finite "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); not saved. "
                + (f"The last checkpoint (step {last}) is finite." if last is not None else
                   "There is no earlier checkpoint."))
        return fp

    def save(self, step: int, state, *, meta: dict, metrics: dict | None = None) -> None:
        """Save ``state`` as ``step`` if every floating leaf is finite (else raise
        :class:`NonFiniteError` and write nothing)."""
        fp = self.require_finite(step, state)
        meta = dict(meta, step=int(step), fingerprint=[int(v) for v in fp])

        def save():
            self.manager.save(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)
            self.manager.wait_until_finished()

        try:
            _orbax(save)
        except OrbaxError as e:
            if not e.disk_full:
                raise
            self._remove_partial(step)
            raise DiskFullError(self.directory / str(step),
                                "the partial checkpoint was removed") from e

    def _remove_partial(self, step: int) -> None:
        if jax.process_index() == 0:
            for tmp in self.directory.glob(f"{int(step)}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, step: int, abstract_state):
        """Restore ``step`` and verify its fingerprint; raises on any failure
        (:class:`IncompatibleCheckpointError` if its tree differs from ``abstract_state``)."""
        saved = leaf_specs(_orbax(lambda: self.manager.metadata(int(step)).item_metadata["state"]))
        if not saved:  # its tree metadata is gone: damage, not another model
            raise FileNotFoundError(f"no array metadata in {self.directory / str(step)}/state")
        diff = tree_differences(saved, leaf_specs(abstract_state))
        if diff:
            raise IncompatibleCheckpointError(
                f"checkpoint {self.directory / str(step)} holds another model or objective "
                f"than this config builds: {diff}")
        out = _orbax(lambda: self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())))
        state, meta = out["state"], out["meta"]
        got = [int(v) for v in np.asarray(_fingerprint(state))]
        if got != list(meta["fingerprint"]):
            bad = [i for i, (a, b) in enumerate(zip(got, meta["fingerprint"])) if a != b]
            raise ValueError(f"restored bits differ from the saved fingerprint in leaves {bad[:8]}")
        return state, meta

    def restore_latest(self, abstract_state):
        """``(state, meta)`` from the newest step that restores intact, or ``None``.

        Step folders newer than the restored one (unreadable, corrupt, or not
        listed by Orbax at all) are moved to the quarantine folder. A step of
        another model raises :class:`IncompatibleCheckpointError` before anything moves.
        """
        restored, damaged = None, {}
        for step in reversed(self.all_steps()):
            try:
                restored = self.restore(step, abstract_state)
                break
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure means: damaged, fall back
                damaged[step] = _one_line(e)
        kept = int(restored[1]["step"]) if restored is not None else -1
        for step in [s for s in step_dirs(self.directory) if s > kept]:
            where = self.quarantine(step)
            why = damaged.get(step, "not a complete checkpoint")
            self.report(f"checkpoint at step {step} in {self.directory} is unusable ({why}); "
                        f"moved to {where}; "
                        + (f"resuming from step {kept}" if kept >= 0 else "no earlier checkpoint"))
        return restored

    def quarantine(self, step: int) -> pathlib.Path:
        """Move the folder of ``step`` to ``<quarantine>/<step>-<time>`` (process 0; all wait)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.quarantine_dir / f"{step}-{stamp}"
        n = 1
        while target.exists():
            target, n = self.quarantine_dir / f"{step}-{stamp}-{n}", n + 1
        if jax.process_index() == 0:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxembed quarantine {step}")
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_dirs(directory) -> list[int]:
    """The step numbers of the folders in checkpoint folder ``directory`` (none if absent)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def abstract_like(tree, shardings):
    """``ShapeDtypeStruct`` tree with ``shardings`` (what Orbax restores into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)
