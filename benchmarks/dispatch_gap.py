"""The trainer's step loop: how long the device waits for the host between steps.

Runs the real ``jaxembed.train.trainer.train`` on a small config (the
quick-start corpus, the random 2-layer ``tiny-random`` model, no evaluation,
one checkpoint at the end) with its compiled step wrapped to note, at every
dispatch, the time and whether the previous step had already finished (then
the device sat idle until this dispatch). Reported over the steady-state steps
(the first ``--skip`` and the last one, which saves, left out):

* ``step_interval_ms``: median time between consecutive dispatches (the loop's
  time per step);
* ``idle_at_dispatch``: fraction of dispatches that found the previous step
  done (the device had run dry: the host was the bottleneck for that step).

Run it on two checkouts to compare loops (a per-step ``jax.device_get`` before
the next dispatch, against metrics fetched one step behind)::

    python -m benchmarks.dispatch_gap [--steps 300] [--batch-size 16] [--max-length 16]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from benchmarks.harness import emit, machine

QUICKSTART = pathlib.Path(__file__).resolve().parent.parent / "configs" / "quickstart.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the numbers")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--label", default="", help="a name for this checkout in the output")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)
    if args.steps <= args.skip + 2:
        p.error(f"--steps must exceed --skip + 2, got {args.steps} and {args.skip}")
    return args


def _timed(make_step, log: list):
    """``make_train_step`` whose step notes ``(time, previous step already done)``."""
    import jax

    def make(*a, **k):
        step_fn = make_step(*a, **k)
        previous = {}

        def step(state, batch):
            done = all(x.is_ready() for x in jax.tree.leaves(previous.get("m", {})))
            log.append((time.perf_counter(), done))
            state, metrics = step_fn(state, batch)
            previous["m"] = metrics
            return state, metrics

        return step

    return make


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from jaxembed.train import trainer
    from jaxembed.train.config import load_config

    cfg = load_config(f"{QUICKSTART}:tiny", overrides=[
        f"steps={args.steps}", f"batch_size={args.batch_size}", f"max_length={args.max_length}",
        "eval_every=0", f"save_every={args.steps}", "progress=false", "log_every=1"])
    log: list = []
    original = trainer.make_train_step
    trainer.make_train_step = _timed(original, log)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            trainer.train(cfg, workdir, echo=lambda _: None)
    finally:
        trainer.make_train_step = original
    steady = log[args.skip:-1]
    intervals = [b[0] - a[0] for a, b in zip(steady, steady[1:])]
    emit({"bench": "dispatch_gap", "label": args.label, **machine(),
          "devices": jax.device_count(), "steps": args.steps, "batch_size": args.batch_size,
          "max_length": args.max_length, "measured_steps": len(intervals),
          "step_interval_ms": round(1e3 * statistics.median(intervals), 3),
          "step_interval_ms_mean": round(1e3 * statistics.fmean(intervals), 3),
          "idle_at_dispatch": round(sum(d for _, d in steady[1:]) / len(intervals), 3)},
         args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
