"""Scaling of jaxembed's train step: batch size and (simulated) device count.

Two sweeps with the real step (``make_train_step``, unsupervised SimCSE, AdamW)
on a tiny random BERT (``tiny-random``: 2 layers, hidden 32) so that large
batches fit on a laptop CPU:

* batch 64 -> 4096 on 1 device;
* 1 / 2 / 4 / 8 simulated CPU devices (``--xla_force_host_platform_device_count``,
  one subprocess per count) at a fixed global batch, mesh ``data = n``.

Per point: median step time over ``--steps`` steps after one warm-up, and the
compiled step's memory from XLA (``compiled.memory_analysis()``: arguments +
outputs + temporaries - aliased, bytes; an XLA estimate, not an RSS reading).
Simulated devices share the same cores, so the device sweep measures sharding
overhead, not speed-up. Writes one JSON line per point, a markdown table, and
``--png`` (matplotlib) if given.

    python benchmarks/scaling.py --steps 3 --png benchmarks/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batches", default="64,256,1024,4096")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--device-batch", type=int, default=256, help="global batch of the device sweep")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--png", default="")
    p.add_argument("--replot", default="", help="plot/tabulate saved JSON lines instead of measuring")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--points", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(batch: int, n_devices: int, steps: int, seq_len: int) -> dict:
    import jax
    import numpy as np

    from jaxembed.train import sharding as shd
    from jaxembed.train.config import TrainConfig
    from jaxembed.train.objectives import build_objective
    from jaxembed.train.state import make_optimizer
    from jaxembed.train.step import build_train_step
    from jaxembed.train.trainer import load_encoder

    cfg = TrainConfig(model="tiny-random", objective="simcse_unsup", max_length=seq_len, batch_size=batch)
    enc = load_encoder(cfg)
    obj = build_objective(cfg, enc)
    tx, schedule = make_optimizer(learning_rate=1e-4, total_steps=1000)
    mesh = shd.make_mesh(data=n_devices, fsdp=1, devices=jax.devices()[:n_devices])
    state, step = build_train_step(enc, obj, tx, schedule, mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(batch, 1, seq_len)).astype(np.int32)
    host = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    placed = shd.shard_batch(host, mesh)
    compiled = step.lower(state, placed).compile()
    mem = compiled.memory_analysis()
    mem_bytes = None
    if mem is not None:
        mem_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                        - mem.alias_size_in_bytes)
    state, m = step(state, placed)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, placed)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "devices": n_devices, "seq_len": seq_len, "median_step_s": med,
            "sent_per_s": batch / med, "step_memory_bytes": mem_bytes}


def run_worker(args) -> int:
    for point in args.points.split(";"):
        batch, n = (int(x) for x in point.split(","))
        print(json.dumps(measure(batch, n, args.steps, args.seq_len)), flush=True)
    return 0


def spawn(points: list[tuple[int, int]], n_devices: int, args) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--seq-len", str(args.seq_len),
           "--points", ";".join(f"{b},{n}" for b, n in points)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.replot:
        with open(args.replot) as f:
            rows = [json.loads(line) for line in f if line.startswith("{")]
        return report(rows, args)
    rows = spawn([(int(b), 1) for b in args.batches.split(",")], 1, args)
    for n in (int(d) for d in args.devices.split(",")):
        rows += [dict(r, sweep="devices") for r in spawn([(args.device_batch, n)], n, args)]
    return report(rows, args)


def report(rows: list[dict], args) -> int:
    for r in rows:
        r.setdefault("sweep", "batch")
        print(json.dumps(r))
    print("\n| sweep | batch | devices | step (s) | sentences/s | step memory (MiB) |\n|---|---|---|---|---|---|")
    for r in rows:
        mem = "n/a" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.1f}"
        print(f"| {r['sweep']} | {r['batch']} | {r['devices']} | {r['median_step_s']:.3f} | "
              f"{r['sent_per_s']:.0f} | {mem} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        br = [r for r in rows if r["sweep"] == "batch"]
        a.loglog([r["batch"] for r in br], [r["median_step_s"] for r in br], "o-", label="step time (s)")
        a2 = a.twinx()
        a2.loglog([r["batch"] for r in br], [(r["step_memory_bytes"] or 0) / 2**20 for r in br], "s--",
                  color="C1", label="memory (MiB)")
        a.set_xlabel("global batch (1 device)")
        a.set_ylabel("step time (s)")
        a2.set_ylabel("XLA step memory (MiB)")
        dr = [r for r in rows if r["sweep"] == "devices"]
        b.plot([r["devices"] for r in dr], [r["median_step_s"] for r in dr], "o-")
        b.set_xlabel(f"simulated CPU devices (global batch {args.device_batch})")
        b.set_ylabel("step time (s)")
        fig.suptitle("jaxembed train step, tiny BERT, SimCSE")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
