"""Per-step metrics: ``WORKDIR/metrics.jsonl`` (one JSON object a line) + TensorBoard.

Only process 0 writes. On resume from step ``s`` the rows of steps after
``s`` (written before the crash, and about to be recomputed) are dropped, so
the file always reads as one uninterrupted run. TensorBoard event files go to
``WORKDIR/tensorboard`` through ``tensorboardX`` (no TensorFlow); without it,
only the JSONL is written.

Example::

    with MetricsWriter(workdir) as w:
        w.write({"step": 1, "loss": 0.7, "lr": 3e-5})
"""

from __future__ import annotations

import json
import math
import pathlib


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsWriter:
    def __init__(self, workdir, *, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
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
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: _jsonable(v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
