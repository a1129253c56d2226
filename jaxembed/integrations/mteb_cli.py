"""``jaxembed eval-mteb``: MTEB tasks for a model folder or hub id, scored by ``mteb``.

    jaxembed eval-mteb --model PATH_OR_ID [--tasks STSBenchmark,Banking77,...]
        [--sts-file FILE ...] [--output-dir DIR] [--batch-size N] [--name ORG/NAME]
        [--prompt KEY=TEXT ...] [--pooling P] [--max-length N] [--json]

``--tasks`` takes mteb task names (``mteb.get_tasks``); their data comes from
the Hugging Face hub or its local cache (``HF_HUB_OFFLINE=1`` uses the cache
only). ``--sts-file`` adds a local STS task per file, in the STS Benchmark
format (tab-separated, score in column 5, sentences in 6-7; see
``jaxembed.eval.datasets.read_stsb``), named ``LocalSTS-<file stem>``.

Prints one row per task, split and subset with mteb's main score x 100; with
``--json`` the last stdout line is ``{"TASK": score x 100, ...}`` (main score,
averaged over splits and subsets as ``TaskResult.get_score`` does). With
``--output-dir`` mteb writes its result files there
(``DIR/results/<org>__<name>/<revision>/<TASK>.json``), replacing earlier ones.

Errors are one ``error: ...`` line on stderr. Exit status: 2 for bad input
(``mteb`` missing, an unknown task name, an unreadable file or model folder, an
output folder that cannot be made), found before any task runs; 1 when a task
fails to evaluate (e.g. its data cannot be downloaded), after the others ran,
or when the evaluation stops (e.g. the disk is full).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import sys

from jaxembed.argtypes import positive_int
from jaxembed.eval.datasets import read_stsb
from jaxembed.integrations.mteb import MTEBEncoder, import_mteb, sts_task


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one task name")
    return names


def _prompt(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=TEXT (e.g. query='query: '), got {text!r}")
    return key.strip(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (safetensors) or hub id")
    parser.add_argument(
        "--tasks", type=_names, default=[], help="comma-separated mteb task names (STS12,SciFact)"
    )
    parser.add_argument(
        "--sts-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a local STS task in STS Benchmark format (repeatable)",
    )
    parser.add_argument("--output-dir", default=None, help="write mteb's result files here")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--name", default=None, help="ORG/NAME to file results under")
    parser.add_argument(
        "--prompt",
        type=_prompt,
        action="append",
        default=[],
        metavar="KEY=TEXT",
        help="prompt for a task name, task type, query or document side (repeatable)",
    )
    parser.add_argument(
        "--pooling", default=None, help="cls, cls_before_pooler, mean, max or last4_mean"
    )
    parser.add_argument("--max-length", type=positive_int, default=None, help="tokens per text")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line with the scores last"
    )


def _tasks(args) -> list:
    """mteb tasks for ``--tasks`` and ``--sts-file``; ``ValueError`` for bad input."""
    mteb = import_mteb()
    if not args.tasks and not args.sts_file:
        raise ValueError("give --tasks, --sts-file or both")
    try:
        tasks = list(mteb.get_tasks(tasks=args.tasks)) if args.tasks else []
    except KeyError as e:  # mteb: "KeyError: 'STSBenchmrk' not found. Did you mean: ...?"
        raise ValueError(f"--tasks: mteb task {str(e.args[0]).removeprefix('KeyError: ')}") from None
    for path in args.sts_file:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"--sts-file {path}: no such file")
        tasks.append(sts_task(*read_stsb(path), name=f"LocalSTS-{path.stem}"))
    names = [task.metadata.name for task in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"tasks named more than once: {repeated}")
    return tasks


def _one_line(error) -> str:
    """An exception (or mteb's text of one) on one line; the hub's messages span several."""
    return " ".join(str(error).split()) or type(error).__name__


def _not_task_error(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Error while running task")


def run(args: argparse.Namespace) -> int:
    try:
        tasks = _tasks(args)
        mteb = import_mteb()
        cache = mteb.ResultCache(cache_path=args.output_dir) if args.output_dir else None
        model = MTEBEncoder(
            args.model,
            name=args.name,
            prompts=dict(args.prompt),
            pooling=args.pooling,
            max_length=args.max_length,
        )
    except (ImportError, OSError, ValueError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2

    # mteb logs each failed task as it happens; it is printed once, on one line, below
    mteb_log = logging.getLogger("mteb.evaluate")
    mteb_log.addFilter(_not_task_error)
    try:  # a task that fails is reported in result.exceptions; this is for the rest
        result = mteb.evaluate(
            model,
            tasks,
            cache=cache,
            overwrite_strategy="always",
            raise_error=False,
            encode_kwargs={"batch_size": args.batch_size},
            show_progress_bar=False,
        )
    except (OSError, RuntimeError, ValueError) as e:  # disk full, device out of memory, ...
        print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        mteb_log.removeFilter(_not_task_error)
    metric = {task.metadata.name: task.metadata.main_score for task in tasks}
    print(f"{'task':<32} {'split':<12} {'subset':<12} {'metric':<20} {'score':>7}")
    scores = {}
    for task_result in result.task_results:
        name = task_result.task_name
        for split, entries in task_result.scores.items():
            for entry in entries:
                print(f"{name:<32} {split:<12} {entry['hf_subset']:<12} {metric[name]:<20} "
                      f"{100 * float(entry['main_score']):7.2f}")
        score = 100 * float(task_result.get_score())
        scores[name] = score if math.isfinite(score) else None
    for error in result.exceptions:
        print(f"error: task {error.task_name} failed: {_one_line(error.exception)}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(scores, allow_nan=False))
    return 1 if result.exceptions else 0
