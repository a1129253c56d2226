"""Errors a training run reports to the user in one line instead of a traceback.

:class:`RunError` is what the trainer raises when it refuses to start (an
invalid config, the workdir is locked, the config differs from the recorded
one, a checkpoint belongs to another model) or stops on purpose (non-finite
or collapsed training, a full disk). ``jaxembed train`` prints ``jaxembed train: <message>``
and exits with status 1; everything else keeps its traceback (it is a bug).

:func:`disk_full` recognises "No space left on device" however it arrives: an
``OSError`` with ``errno.ENOSPC`` from Python, or a TensorStore/Orbax error
whose text carries the OS error (``[os_error_code='28']``), anywhere in the
exception's cause/context chain.

Example::

    try:
        ckpt.save(step, state, meta=meta)
    except Exception as e:
        if disk_full(e):
            raise DiskFullError(ckpt.directory / str(step)) from e
        raise
"""

from __future__ import annotations

import errno
import os


class RunError(RuntimeError):
    """A run refused or stopped for a reason the user can act on (printed as one line)."""


class ConfigError(RunError, ValueError):
    """A config field has a bad value, or does not fit the devices (names field and value)."""


class NonFiniteError(RunError, FloatingPointError):
    """The loss, the gradient or the new train state is NaN or infinite."""


class DiskFullError(RunError):
    """Writing ``path`` failed with ENOSPC."""

    def __init__(self, path, detail: str = ""):
        self.path = str(path)
        super().__init__(f"no space left on device (ENOSPC) while writing {self.path}"
                         + (f"; {detail}" if detail else ""))


_ENOSPC_TEXT = (os.strerror(errno.ENOSPC), f"os_error_code='{errno.ENOSPC}'")


def _chain(exc: BaseException | None):
    """``exc``, then its ``__cause__`` (or ``__context__``), and so on."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or any exception in its cause/context chain is ENOSPC."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC)
               or any(t in str(e) for t in _ENOSPC_TEXT) for e in _chain(exc))


def written_path(exc: BaseException | None) -> str | None:
    """The first file name an ``OSError`` in ``exc``'s chain carries, if any."""
    return next((str(e.filename) for e in _chain(exc)
                 if isinstance(e, OSError) and e.filename is not None), None)
