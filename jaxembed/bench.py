"""``jaxembed bench NAME``: run ``benchmarks/NAME.py`` from a source checkout."""

from __future__ import annotations

import argparse
import pathlib
import runpy
import sys

NAMES = ("losses", "encode", "train_step", "align", "scaling", "grad_cache", "gemm", "gpu")


def _benchmarks_dir() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=NAMES, help="which benchmark to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER,
                        help="arguments passed on to the benchmark script")


def run(args: argparse.Namespace) -> int:
    script = _benchmarks_dir() / f"{args.name}.py"
    if not script.exists():
        print(f"jaxembed bench: {script} not found; benchmarks run from a source checkout",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.script_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0
