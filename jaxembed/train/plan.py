"""Compile a config's real train step for a TPU slice that is not there: memory, FLOPs, MFU.

``plan(cfg, topology="v5p:2x2x2")`` builds what ``jaxembed train`` would run
for ``cfg`` -- the encoder (from its ``config.json`` only, no weights), the
objective and its heads, AdamW, the ``(data, fsdp)`` mesh of
``mesh_data``/``mesh_fsdp``, mixed precision -- on abstract inputs
(``jax.ShapeDtypeStruct`` with shardings), lowers it for the devices of a TPU
topology (``jax.experimental.topologies``; needs ``libtpu``, not a TPU) and
compiles it with XLA's TPU compiler on this machine. From the compiled
program it reports, per chip::

    per_chip_bytes  = argument + output - alias + temp        (XLA memory_analysis;
                      the donated state's output aliases its argument)
    fits            = per_chip_bytes <= hbm_bytes_per_chip
    flops_per_chip, bytes_accessed_per_chip, optimal_seconds  (XLA cost_analysis)
    flops_per_step  = flops_per_chip * chips
    sentences_per_s_bound = batch_size / optimal_seconds
    mfu_bound       = model_flops_per_step / (optimal_seconds * chips * peak)
    hfu_bound       = flops_per_chip / (optimal_seconds * peak)

``model_flops_per_step`` is the analytic count the trainer's ``mfu`` uses
(:mod:`jaxembed.train.flops`); ``peak`` is :data:`jaxembed.train.flops.PEAK_FLOPS`
for the topology's chip. ``optimal_seconds`` is XLA's cost-model estimate of
the step on that chip, so the two bounds are what the compiler expects to be
reachable, not measurements. XLA counts a ``while`` loop's body once (it does
not know the trip count), so iterative kernels (the TPU ``eigh`` of
WhitenedCSE is a Jacobi loop) are under-counted in both FLOPs and time.

With ``cfg.lora`` the step is the trainer's LoRA step (:mod:`jaxembed.train.adapters`):
the base parameters are a frozen argument sharded by the same rules, the adapters
(``jax.eval_shape``'d too) and the heads are the only leaves with AdamW moments, and
the report gives ``lora`` and ``trainable_params`` (the parameters in the optimizer
state; all of them without LoRA).

Dropout bits follow ``cfg.dropout_rng`` as the trainer does (``auto``: the
fused threefry bits, which the partitioner shards; ``rbg`` makes every chip
draw the whole global batch's bits, see :mod:`jaxembed.models.dropout_rng`).

Example::

    cfg = load_config("configs/whitenedcse_bert_base.py", overrides=["max_length=128"])
    report = plan(cfg, topology="v5p:2x2x2")
    report["per_chip_bytes"], report["fits"], report["mfu_bound"]

Reference: the ahead-of-time compilation workflow of maxtext's ``train_compile.py``
(``get_topology_desc`` -> ``jit(step).lower(abstract inputs).compile()``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import time
from typing import Any, NamedTuple

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """A TPU generation as libtpu's topology names know it."""

    libtpu_name: str      # prefix of the topology name, e.g. "v5p" in "v5p:2x2x2"
    chip_config: str      # "megacore": one JAX device per chip (its two TensorCores fused)
    dims: int             # torus dimensions in the topology name
    hbm_bytes: int        # HBM per chip


# Google's published HBM per chip (cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}):
# v4 "32 GiB", v5e "16 GB", v5p "95 GB", v6e "32 GB"; read as GiB (HBM stacks
# are binary-sized). XLA keeps a little of it for itself, so a plan within a
# few percent of the limit is marginal.
TPU_CHIPS: dict[str, TpuChip] = {
    "v4": TpuChip("v4", "megacore", 3, 32 * GiB),
    "v5p": TpuChip("v5p", "megacore", 3, 95 * GiB),
    "v5e": TpuChip("v5e", "default", 2, 16 * GiB),
    "v6e": TpuChip("v6e", "default", 2, 32 * GiB),
}
EXAMPLE_TOPOLOGIES = ("v4:2x2x1", "v5p:2x2x2", "v5p:4x4x8", "v5e:4x4", "v6e:2x4")

# config.json shapes of the hub models the paper configs name, so that a plan
# needs neither the network nor a checkpoint (bert-*: google-bert, roberta-*: FacebookAI)
_BERT = dict(model_type="bert", vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
_ROBERTA = dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514,
                type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096)
HUB_SHAPES: dict[str, dict] = {
    "bert-base-uncased": {**_BERT, **_BASE},
    "bert-base-cased": {**_BERT, **_BASE, "vocab_size": 28996},
    "bert-large-uncased": {**_BERT, **_LARGE},
    "bert-large-cased": {**_BERT, **_LARGE, "vocab_size": 28996},
    "roberta-base": {**_ROBERTA, **_BASE},
    "roberta-large": {**_ROBERTA, **_LARGE},
}


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
    """``"v5p:2x2x2"`` -> ``("v5p", (2, 2, 2))``; a clear ``ValueError`` otherwise."""
    kind, _, shape = topology.partition(":")
    known = (f"known chips: {', '.join(TPU_CHIPS)}; topologies look like "
             f"{', '.join(EXAMPLE_TOPOLOGIES)}")
    if kind not in TPU_CHIPS:
        raise ValueError(f"unknown TPU topology {topology!r}: {known}")
    chip = TPU_CHIPS[kind]
    parts = shape.split("x")
    if len(parts) != chip.dims or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"topology {topology!r}: {kind} needs {chip.dims} positive sizes "
                         f"like {'x'.join(['2'] * chip.dims)}; {known}")
    return kind, tuple(int(p) for p in parts)


def tpu_devices(topology: str, *, num_slices: int = 1) -> list:
    """The (unattached) devices of ``num_slices`` slices of ``topology``, for compiling only."""
    kind, dims = parse_topology(topology)
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError("compiling for TPU needs libtpu (no TPU needed): "
                           "pip install 'jaxembed[tpu]'")
    # libtpu takes a per-machine lock file when it loads; a compile-only client
    # may share the machine with another JAX process that holds it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    chip = TPU_CHIPS[kind]
    bounds = tuple(min(d, h) for d, h in zip(dims + (1,) * (3 - len(dims)), (2, 2, 1)))
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{chip.libtpu_name}:{'x'.join(map(str, dims))}",
            chip_config_name=chip.chip_config, chips_per_host_bounds=bounds,
            num_slices=num_slices)
    except Exception as e:  # libtpu reports bad shapes as runtime errors
        raise ValueError(f"libtpu cannot build topology {topology!r} x {num_slices} slice(s): "
                         f"{e}") from e
    return list(desc.devices)


def model_config(cfg):
    """The ``EncoderConfig`` of ``cfg.model`` from its ``config.json`` alone: a local
    folder, the Hugging Face cache, :data:`HUB_SHAPES`, or the trainer's ``tiny-random``.
    The pooler is assumed present (as in BERT checkpoints); its cost is negligible."""
    from jaxembed.models.config import EncoderConfig
    from jaxembed.models.hub import alias_folder

    if cfg.model == "tiny-random":
        from jaxembed.train.trainer import load_encoder

        return load_encoder(cfg.replace(mixed_precision=False)).config
    folder = alias_folder(cfg.model) or pathlib.Path(cfg.model).expanduser()  # no download
    if (folder / "config.json").is_file():
        return EncoderConfig.from_file(folder / "config.json")
    cached = _hf_cached_config(cfg.model)
    if cached is not None:
        return EncoderConfig.from_file(cached)
    name = cfg.model.removeprefix("google-bert/").removeprefix("FacebookAI/")
    if name in HUB_SHAPES:
        return EncoderConfig.from_hf_dict(HUB_SHAPES[name])
    raise FileNotFoundError(f"model {cfg.model!r}: no {folder}/config.json, not in the Hugging "
                            f"Face cache and not one of {sorted(HUB_SHAPES)}; a plan needs only "
                            f"config.json: --set model=FOLDER_WITH_CONFIG_JSON")


def _hf_cached_config(repo_id: str) -> str | None:
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an invalid repo id, no cache folder
        return None
    return hit if isinstance(hit, str) else None


def abstract_encoder(cfg):
    """An ``Encoder`` of ``cfg`` whose params are ``ShapeDtypeStruct``s (nothing allocated)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxembed.models.encoder import Encoder
    from jaxembed.models.transformer import TransformerEncoder

    dtype = jnp.bfloat16 if cfg.mixed_precision else jnp.float32
    module = TransformerEncoder(model_config(cfg), dtype=dtype, param_dtype=jnp.float32)
    ids = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids))["params"]
    return Encoder(module=module, params=nn.meta.unbox(boxed), pooling=cfg.eval_pooling,
                   normalize=cfg.normalize, max_length=cfg.max_length)


class AbstractStep(NamedTuple):
    step: Any             # the jitted train step (make_train_step)
    state: Any            # TrainState of ShapeDtypeStructs with shardings
    batch: dict           # batch of ShapeDtypeStructs with the batch sharding
    mesh: Any
    config: Any           # the model's EncoderConfig or DecoderConfig
    sequences: int        # model sequences per step (batch x columns x views)
    model_flops: float    # analytic FLOPs of the step (jaxembed.train.flops)
    description: str      # what the step trains, in words
    objective: Any = None  # the encoder's Objective (build_objective); None for decoders

    def lower(self):
        return self.step.lower(self.state, self.batch)


def check_batch(cfg, devices) -> None:
    if cfg.batch_size % len(devices):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {len(devices)} "
                         f"devices of the mesh (every device takes batch_size / devices rows)")


def abstract_state(cfg, objective, params, mesh, *, logical):
    """``(objective, tx, schedule, shardings, state)``: the trainer's AdamW for ``cfg`` --
    with ``cfg.lora``, adapters on the frozen ``params["encoder"]`` and the optimizer on
    the adapters and heads only (:func:`jaxembed.train.adapters.setup`) -- and a
    ``TrainState`` of ``ShapeDtypeStruct``s carrying their shardings over ``mesh``."""
    import jax

    from jaxembed.train import adapters
    from jaxembed.train.state import TrainState, make_optimizer
    from jaxembed.train.step import state_shardings

    tx, schedule = make_optimizer(learning_rate=cfg.learning_rate, total_steps=max(cfg.steps, 1),
                                  warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                                  max_grad_norm=cfg.max_grad_norm)
    objective, tx, params, logical, _ = adapters.setup(
        cfg, objective, tx, params, logical, key=jax.random.PRNGKey(0), abstract=True)
    shardings = state_shardings(params, tx, mesh, logical=logical)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         jax.eval_shape(lambda p: TrainState.create(p, tx, seed=0), params),
                         shardings)
    return objective, tx, schedule, shardings, state


def abstract_step(cfg, devices) -> AbstractStep:
    """The trainer's step for ``cfg`` over ``devices`` (any platform), on abstract inputs."""
    import jax
    import jax.numpy as jnp

    from jaxembed.train import sharding as shd
    from jaxembed.train.objectives import build_objective
    from jaxembed.train.flops import train_step_flops
    from jaxembed.train.config import retrieval_data
    from jaxembed.train.step import encoder_logical_axes, make_train_step

    mesh = shd.make_mesh(data=cfg.mesh_data, fsdp=cfg.mesh_fsdp, devices=devices)
    check_batch(cfg, devices)
    enc = abstract_encoder(cfg)
    objective = build_objective(cfg, enc)
    heads, head_names = shd._unbox(jax.eval_shape(objective.init_heads, jax.random.PRNGKey(0)))
    params = {"encoder": enc.params, "head": heads}
    logical = {"encoder": encoder_logical_axes(enc), "head": head_names}
    objective, tx, schedule, shardings, state = abstract_state(cfg, objective, params, mesh,
                                                               logical=logical)
    columns = max(objective.text_columns)
    if cfg.objective == "simcse_sup":  # triplets, or (query, positive, K negatives) rows
        columns = 2 + cfg.num_negatives if retrieval_data(cfg) else 3
    tokens = jax.ShapeDtypeStruct((cfg.batch_size, columns, cfg.max_length), jnp.int32,
                                  sharding=shd.batch_sharding(mesh))
    batch = {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens}
    if cfg.objective == "dse" or cfg.mask_duplicate_documents:  # teacher / document ids
        k = (cfg.dse_out + (cfg.dse_task_loss != "none") if cfg.objective == "dse"
             else columns - 1)
        batch["scores"] = jax.ShapeDtypeStruct((cfg.batch_size, k), jnp.float32,
                                               sharding=shd.batch_sharding(mesh))
    step = make_train_step(objective.loss, tx, schedule, shardings, mesh,
                           value_and_grad=objective.value_and_grad)
    sequences = cfg.batch_size * objective.sequences_per_row(columns)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    flops = train_step_flops(n_params, enc.config, seq_len=cfg.max_length, sequences=sequences)
    return AbstractStep(step, state, batch, mesh, enc.config, sequences, flops, cfg.objective,
                        objective)


def plan(cfg, *, topology: str, num_slices: int = 1, hlo_path=None,
         decoder_shape: str | dict | None = None, remat: bool = False,
         scan_layers: bool = True) -> dict:
    """Compile ``cfg``'s train step for ``num_slices`` x ``topology``; the report of the
    module docstring as a dict (JSON-serialisable). ``hlo_path``: also write the
    compiled (optimised, partitioned) program's HLO text there.

    A decoder model (``decoder_shape``, a preset name of
    :data:`jaxembed.train.plan_decoder.DECODER_SHAPES` or a ``config.json`` dict, or
    ``cfg.model`` a folder whose ``config.json`` is a decoder family) plans the
    embedder step of :mod:`jaxembed.train.plan_decoder` (last token, in-batch InfoNCE
    at ``cfg.temperature``), with ``remat`` per layer and ``scan_layers``."""
    from jaxembed.train.flops import peak_flops_per_device
    from jaxembed.train.plan_decoder import abstract_decoder_step, decoder_config

    kind, _ = parse_topology(topology)
    devices = tpu_devices(topology, num_slices=num_slices)
    decoder = decoder_config(cfg, decoder_shape)
    if decoder is not None:
        built = abstract_decoder_step(cfg, devices, decoder, remat=remat, scan_layers=scan_layers)
    else:
        built = abstract_step(cfg, devices)
    head = _describe(cfg, built, devices, topology=topology, num_slices=num_slices,
                     decoder_shape=decoder_shape, remat=decoder is not None and remat)
    hbm = TPU_CHIPS[kind].hbm_bytes
    t0 = time.perf_counter()
    lowered = built.lower()
    try:
        compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError; the TPU compiler refuses a program over HBM
        shortfall = hbm_shortfall(str(e))
        if shortfall is None:
            raise
        return _does_not_fit(head, built, shortfall, str(e), hbm=hbm,
                             compile_s=time.perf_counter() - t0)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    chips = len(devices)
    per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    flops_chip = float(cost.get("flops", 0.0))
    hlo = compiled.as_text()
    if hlo_path is not None:
        pathlib.Path(hlo_path).write_text(hlo)
    uncosted = uncosted_ops(hlo)
    seconds = float(cost.get("optimal_seconds", 0.0)) + sum(uncosted.values())
    peak = peak_flops_per_device(devices[0].device_kind, bf16=True)
    model_flops = built.model_flops
    # a scanned decoder is a while loop: XLA costs its body (one layer) once, so its
    # FLOPs and time cover one layer and no bound follows from them
    scanned = decoder is not None and scan_layers
    bounded = seconds > 0 and not scanned
    activations = activation_constraints(lowered.as_text())
    return {
        **head,
        "scan_layers": scanned,
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "per_chip_bytes": per_chip, "hbm_bytes_per_chip": hbm, "fits": per_chip <= hbm,
        "flops_per_chip": flops_chip, "flops_per_step": flops_chip * chips,
        "bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
        "optimal_seconds": seconds if seconds > 0 else None, "uncosted_ops": uncosted,
        "model_flops_per_step": model_flops,
        "peak_flops_per_chip": peak,
        "sentences_per_s_bound": cfg.batch_size / seconds if bounded else None,
        "mfu_bound": model_flops / (seconds * chips * peak) if bounded else None,
        "hfu_bound": flops_chip / (seconds * peak) if bounded else None,
        "largest_params": largest_params(built.state.params),
        "activation_constraints": len(activations),
        "largest_activations": _largest(activations),
        "compile_seconds": round(compile_s, 1),
    }


_OOM = re.compile(r"RESOURCE_EXHAUSTED.*?required for HLO temporaries \(([\d.]+)([KMGT]?)\)"
                  r".*?available HBM \(([\d.]+)([KMGT]?)\)", re.S)
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def hbm_shortfall(message: str) -> tuple[int, int] | None:
    """``(temporaries needed, HBM available)`` in bytes from the TPU compiler's
    out-of-memory error (``... required for HLO temporaries (242.52G) exceeds available
    HBM (95.74G)``, binary units), or ``None`` for any other error.

        >>> hbm_shortfall("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm... "
        ...               "required for HLO temporaries (1.5G) exceeds available HBM (1G).")
        (1610612736, 1073741824)
    """
    m = _OOM.search(message)
    if m is None:
        return None
    return (round(float(m[1]) * _UNIT[m[2]]), round(float(m[3]) * _UNIT[m[4]]))


def sharded_bytes(tree) -> int:
    """Bytes one device holds of a pytree of ``ShapeDtypeStruct``s with shardings."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def _describe(cfg, built, devices, *, topology, num_slices, decoder_shape, remat) -> dict:
    """The report's fields known before compiling: the slice, the mesh, the step and its
    parameters (with LoRA the optimizer sees the adapters and heads only,
    :mod:`jaxembed.train.adapters`)."""
    import jax

    params = built.state.params
    trainable = ({k: params[k] for k in ("lora", "head")} if cfg.lora is not None else params)
    count = lambda t: sum(math.prod(x.shape) for x in jax.tree.leaves(t))  # noqa: E731
    return {
        "topology": topology, "num_slices": num_slices, "chip": devices[0].device_kind,
        "chips": len(devices), "mesh": dict(built.mesh.shape),
        "model": decoder_shape if isinstance(decoder_shape, str) else cfg.model,
        "objective": built.description, "batch_size": cfg.batch_size, "seq_len": cfg.max_length,
        "sequences_per_step": built.sequences, "mixed_precision": cfg.mixed_precision,
        "params": count(params), "lora": cfg.lora, "trainable_params": count(trainable),
        "remat": bool(remat),
    }


def _does_not_fit(head: dict, built, shortfall, message: str, *, hbm: int,
                  compile_s: float) -> dict:
    """The report of a program the compiler refused for HBM: the arguments' bytes per chip
    (from their shardings) plus the temporaries it asked for, ``fits`` false; no costs."""
    temp, available = shortfall
    arguments = sharded_bytes((built.state, built.batch))
    return {
        **head,
        "argument_bytes": arguments, "temp_bytes": temp, "hbm_available_bytes": available,
        "per_chip_bytes": arguments + temp, "hbm_bytes_per_chip": hbm,
        "fits": False, "flops_per_step": None, "does_not_fit": message.strip().splitlines()[0],
        "largest_params": largest_params(built.state.params),
        "compile_seconds": round(compile_s, 1),
    }


# custom calls XLA's TPU cost model cannot price: each adds -1 s to ``optimal_seconds``
# (X64Combine: the u64 state of rbg dropout's RngBitGenerator; EighTpu: the Jacobi
# eigensolver of WhitenedCSE's whitening). The plan adds them back, so their own
# time is missing from the estimate.
UNCOSTED_CUSTOM_CALLS = ("X64Combine", "EighTpu")


def uncosted_ops(hlo: str) -> dict[str, int]:
    """How often each of :data:`UNCOSTED_CUSTOM_CALLS` occurs in a compiled program's text."""
    counts = {t: hlo.count(f'custom_call_target="{t}"') for t in UNCOSTED_CUSTOM_CALLS}
    return {t: n for t, n in counts.items() if n}


def largest_params(params, *, top: int = 5) -> list[dict]:
    """The ``top`` largest parameters: path, shape, dtype and mesh ``PartitionSpec``."""
    import jax

    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        rows.append({"name": jax.tree_util.keystr(path, simple=True, separator="/"),
                     "shape": list(x.shape), "dtype": str(x.dtype),
                     "spec": _spec_str(tuple(x.sharding.spec)),
                     "bytes": math.prod(x.shape) * x.dtype.itemsize})
    return sorted(rows, key=lambda r: -r["bytes"])[:top]


_SDY = re.compile(r"sdy\.sharding_constraint %\S+ <@\w+, \[(.*?)\]>[^:]*: tensor<([^>]*)>")
_GSPMD = re.compile(r"custom_call @Sharding\(.*?mhlo\.sharding = \"([^\"]*)\".*?-> tensor<([^>]*)>")


def activation_constraints(stablehlo: str) -> list[dict]:
    """Sharding constraints in a lowered program's text (Shardy or GSPMD form):
    ``[{"shape", "dtype", "spec"}]``, one per constraint, in program order."""
    out = []
    for spec, tensor in _SDY.findall(stablehlo):
        dims = [tuple(re.findall(r'"(\w+)"', d)) for d in re.findall(r"\{([^}]*)\}", spec)]
        out.append(_tensor(tensor, _spec_str(tuple(d if len(d) > 1 else (d[0] if d else None)
                                                   for d in dims))))
    for spec, tensor in _GSPMD.findall(stablehlo):
        out.append(_tensor(tensor, spec))
    return out


def _tensor(text: str, spec: str) -> dict:
    *dims, dtype = text.split("x")
    return {"shape": [int(d) for d in dims], "dtype": dtype, "spec": spec}


def _largest(activations: list[dict], *, top: int = 5) -> list[dict]:
    seen, rows = set(), []
    for a in sorted(activations, key=lambda a: -math.prod(a["shape"])):
        key = (tuple(a["shape"]), a["dtype"], a["spec"])
        if key not in seen:
            seen.add(key)
            rows.append(a)
    return rows[:top]


def _spec_str(spec: tuple) -> str:
    return "P(" + ", ".join(repr(s) for s in spec) + ")"


def format_plan(report: dict) -> str:
    """Human-readable lines of a :func:`plan` report."""
    gib = lambda b: f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / (1 << 20):.1f} MiB"  # noqa: E731
    r = report
    if "does_not_fit" in r:
        return "\n".join([
            f"{r['model']} {r['objective']}: batch {r['batch_size']} x seq {r['seq_len']}, "
            f"{r['params'] / 1e6:.1f}M params ({r['trainable_params'] / 1e6:.2f}M trainable)",
            f"{r['num_slices']} x {r['topology']}: {r['chips']} x {r['chip']}, mesh {r['mesh']}",
            f"DOES NOT FIT: per chip arguments {gib(r['argument_bytes'])} + temporaries "
            f"{gib(r['temp_bytes'])} (the compiler's demand) = {gib(r['per_chip_bytes'])}, "
            f"over the {gib(r['hbm_available_bytes'])} the compiler can give temporaries "
            f"(chip HBM {gib(r['hbm_bytes_per_chip'])})",
            f"  ({r['does_not_fit']})",
        ])
    lines = [
        f"{r['model']} {r['objective']}: batch {r['batch_size']} x seq {r['seq_len']} "
        f"({r['sequences_per_step']} sequences/step), {r['params'] / 1e6:.1f}M params, "
        f"{'bf16' if r['mixed_precision'] else 'float32'} compute",
        (f"LoRA {r['lora']}: " if r.get("lora") else "full fine-tune: ")
        + f"{r['trainable_params'] / 1e6:.2f}M trainable params (in the optimizer state)",
        f"{r['num_slices']} x {r['topology']}: {r['chips']} x {r['chip']}, mesh {r['mesh']}, "
        f"compiled in {r['compile_seconds']} s",
        f"per chip: arguments {gib(r['argument_bytes'])} + outputs {gib(r['output_bytes'])} "
        f"- aliased {gib(r['alias_bytes'])} + temporaries {gib(r['temp_bytes'])} "
        f"= {gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes_per_chip'])} HBM: "
        f"{'fits' if r['fits'] else 'DOES NOT FIT'}",
        f"FLOPs per step (XLA): {r['flops_per_step']:.3e} ({r['flops_per_chip']:.3e} per chip); "
        f"analytic model FLOPs {r['model_flops_per_step']:.3e}",
    ]
    missing = ", ".join(f"{n} x {t}" for t, n in r["uncosted_ops"].items())
    if r.get("scan_layers"):
        lines.append("layers scanned: XLA's FLOPs and time count one layer, no bounds "
                     "(--no-scan-layers for them)")
    elif r["optimal_seconds"] is None:
        lines.append("XLA gave no step-time estimate"
                     + (f" (uncosted: {missing})" if missing else ""))
    else:
        lines.append(f"XLA step-time estimate {r['optimal_seconds'] * 1e3:.3f} ms -> "
                     f"<= {r['sentences_per_s_bound']:,.0f} sentences/s, MFU <= "
                     f"{100 * r['mfu_bound']:.1f}% (HFU <= {100 * r['hfu_bound']:.1f}%, peak "
                     f"{r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s per chip)"
                     + (f"; not counted: {missing}" if missing else ""))
    lines.append("largest parameters:")
    lines += [f"  {p['name']} {p['shape']} {p['dtype']} {p['spec']}" for p in r["largest_params"]]
    lines.append(f"largest activations ({r['activation_constraints']} sharding constraints):")
    lines += [f"  {a['shape']} {a['dtype']} {a['spec']}" for a in r["largest_activations"]]
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, sort_keys=False)
