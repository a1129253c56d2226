"""The run guard of a workdir: one trainer at a time, one config per run.

Two checks run before anything heavy (model, corpus, compilation):

* :class:`WorkdirLock`: an exclusive ``fcntl.flock`` on ``WORKDIR/train.lock``,
  held while the run lives. A second trainer on the same workdir is refused
  (naming the holder's pid and host, written into the file) instead of
  interleaving ``metrics.jsonl`` and racing on ``export/``. The kernel drops
  the lock when its process dies, so ``kill -9`` never leaves a stale lock;
  the file itself stays (deleting it would race with the next locker).
  Filesystems without ``flock`` (some FUSE mounts) get a warning and no lock.
* :func:`claim_config`: ``WORKDIR/train_config.json`` records the config of the
  run (written atomically at its first start). Resuming a workdir that holds
  checkpoints under a config that differs in a key outside
  :data:`~jaxembed.train.config.RESUMABLE_KEYS` is refused, naming every
  differing key, unless ``resume=force``.

Multi-host: only process 0 writes to the workdir, so only process 0 takes the
lock and reads the record; :func:`guard_workdir` broadcasts its verdict so the
other processes stop too (with a pointer to process 0's message) instead of
waiting forever in the first collective. The lock protects against a second
job whose process 0 runs on a host that sees the same file: on one host
always, across hosts where the shared filesystem forwards ``flock`` (NFSv4,
Lustre with ``-o flock``; not GCS FUSE, where two jobs are not detected).

Example::

    with guard_workdir(workdir, cfg, has_checkpoints=True, say=print):
        ...  # train
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Callable, Iterator

from jaxembed.files import atomic_write_text
from jaxembed.train.config import RESUMABLE_KEYS, TrainConfig, config_changes
from jaxembed.train.errors import RunError

LOCK_FILE = "train.lock"
CONFIG_FILE = "train_config.json"
_NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.ENOTSUP, errno.EINVAL)


class WorkdirBusyError(RunError):
    """Another live process holds the workdir lock."""


class ConfigMismatchError(RunError):
    """The workdir's recorded config differs from this run's."""


class WorkdirLock:
    """Exclusive, non-blocking ``flock`` on ``WORKDIR/train.lock`` (context manager)."""

    def __init__(self, workdir, *, say: Callable[[str], None] = print):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.say = say
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise WorkdirBusyError(
                f"workdir {self.path.parent} is in use by another trainer ({holder}); wait for it "
                f"to finish or use another --workdir") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_FLOCK:
                raise
            self.say(f"warning: the filesystem of {self.path} does not support flock "
                     f"({os.strerror(e.errno)}); nothing stops a second trainer on this workdir")
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(changes) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)


def claim_config(workdir, cfg: TrainConfig, *, has_checkpoints: bool,
                 say: Callable[[str], None] = print) -> None:
    """Check ``cfg`` against ``WORKDIR/train_config.json`` and record it there.

    With checkpoints present, a config that differs from the record outside
    ``RESUMABLE_KEYS`` raises :class:`ConfigMismatchError` (``resume=force``:
    a notice, and ``cfg`` becomes the record). Without checkpoints there is
    nothing to resume and ``cfg`` is simply recorded.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    new_text = json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n"
    if has_checkpoints and path.exists():
        try:
            recorded = json.loads(path.read_text())
        except ValueError as e:
            recorded = None
            if cfg.resume != "force":
                raise ConfigMismatchError(f"cannot read {path} ({e}); resume with --set "
                                          f"resume=force to record this config") from None
        changes = config_changes(recorded, cfg) if recorded is not None else []
        if changes and cfg.resume != "force":
            raise ConfigMismatchError(
                f"workdir {path.parent} holds a run with a different config: {_describe(changes)}. "
                f"Resume with the recorded values ({path}), start a new --workdir, or pass "
                f"--set resume=force to continue anyway (free to change: "
                f"{', '.join(sorted(RESUMABLE_KEYS))})")
        if changes:
            say(f"resume=force: continuing the run in {path.parent} with {_describe(changes)}")
    elif has_checkpoints:
        say(f"{path} is missing (a workdir from an older jaxembed?): recording this config")
    if not path.exists() or path.read_text() != new_text:
        atomic_write_text(path, new_text)


@contextlib.contextmanager
def guard_workdir(workdir, cfg: TrainConfig, *, has_checkpoints: bool,
                  say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the workdir lock and check the config record for the duration of a run.

    Process 0 does both; with several processes its verdict is broadcast, so all
    of them raise (:class:`RunError`) or all go on.
    """
    import jax

    lock = WorkdirLock(workdir, say=say)
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
            claim_config(workdir, cfg, has_checkpoints=has_checkpoints, say=say)
        except Exception as e:  # noqa: BLE001 - raised below, after telling the other processes
            lock.release()
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = RunError(f"process 0 refused workdir {workdir} (its output says why)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.release()
