"""The top kernels of a ``jax.profiler`` trace: total time per kernel name, largest first.

Reads a ``.xplane.pb`` (what ``train_step --profile DIR`` writes) with
``jax.profiler.ProfileData`` and sums event durations per name over the device
planes (``/device:GPU:0`` ...: one line per stream, one event per kernel launch).
A trace without device planes (a CPU run) falls back to the host plane's
``XLA Ops`` lines, or, failing those, all its lines, so a smoke run takes the same
path. One JSON line per kernel (name, total ms, calls, share of the plane's
summed time), then a table.

    python -m benchmarks.profile_top benchmarks/results/gpu_X/profile/train_step.xplane.pb
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys

from benchmarks.harness import emit


def kernel_times(path: str | os.PathLike) -> tuple[str, dict[str, list[float]]]:
    """``(where, {name: [total ns, calls]})`` over the device planes of the trace (or the
    host plane's XLA op lines without a device); ``where`` names what was summed."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(path))
    planes = list(data.planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    if devices:
        lines = [(p.name, line) for p in devices for line in p.lines
                 if not line.name.startswith("XLA")]  # derived module/op lines repeat kernels
        where = ",".join(p.name for p in devices)
    else:
        host = [p for p in planes if p.name.startswith("/host:")]
        lines = [(p.name, line) for p in host for line in p.lines]
        xla = [(n, line) for n, line in lines if line.name.startswith("XLA Ops")]
        lines, where = (xla, "host XLA Ops") if xla else (lines, "host (all lines)")
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for _, line in lines:
        for event in line.events:
            total = totals[event.name]
            total[0] += event.duration_ns
            total[1] += 1
    return where, dict(totals)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="a .xplane.pb file, or a folder holding one")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", default="", help="folder for results.jsonl")
    args = p.parse_args(argv)
    trace = pathlib.Path(args.trace)
    if trace.is_dir():
        found = sorted(trace.rglob("*.xplane.pb"))
        if not found:
            raise SystemExit(f"no .xplane.pb under {trace}")
        trace = found[0]
    where, totals = kernel_times(trace)
    overall = sum(t for t, _ in totals.values()) or 1.0
    out = pathlib.Path(args.out) / "results.jsonl" if args.out else None
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:args.top]
    for name, (ns, calls) in top:
        emit({"bench": "profile_top", "trace": trace.name, "where": where, "kernel": name,
              "total_ms": ns / 1e6, "calls": calls, "share": ns / overall}, out)
    print(f"\ntop {len(top)} of {len(totals)} kernels in {trace} ({where}), "
          f"{overall / 1e6:.1f} ms summed")
    print("| kernel | total ms | calls | share |\n|---|---|---|---|")
    for name, (ns, calls) in top:
        print(f"| {name[:90]} | {ns / 1e6:.2f} | {calls} | {ns / overall:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
