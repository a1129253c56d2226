"""Embedding gradients: the bare scatter-adds of BERT's tables, and each ``embedding_lookup``.

Issue #15: with ``flax.linen.Embed(dtype=bf16)`` the bf16 train step's embedding
gradients were bf16 scatter-adds, which XLA:GPU lowers to compare-and-swap loops
(openxla/xla#26371). Two parts (``--parts``), at the exact shapes of that step
(``tokens = batch x views x seq``, BERT vocabulary 30522, 512 positions, 2 token types):

* ``scatter``: ``zeros([V, H], dtype).at[ids].add(g)`` for each table and dtype in
  ``--scatter-dtypes``: ``word`` with the batch's ids, ``position`` with ``0..L-1`` per
  row (each row gets ``batch x views`` adds), ``type`` with every id 0 (every token
  adds into row 0: the worst contention). With ``--ptx-dir DIR`` (XLA dumps there;
  GPU only) the dumped PTX of each scatter is grepped for ``atom.global.cas`` (the
  compare-and-swap loop) and ``atom.global.add``; run once with
  ``XLA_FLAGS=--xla_backend_extra_options=-nvptx-allow-ftz-atomics`` to see if bf16
  then gets native atomics (``gpu.sh investigate`` does both).
* ``lookup``: forward + backward (gradient of ``sum(out * cot)`` wrt all parameters) of
  :class:`jaxembed.models.transformer.Embeddings` (three tables, float32 sum, LayerNorm,
  dropout off) in ``--dtype``, once per ``--lookups`` value: ``cast_take`` (the
  pre-#15 ``Embed(dtype)``), ``take`` (gather from the float32 table, cast after),
  ``onehot`` (one-hot matmuls for every table), ``auto`` (take / one-hot / slice).

Timing (:mod:`benchmarks.harness`): compiled outside the clock; on a CPU the cases of a
part are interleaved call by call, on an accelerator timed one at a time. One JSON
line per case (median seconds, and the ratio to the part's reference case: bf16 for
scatters, ``cast_take`` for lookups), then one per grepped PTX module.

    python -m benchmarks.embedding_grad                                  # CPU, BERT-base shapes
    python -m benchmarks.embedding_grad --hidden 32 --batch 8 --repeats 3   # smoke
    XLA_FLAGS=--xla_dump_to=/tmp/d python -m benchmarks.embedding_grad --parts scatter \\
        --ptx-dir /tmp/d                                                 # one GPU
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import sys

import numpy as np

from benchmarks.harness import emit, interleave, machine, time_calls

VOCAB, POSITIONS, TYPES = 30522, 512, 2
LOOKUPS = ("cast_take", "take", "onehot", "auto")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="scatter,lookup")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=128, help="sentences")
    p.add_argument("--views", type=int, default=2, help="dropout views per sentence")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="compute dtype of the lookup part")
    p.add_argument("--scatter-dtypes", default="bfloat16,float32")
    p.add_argument("--lookups", default=",".join(LOOKUPS))
    p.add_argument("--repeats", type=int, default=20, help="timed calls per case (median)")
    p.add_argument("--ptx-dir", default="", help="XLA's dump folder to grep for atomics")
    p.add_argument("--tag", default="", help="a label copied into every row (e.g. the flags)")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for results.jsonl")
    args = p.parse_args(argv)
    for name in ("parts", "scatter_dtypes", "lookups"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    return args


def token_ids(rng: np.random.Generator, args) -> dict[str, np.ndarray]:
    """int32 ``[batch * views, seq]`` ids of each table, as the train step sees them."""
    rows = args.batch * args.views
    shape = (rows, args.seq_len)
    return {"word": rng.integers(1000, VOCAB, size=shape).astype(np.int32),
            "position": np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), shape),
            "type": np.zeros(shape, np.int32)}


def scatter_cases(args, ids: dict[str, np.ndarray]) -> dict[str, tuple]:
    """``name -> (jitted scatter-add, its arguments)``; each function is named
    ``scatter_<table>_<dtype>`` so its XLA module (and PTX file) says which it is."""
    import jax
    import jax.numpy as jnp

    sizes = {"word": VOCAB, "position": POSITIONS, "type": TYPES}
    cases = {}
    for table, rows in sizes.items():
        for dtype_name in args.scatter_dtypes:
            dtype = jnp.dtype(dtype_name)
            g = jax.random.normal(jax.random.key(1), ids[table].shape + (args.hidden,), dtype)

            def scatter(idx, g, rows=rows, dtype=dtype):
                return jnp.zeros((rows, g.shape[-1]), dtype).at[idx].add(g)

            name = f"scatter_{table}_{dtype.name}"
            scatter.__name__ = scatter.__qualname__ = name
            cases[name] = (jax.jit(scatter), (jnp.asarray(ids[table]), g))
    return cases


def lookup_cases(args, ids: dict[str, np.ndarray]) -> dict[str, tuple]:
    """``name -> (jitted value-and-grad of the Embeddings module, its arguments)``."""
    import jax
    import jax.numpy as jnp

    from jaxembed.models.config import EncoderConfig
    from jaxembed.models.transformer import Embeddings

    cfg = EncoderConfig(vocab_size=VOCAB, hidden_size=args.hidden,
                        num_attention_heads=1, intermediate_size=args.hidden,
                        max_position_embeddings=POSITIONS, type_vocab_size=TYPES)
    dtype = jnp.dtype(args.dtype)
    word, types = jnp.asarray(ids["word"]), jnp.asarray(ids["type"])
    cot = jax.random.normal(jax.random.key(2), word.shape + (args.hidden,), dtype)
    cases = {}
    for lookup in args.lookups:
        module = Embeddings(cfg, dtype=dtype, embedding_lookup=lookup)
        params = module.init(jax.random.key(0), word, types, deterministic=True)

        def loss(params, word, types, cot, module=module):
            out = module.apply(params, word, types, deterministic=True)
            return jnp.sum((out * cot).astype(jnp.float32))

        cases[f"lookup_{lookup}"] = (jax.jit(jax.value_and_grad(loss)),
                                     (params, word, types, cot))
    return cases


def time_cases(cases: dict[str, tuple], *, repeats: int, backend: str) -> dict[str, float]:
    """Median seconds per call of every case, compiled and warmed up outside the clock."""
    import jax

    calls = {name: (lambda fn=fn, a=a: jax.block_until_ready(fn(*a)))
             for name, (fn, a) in cases.items()}
    for call in calls.values():
        call()
    if backend == "cpu":
        times = interleave(calls, repeats=repeats, warmup=1)
    else:
        times = {name: time_calls(call, repeats=repeats, warmup=2)[0]
                 for name, call in calls.items()}
    return {name: statistics.median(t) for name, t in times.items()}


def grep_ptx(folder: str) -> list[dict]:
    """Per dumped PTX file of a ``scatter_*`` module: counts of ``atom.global.cas``
    (compare-and-swap loops) and ``atom.global.add`` (native atomic adds)."""
    rows = []
    for path in sorted(pathlib.Path(folder).rglob("*.ptx")):
        match = re.search(r"scatter_(\w+?)_(bfloat16|float32)", path.name)
        if not match:
            continue
        text = path.read_text(errors="replace")
        rows.append({"table": match.group(1), "dtype": match.group(2), "file": path.name,
                     "atom_cas": text.count("atom.global.cas"),
                     "atom_add": len(re.findall(r"atom\.global\.[\w.]*add", text))})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    backend = jax.default_backend()
    out = pathlib.Path(args.out) / "results.jsonl" if args.out else None
    tokens = args.batch * args.views * args.seq_len
    common = {"hidden": args.hidden, "batch": args.batch, "views": args.views,
              "seq_len": args.seq_len, "tokens": tokens, "tag": args.tag,
              "xla_flags": os.environ.get("XLA_FLAGS", "")}
    emit({"bench": "embedding_grad_header", **common, **machine()}, out)
    ids = token_ids(np.random.default_rng(0), args)
    if "scatter" in args.parts:
        medians = time_cases(scatter_cases(args, ids), repeats=args.repeats, backend=backend)
        for name, sec in medians.items():
            _, table, dtype = name.split("_")
            ref = medians.get(f"scatter_{table}_bfloat16")
            emit({"bench": "embedding_scatter", "table": table, "dtype": dtype,
                  "ms": sec * 1e3, "vs_bf16": ref / sec if ref else None, **common}, out)
    if "lookup" in args.parts:
        medians = time_cases(lookup_cases(args, ids), repeats=args.repeats, backend=backend)
        ref = medians.get("lookup_cast_take")
        for name, sec in medians.items():
            emit({"bench": "embedding_lookup", "lookup": name[len("lookup_"):],
                  "dtype": args.dtype, "ms": sec * 1e3,
                  "vs_cast_take": ref / sec if ref else None, **common}, out)
    if args.ptx_dir:
        found = grep_ptx(args.ptx_dir)
        for row in found:
            emit({"bench": "embedding_scatter_ptx", **row, "tag": args.tag}, out)
        if not found:
            emit({"bench": "embedding_scatter_ptx", "ptx_files": 0, "backend": backend,
                  "tag": args.tag}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
