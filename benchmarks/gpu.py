"""One-call GPU benchmark: jaxembed train steps vs the PyTorch AMP reference.

BERT-base shapes with random weights built from a config (no hub), bf16
compute with float32 parameters on both sides, seq 32, batch 128 and 512,
objectives unsupervised SimCSE (2 dropout views) and WhitenedCSE (3 views,
128 groups of 6 channels). jaxembed runs its real train step
(:func:`jaxembed.train.step.make_train_step` over the objective of
:mod:`jaxembed.train.objectives`: one jit, donated state, AdamW + clipping);
the reference is ``transformers.BertModel`` + the same loss + fused AdamW under
``torch.autocast(bfloat16)`` (:mod:`torch_reference`). Both see the same token
ids (random lengths 8..32, padded).

Reported per case: median step time over ``--steps`` timed steps after
compilation and ``--warmup`` steps, sentences/s, tokens/s, FLOPs/step
(:func:`jaxembed.train.flops.encoder_train_flops`), achieved TFLOP/s, MFU
against the card's nominal dense bf16 peak (:data:`jaxembed.train.flops.PEAK_FLOPS`)
and against a bf16 8192³ matmul measured in the same run, and the ratio
jaxembed/PyTorch in sentences/s. One JSON line per case; a table last.

    python benchmarks/gpu.py                       # H100/H200: ~5 minutes
    python benchmarks/gpu.py --model tiny --batch-sizes 16 --steps 3   # CPU smoke test

``benchmarks/gpu.sh [bench|investigate|smoke]`` wraps it for a one-call device run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MODELS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "tiny": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192),
}
VOCAB = 30522


def make_batch(rng: np.random.Generator, batch: int, seq_len: int):
    lengths = rng.integers(8, seq_len + 1, size=batch)
    ids = rng.integers(1000, VOCAB, size=(batch, seq_len)).astype(np.int32)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(batch), lengths - 1] = 102
    ids = ids * mask
    return ids, mask


def median_time(fn, sync, *, warmup: int, steps: int) -> tuple[float, float]:
    """(compile+first-call seconds, median step seconds)."""
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def matmul_peak(n: int) -> float:
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.bfloat16)
    b = jax.random.normal(k2, (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    _, t = median_time(lambda: f(a, b), jax.block_until_ready, warmup=3, steps=10)
    return 2 * n**3 / t


def jax_case(model: str, objective: str, batch: int, seq_len: int, ids, mask, args,
             dropout_rng: str):
    import jax
    import jax.numpy as jnp

    from jaxembed.models.config import EncoderConfig
    from jaxembed.models.encoder import Encoder
    from jaxembed.train import sharding as shd
    from jaxembed.train.config import TrainConfig
    from jaxembed.train.objectives import build_objective
    from jaxembed.train.state import make_optimizer
    from jaxembed.train.step import build_train_step

    ec = EncoderConfig(vocab_size=VOCAB, max_position_embeddings=512, **MODELS[model])
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    enc = Encoder.from_config(ec, key=jax.random.PRNGKey(0), dtype=dtype, pooling="cls_before_pooler")
    cfg = TrainConfig(objective=objective, num_views=3 if objective == "whitenedcse" else 2,
                      num_groups=args.num_groups, whitening_eps=args.eps, batch_size=batch,
                      max_length=seq_len, learning_rate=1e-5, mixed_precision=dtype == jnp.bfloat16,
                      dropout_rng=dropout_rng)
    obj = build_objective(cfg, enc)
    tx, schedule = make_optimizer(learning_rate=1e-5, total_steps=10_000)
    mesh = shd.make_mesh(data=-1, fsdp=1)
    state, step = build_train_step(enc, obj, tx, schedule, mesh)
    host = {"input_ids": ids[:, None, :], "attention_mask": mask[:, None, :],
            "token_type_ids": np.zeros_like(ids)[:, None, :]}
    dev_batch = shd.shard_batch(host, mesh)
    box = {"state": state}
    losses = []

    def run():
        box["state"], m = step(box["state"], dev_batch)
        return m

    def sync(m):
        losses.append(float(m["loss"]))

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    first, t = median_time(run, sync, warmup=args.warmup, steps=args.steps)
    result = {"compile_s": first, "step_s": t, "loss_last": losses[-1], "n_params": n_params,
              "finite": bool(np.all(np.isfinite(losses)))}
    if args.breakdown:
        # where the step's time goes: loss forward alone, forward+backward, whole step
        key = jax.random.PRNGKey(3)
        p_now = box["state"].params
        fwd = jax.jit(lambda p: obj.loss(p, dev_batch, key)[0])
        grad = jax.jit(lambda p: jax.value_and_grad(lambda q: obj.loss(q, dev_batch, key)[0])(p))
        result["forward_s"] = median_time(lambda: fwd(p_now), jax.block_until_ready,
                                          warmup=2, steps=args.steps)[1]
        result["forward_backward_s"] = median_time(lambda: grad(p_now), jax.block_until_ready,
                                                   warmup=2, steps=args.steps)[1]
    if args.profile:
        _profile(run, sync, pathlib.Path(args.profile))
        args.profile = ""  # first case only
    return result


def _profile(run, sync, out: pathlib.Path) -> None:
    """A jax.profiler trace of 3 steps, its .xplane.pb copied flat into ``out``
    (the device tool returns files at most two folders down)."""
    import shutil
    import tempfile

    import jax

    tmp = tempfile.mkdtemp()
    with jax.profiler.trace(tmp):
        for _ in range(3):
            sync(run())
    out.mkdir(parents=True, exist_ok=True)
    for f in pathlib.Path(tmp).rglob("*.xplane.pb"):
        shutil.copy(f, out / "train_step.xplane.pb")


def torch_case(model: str, objective: str, ids, mask, args):
    import torch
    import transformers

    from torch_reference import TorchStep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=512,
                                     **MODELS[model])
    net = transformers.BertModel(config, add_pooling_layer=False).to(device)
    step = TorchStep(net, objective=objective, num_views=3, num_groups=args.num_groups,
                     eps=args.eps, lr=1e-5, amp=args.dtype == "bfloat16" and device == "cuda")
    t_ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    t_mask = torch.as_tensor(mask, dtype=torch.long, device=device)
    losses = []

    def sync(loss):
        losses.append(float(loss))  # .item() synchronises

    first, t = median_time(lambda: step(t_ids, t_mask), sync, warmup=args.warmup, steps=args.steps)
    step = net = None  # free the card before empty_cache
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"compile_s": first, "step_s": t, "loss_last": losses[-1],
            "finite": bool(np.all(np.isfinite(losses)))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="bert-base")
    p.add_argument("--objectives", default="simcse_unsup,whitenedcse")
    p.add_argument("--batch-sizes", default="128,512")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--num-groups", type=int, default=None,
                   help="whitening groups (default: groups of 6 channels, as the official 128 for BERT-base)")
    p.add_argument("--eps", type=float, default=1e-5, help="eigenvalue floor, same on both sides")
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--dropout-rng", default="rbg",
                   help="comma-separated TrainConfig.dropout_rng values to time (threefry, rbg)")
    p.add_argument("--baseline-threefry", action="store_true",
                   help="also time the first batch/objective with threefry dropout bits")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the loss forward and forward+backward alone (jax)")
    p.add_argument("--profile", default="", help="folder for a jax.profiler trace of case 1")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for results.jsonl")
    args = p.parse_args(argv)
    hidden = MODELS[args.model]["hidden_size"]
    if args.num_groups is None:
        args.num_groups = hidden // 6
    if args.num_groups <= 0 or hidden % args.num_groups:
        p.error(f"--num-groups {args.num_groups} must divide the hidden size {hidden}")

    import jax

    from jaxembed.train.flops import encoder_train_flops, non_embedding_params, peak_flops_per_device

    dev = jax.devices()[0]
    kind = dev.device_kind
    nominal = peak_flops_per_device(kind, bf16=args.dtype == "bfloat16")
    measured_peak = matmul_peak(args.matmul_n if dev.platform == "gpu" else 1024)
    header = {"device": kind, "platform": dev.platform, "jax": jax.__version__,
              "nominal_peak_tflops": nominal / 1e12, "matmul_peak_tflops": measured_peak / 1e12}
    try:
        import torch

        header["torch"] = torch.__version__
    except ImportError:
        args.skip_torch = True
    print(json.dumps({"bench": "gpu_header", **header}), flush=True)

    out_file = None
    if args.out:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        out_file = pathlib.Path(args.out) / "results.jsonl"
    rng = np.random.default_rng(0)
    cfg = MODELS[args.model]
    batches = {int(b): make_batch(rng, int(b), args.seq_len) for b in args.batch_sizes.split(",")}
    objectives = args.objectives.split(",")
    # PyTorch first: JAX's allocator keeps what it freed, PyTorch's empty_cache gives it back.
    torch_rows = {}
    if not args.skip_torch:
        for batch, (ids, mask) in batches.items():
            for objective in objectives:
                torch_rows[batch, objective] = torch_case(args.model, objective, ids, mask, args)
    cases = [(b, o, r) for r in args.dropout_rng.split(",") for b in batches for o in objectives]
    if args.baseline_threefry and "threefry" not in args.dropout_rng.split(","):
        cases.insert(0, (next(iter(batches)), objectives[0], "threefry"))
    rows = []
    for batch, objective, dropout_rng in cases:
        ids, mask = batches[batch]
        views = 3 if objective == "whitenedcse" else 2
        j = jax_case(args.model, objective, batch, args.seq_len, ids, mask, args, dropout_rng)
        n_ne = non_embedding_params(j["n_params"], vocab_size=VOCAB, max_positions=512,
                                    type_vocab_size=2, hidden=cfg["hidden_size"])
        flops = encoder_train_flops(n_params=n_ne, layers=cfg["num_hidden_layers"],
                                    hidden=cfg["hidden_size"], seq_len=args.seq_len,
                                    sequences=batch * views)
        row = {"bench": "gpu_train_step", "model": args.model, "objective": objective,
               "batch": batch, "seq_len": args.seq_len, "dtype": args.dtype, "device": kind,
               "dropout_rng": dropout_rng, "flops_per_step": flops,
               "jax_step_s": j["step_s"], "jax_compile_s": j["compile_s"],
               "jax_sent_per_s": batch / j["step_s"],
               "jax_tokens_per_s": batch * views * args.seq_len / j["step_s"],
               "jax_tflops": flops / j["step_s"] / 1e12,
               "jax_mfu": flops / j["step_s"] / nominal,
               "jax_frac_matmul_peak": flops / j["step_s"] / measured_peak,
               "jax_loss_finite": j["finite"],
               **{f"jax_{k}": j[k] for k in ("forward_s", "forward_backward_s") if k in j}}
        t = torch_rows.get((batch, objective))
        if t is not None:
            row.update({"torch_step_s": t["step_s"], "torch_sent_per_s": batch / t["step_s"],
                        "torch_tflops": flops / t["step_s"] / 1e12,
                        "torch_mfu": flops / t["step_s"] / nominal,
                        "torch_loss_finite": t["finite"],
                        "speedup_jax_over_torch": t["step_s"] / j["step_s"]})
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out_file:
            with out_file.open("a") as f:
                f.write(json.dumps({**header, **row}) + "\n")

    print(f"\n{kind}  jax {header['jax']}  torch {header.get('torch', '-')}  "
          f"matmul peak {measured_peak / 1e12:.0f} TFLOP/s (nominal {nominal / 1e12:.0f})")
    print(f"{'objective':<13}{'rng':>9}{'batch':>6}{'jax ms':>9}{'torch ms':>10}{'jax sent/s':>12}"
          f"{'torch sent/s':>13}{'jax MFU':>9}{'torch MFU':>10}{'speedup':>9}")
    for r in rows:
        print(f"{r['objective']:<13}{r['dropout_rng']:>9}{r['batch']:>6}{r['jax_step_s'] * 1e3:>9.1f}"
              f"{r.get('torch_step_s', float('nan')) * 1e3:>10.1f}{r['jax_sent_per_s']:>12.0f}"
              f"{r.get('torch_sent_per_s', float('nan')):>13.0f}{r['jax_mfu'] * 100:>8.1f}%"
              f"{r.get('torch_mfu', float('nan')) * 100:>9.1f}%"
              f"{r.get('speedup_jax_over_torch', float('nan')):>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
