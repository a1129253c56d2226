"""Crash-safe writes: a file or a whole folder appears complete or not at all.

Every write goes to a temporary sibling (``.NAME.tmp-XXXX`` in the same
folder, so the rename never crosses a filesystem), is flushed with ``fsync``,
and is then renamed over the target; the folder is fsynced so the rename
itself survives a power cut. A reader, or a run resumed after ``kill -9``,
sees the old content or the new one, never a prefix (POSIX ``rename(2)``).

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: one file, by
  ``os.replace``.
* :func:`atomic_dir`: a folder (e.g. an exported model) built inside a
  temporary folder, then swapped in. On Linux the swap is one
  ``renameat2(RENAME_EXCHANGE)`` call, so ``path`` is never missing; where that
  is unavailable (other systems, some network filesystems) it is two renames,
  with a moment in which ``path`` is absent but never partial.
* :func:`naming`: give an ``OSError`` raised while writing ``path`` that path,
  so "No space left on device" says where.

Temporary siblings left behind by a killed process are removed by the next
write of the same target. One writer per target is assumed (the trainer holds
a workdir lock, :mod:`jaxembed.train.workdir`).

Example::

    atomic_write_text(workdir / "train_config.json", json.dumps(cfg))
    with atomic_dir(workdir / "export") as tmp:
        encoder.save_pretrained(tmp)        # export/ is replaced only if this returns
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Iterator

_TMP, _OLD = ".tmp-", ".old-"


@contextlib.contextmanager
def naming(path) -> Iterator[None]:
    """Re-raise an ``OSError`` that carries no file name with ``path`` as its name."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def fsync_dir(path) -> None:
    """Make the entries of folder ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory; the data itself is synced
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: pathlib.Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def _remove_leftovers(path: pathlib.Path) -> None:
    """Delete ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings a killed writer left."""
    for marker in (_TMP, _OLD):
        for stale in path.parent.glob(f".{path.name}{marker}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace the file ``path`` by ``data``: old or new content, never a prefix."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make shared outputs private
        with naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text: str, *, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); ``False`` if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_dir(path) -> Iterator[pathlib.Path]:
    """Yield an empty temporary folder; on normal exit it replaces the folder ``path``.

    If the block raises (or the process dies) ``path`` is left as it was and
    the temporary folder is removed (by the next call, after a kill).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP}", dir=path.parent))
    try:
        yield tmp
        with naming(tmp):
            _fsync_tree(tmp)
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}{_OLD}", dir=path.parent))
            os.replace(path, old)  # replaces the empty placeholder folder
            os.replace(tmp, path)
            tmp = old
        fsync_dir(path.parent)
    finally:
        if tmp.exists():  # the partial new folder, or the old one after the swap
            shutil.rmtree(tmp, ignore_errors=True)
