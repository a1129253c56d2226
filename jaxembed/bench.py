"""``jaxembed bench NAME``: run the benchmark ``benchmarks/NAME.py`` of a source checkout.

The benchmarks are a package beside ``jaxembed`` (not installed with it): from
the repository root they run as ``python -m benchmarks.NAME``; this command
runs exactly that, in a fresh process with the checkout on ``PYTHONPATH``, so it
works from any directory (relative paths in the arguments stay relative to it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

NAMES = ("losses", "encode", "train_step", "align", "scaling", "grad_cache", "gemm",
         "dispatch_gap", "lora_memory", "embedding_grad", "profile_top", "plan_table",
         "decoder_encode")


def _checkout() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=NAMES, help="which benchmark to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER,
                        help="arguments passed on to the benchmark script")


def run(args: argparse.Namespace) -> int:
    root = _checkout()
    if not (root / "benchmarks" / f"{args.name}.py").exists():
        print(f"jaxembed bench: {root / 'benchmarks'} not found; benchmarks run from a source "
              "checkout", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", f"benchmarks.{args.name}", *args.script_args]
    return subprocess.run(cmd, env=env, check=False).returncode
