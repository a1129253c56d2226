"""Scaling of jaxembed's train step: batch size and (simulated) device count.

Two sweeps of :mod:`benchmarks.train_step` (the real step, unsupervised SimCSE,
AdamW, jax only) on its ``tiny-random`` BERT (2 layers, hidden 32) so that large
batches fit on a laptop CPU, each in a fresh process with
``--xla_force_host_platform_device_count`` set to its device count:

* batch 64 -> 4096 on 1 device;
* 1 / 2 / 4 / 8 simulated CPU devices (``train_step --devices n``, mesh
  ``data = n``) at a fixed global batch.

Per point: median step time over ``--steps`` steps after one warm-up, and the
compiled step's memory from XLA (``train_step --memory``: arguments + outputs +
temporaries - aliased, bytes; an XLA estimate, not an RSS reading).
Simulated devices share the same cores, so the device sweep measures sharding
overhead, not speed-up. Writes one JSON line per point, a markdown table, and
``--png`` (matplotlib) if given.

    python -m benchmarks.scaling --steps 3 --png /tmp/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from benchmarks.harness import emit, run_module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batches", default="64,256,1024,4096")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--device-batch", type=int, default=256, help="global batch of the device sweep")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--png", default="")
    p.add_argument("--replot", default="", help="plot/tabulate saved JSON lines instead of measuring")
    return p.parse_args(argv)


def sweep(batches: str, n_devices: int, args) -> list[dict]:
    """``train_step`` rows for ``batches`` on ``n_devices`` simulated CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    argv = ["--model", "tiny-random", "--objectives", "simcse_unsup", "--no-torch", "--memory",
            "--devices", str(n_devices), "--batch-sizes", batches, "--steps", str(args.steps),
            "--warmup", "1", "--seq-len", str(args.seq_len), "--matmul-n", "256"]
    return [r for r in run_module("train_step", argv, env) if r.get("bench") == "train_step"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            rows = [json.loads(line) for line in f if line.startswith("{")]
        return report(rows, args)
    rows = [dict(r, sweep="batch") for r in sweep(args.batches, 1, args)]
    for n in (int(d) for d in args.devices.split(",")):
        rows += [dict(r, sweep="devices") for r in sweep(str(args.device_batch), n, args)]
    return report(rows, args)


def report(rows: list[dict], args) -> int:
    for r in rows:
        r.setdefault("sweep", "batch")
        r.setdefault("devices", 1)
        r.setdefault("step_s", r.get("median_step_s"))  # lines saved before train_step did it
        emit(r)
    print("\n| sweep | batch | devices | step (s) | sentences/s | step memory (MiB) |\n|---|---|---|---|---|---|")
    for r in rows:
        mem = "n/a" if r.get("step_memory_bytes") is None else f"{r['step_memory_bytes'] / 2**20:.1f}"
        print(f"| {r['sweep']} | {r['batch']} | {r['devices']} | {r['step_s']:.3f} | "
              f"{r['sent_per_s']:.0f} | {mem} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        br = [r for r in rows if r["sweep"] == "batch"]
        a.loglog([r["batch"] for r in br], [r["step_s"] for r in br], "o-", label="step time (s)")
        a2 = a.twinx()
        a2.loglog([r["batch"] for r in br], [(r.get("step_memory_bytes") or 0) / 2**20 for r in br], "s--",
                  color="C1", label="memory (MiB)")
        a.set_xlabel("global batch (1 device)")
        a.set_ylabel("step time (s)")
        a2.set_ylabel("XLA step memory (MiB)")
        dr = [r for r in rows if r["sweep"] == "devices"]
        b.plot([r["devices"] for r in dr], [r["step_s"] for r in dr], "o-")
        b.set_xlabel(f"simulated CPU devices (global batch {args.device_batch})")
        b.set_ylabel("step time (s)")
        fig.suptitle("jaxembed train step, tiny BERT, SimCSE")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
