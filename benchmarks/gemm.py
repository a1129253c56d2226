"""The encoder's own matrix products: XLA:CPU (as jax calls it) against PyTorch (MKL/oneDNN).

Why this exists. On the 2-core CPU the jaxembed train step and ``encode`` trail
PyTorch although both do the same FLOPs. A profile of the MiniLM train step
(``jax.profiler`` + the optimised HLO) puts most of its time in the dense
products of the encoder (``LOG.md``, train_step, session 2), so the question
this script answers is: for exactly those products, how fast is XLA's matmul
on this machine, and how fast is the one PyTorch calls? If XLA's kernel is
slower at these shapes, no change in the model code can bring the step to
PyTorch's speed.

Shapes, for a model with hidden size H, intermediate size I and T tokens per
step (T = batch x views x seq): the forward products ``[T,H]x[H,H]`` (Q, K, V,
attention output), ``[T,H]x[H,I]``, ``[T,I]x[I,H]``, and the backward's
weight gradients ``[H,T]x[T,H]``, ``[H,T]x[T,I]``.

Each XLA variant (``--variants``: a list of ``XLA_FLAGS`` strings, ``default``
for none) runs in its own subprocess, because XLA reads its flags once per
process; PyTorch runs in the same subprocesses, in a separate block *after*
the jax block, never call-by-call interleaved: XLA's and PyTorch's thread pools
interleaved call by call slowed PyTorch's products by a third here (``LOG.md``).
Reported: best and median GFLOP/s over ``--repeats`` calls after one
warm-up, and jax/torch ratios of the medians. One JSON line per shape and variant.

    python -m benchmarks.gemm                       # MiniLM, batch 64, 2 views, seq 32
    python -m benchmarks.gemm --hidden 768 --intermediate 3072
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from benchmarks.harness import emit, machine, run_module, time_calls

DEFAULT_VARIANTS = (
    "default",
    "--xla_cpu_experimental_ynn_fusion_type=",  # YNNPACK off: Eigen/XNNPACK dots
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=",
)


def shapes(tokens: int, hidden: int, inter: int) -> list[tuple[str, int, int, int]]:
    """``(name, m, k, n)`` of the encoder layer's products for ``tokens`` rows."""
    return [
        ("qkvo_forward", tokens, hidden, hidden),
        ("ffn_in_forward", tokens, hidden, inter),
        ("ffn_out_forward", tokens, inter, hidden),
        ("qkvo_weight_grad", hidden, tokens, hidden),
        ("ffn_weight_grad", hidden, tokens, inter),
    ]


def _rates(fn, flops: float, repeats: int) -> tuple[float, float]:
    """(best, median) GFLOP/s of ``repeats`` calls after one warm-up."""
    times, _ = time_calls(fn, repeats=repeats, warmup=1)
    return flops / min(times) / 1e9, flops / statistics.median(times) / 1e9


def worker(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    cores = len(os.sched_getaffinity(0))  # honours taskset
    torch.set_num_threads(cores)
    rng = np.random.default_rng(0)
    cases = shapes(args.tokens, args.hidden, args.intermediate)
    data = [(rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32))
            for _, m, k, n in cases]
    flops = [2.0 * m * k * n for _, m, k, n in cases]
    mm = jax.jit(jnp.matmul)
    jax_rates = []
    for (a, b), f in zip(data, flops):  # the whole jax block first ...
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        jax_rates.append(_rates(lambda: mm(ja, jb).block_until_ready(), f, args.repeats))
    torch_rates = []
    for (a, b), f in zip(data, flops):  # ... then the whole torch block
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch_rates.append(_rates(lambda: torch.mm(ta, tb), f, args.repeats))
    for (name, m, k, n), (jb_, jm), (tb_, tm) in zip(cases, jax_rates, torch_rates):
        emit({
            "benchmark": "gemm", "shape": name, "m": m, "k": k, "n": n,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax_gflops_best": round(jb_, 1), "jax_gflops_median": round(jm, 1),
            "torch_gflops_best": round(tb_, 1), "torch_gflops_median": round(tm, 1),
            "jax_over_torch": round(jm / tm, 3), "repeats": args.repeats,
            **machine(), "cores": cores,
        })


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64 * 2 * 32,
                   help="rows of the activations: batch x views x seq (default 4096)")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS),
                   help="XLA_FLAGS per subprocess; 'default' = none")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    passthrough = ["--tokens", str(args.tokens), "--hidden", str(args.hidden),
                   "--intermediate", str(args.intermediate), "--repeats", str(args.repeats)]
    rows = []
    for variant in args.variants:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)
        if variant != "default":
            env["XLA_FLAGS"] = variant
        for row in run_module("gemm", ["--worker", *passthrough], env=env):
            rows.append(emit(row))
    print("\n| XLA_FLAGS | product | m x k x n | jax GFLOP/s | torch GFLOP/s | jax/torch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['xla_flags'] or 'default'}` | {r['shape']} | {r['m']}x{r['k']}x{r['n']} | "
              f"{r['jax_gflops_median']:.0f} | {r['torch_gflops_median']:.0f} | {r['jax_over_torch']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
