"""``jaxembed eval-sts``: STS12-16, STS-B and SICK-R for a model folder or id.

    jaxembed eval-sts --model PATH_OR_ID --data-dir DIR [--pooling P]
        [--tasks STS12,...] [--aggregation all|wmean] [--batch-size N] [--json]

Prints the paper-style table; with ``--json`` the last stdout line is one JSON
object ``{"STS12": ..., "Avg": ...}`` (values x 100, evaluated tasks only).
The data is read before the model is loaded: a missing folder or a malformed
file (named by ``FILE:LINE``) ends the run with exit status 2. A score that is
undefined (constant gold scores or constant similarities) is printed as
``nan`` in the table and ``null`` in the JSON, explained on stderr, and makes
the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from jaxembed.argtypes import positive_int
from jaxembed.eval.datasets import STS_TASKS


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in STS_TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(
            f"unknown tasks {unknown}; choose from {','.join(STS_TASKS)}"
        )
    return tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (safetensors) or hub id")
    parser.add_argument(
        "--data-dir",
        required=True,
        help="folder holding SentEval's downstream/ (or downstream/ itself)",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        help="cls, cls_before_pooler, mean, max or last4_mean (default: the model's own)",
    )
    parser.add_argument(
        "--tasks",
        type=_task_list,
        default=list(STS_TASKS),
        help="comma-separated subset of " + ",".join(STS_TASKS),
    )
    parser.add_argument(
        "--aggregation",
        choices=("all", "wmean"),
        default="all",
        help="STS12-16: one Spearman over all subsets (papers) or size-weighted mean",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="truncate sentences to this many tokens",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line with the scores last"
    )


def run(args: argparse.Namespace) -> int:
    from jaxembed.eval.datasets import load_sts_task
    from jaxembed.eval.sts import format_table, score_tasks, undefined_reason

    try:
        data = {task: load_sts_task(args.data_dir, task) for task in args.tasks}
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from jaxembed.models.encoder import Encoder

    encoder = Encoder.from_pretrained(args.model, pooling=args.pooling)

    def encode_fn(sentences):
        return encoder.encode(sentences, batch_size=args.batch_size, max_length=args.max_length)

    results = score_tasks(encode_fn, data, aggregation=args.aggregation)
    print(format_table(results))
    undefined = [task for task in data if not math.isfinite(results[task])]
    for task in undefined:
        why = undefined_reason(data[task], aggregation=args.aggregation)
        print(f"error: the {task} Spearman is undefined: {why}", file=sys.stderr)
    if args.json:
        scores = {k: float(v) if math.isfinite(v) else None for k, v in results.items()}
        print(json.dumps(scores, allow_nan=False))
    return 1 if undefined else 0
