"""Per-step metrics: ``WORKDIR/metrics.jsonl`` (one JSON object a line) + TensorBoard.

Only process 0 writes. Rows are appended; a kill can cut only the last line,
which the next start drops. On resume from step ``s`` the rows of steps after
``s`` (written before the crash, and about to be recomputed) are dropped, so
the file always reads as one uninterrupted run; that rewrite is atomic
(:func:`jaxembed.files.atomic_write_text`), so a kill during it leaves the old
file, never an empty one.

TensorBoard event files go to ``WORKDIR/tensorboard`` through
``tensorboardX``'s synchronous ``EventsWriter`` (no TensorFlow, no writer
thread: a write error such as a full disk is raised here, in the training
thread, instead of killing a background thread and surfacing at exit as
``OSError: handle is closed``); events are flushed every ``flush_secs`` and at
close. Without ``tensorboardX`` only the JSONL is written.

Example::

    with MetricsWriter(workdir) as w:
        w.write({"step": 1, "loss": 0.7, "lr": 3e-5})
"""

from __future__ import annotations

import json
import math
import pathlib
import time

from jaxembed.files import atomic_write_text, naming


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class _Events:
    """Scalars into one TensorBoard event file, written in the caller's thread."""

    def __init__(self, directory: pathlib.Path):
        from tensorboardX.event_file_writer import EventsWriter

        directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(directory / "events"))
        self.path = directory  # named in write errors

    def scalars(self, step: int, values: dict) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        now = time.time()
        with naming(self.path):
            for k, v in values.items():
                self._writer.write_event(Event(wall_time=now, step=step, summary=scalar(k, v)))

    def flush(self) -> None:
        with naming(self.path):
            self._writer.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.close()


class MetricsWriter:
    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True,
                 flush_secs: float = 30.0):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._flush_secs, self._next_flush = flush_secs, time.monotonic() + flush_secs
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if enabled and tensorboard:
            try:
                self._tb = _Events(pathlib.Path(workdir) / "tensorboard")
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step > step`` (and unparsable lines, e.g. a line cut by a kill)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: _jsonable(v) for k, v in row.items()}
        with naming(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            self._tb.scalars(int(row.get("step", 0)), {
                k: v for k, v in row.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
            if time.monotonic() >= self._next_flush:
                self._tb.flush()
                self._next_flush = time.monotonic() + self._flush_secs

    def close(self) -> None:
        """Flush and close the event file (raises what the flush raises)."""
        tb, self._tb = self._tb, None
        if tb is not None:
            tb.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:  # a run already failing: its error is the one to report
            try:
                self.close()
            except OSError:
                pass


def format_loss(value: float) -> str:
    """A loss for people: 4 significant digits whatever its scale (``0.6931``,
    ``1.234e-05``, ``nan``), so a small loss still shows it moving."""
    return f"{value:.4g}"


def read_metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
