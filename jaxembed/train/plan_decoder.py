"""A decoder-LLM embedder's train step on abstract inputs, for :func:`jaxembed.train.plan.plan`.

What a Qwen3-Embedding / e5-mistral style full fine-tune runs per step: every row
is a ``(query, document)`` pair of token ids ``[B, 2, T]``; both columns go
through the :class:`~jaxembed.models.decoder.Decoder` (bf16 compute with
``mixed_precision``, float32 params), are pooled at the last real token, and
meet in InfoNCE with in-batch negatives (cosine, ``tau = cfg.temperature``,
0.02 in those recipes); AdamW over all parameters, the ``(data, fsdp)`` mesh
and the logical rules of :mod:`jaxembed.train.sharding`, as for encoders.

The parameters are ``jax.eval_shape``'d (``ShapeDtypeStruct``s), so an
8B-parameter shape never exists in host memory; weights are never read. The
shape comes from ``cfg.model``'s ``config.json`` when its ``model_type`` is a
decoder family, or from a named preset of :data:`DECODER_SHAPES` (the public
``config.json`` fields of those models; shapes only).

Example::

    cfg = TrainConfig(model="", batch_size=1024, max_length=512, mixed_precision=True,
                      mesh_data=1, mesh_fsdp=-1, temperature=0.02)
    report = plan(cfg, topology="v5p:4x4x4", decoder_shape="qwen3-8b", remat=True)
"""

from __future__ import annotations

import json
import pathlib

_QWEN3 = dict(model_type="qwen3", vocab_size=151936, head_dim=128, rms_norm_eps=1e-6,
              max_position_embeddings=40960, rope_theta=1000000.0, hidden_act="silu")
# hub config.json fields of Qwen/Qwen3-0.6B, Qwen/Qwen3-8B and meta-llama/Meta-Llama-3-8B
DECODER_SHAPES: dict[str, dict] = {
    "qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072,
                   "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "tie_word_embeddings": True},
    "qwen3-8b": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288,
                 "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "tie_word_embeddings": False},
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      rope_theta=500000.0, hidden_act="silu", tie_word_embeddings=False),
}


def decoder_config(cfg, decoder_shape: str | dict | None = None):
    """The ``DecoderConfig`` to plan: ``decoder_shape`` (a :data:`DECODER_SHAPES` name or a
    ``config.json`` dict), else ``cfg.model``'s ``config.json`` if it names a decoder
    family; ``None`` when the model is an encoder."""
    from jaxembed.models.decoder.families import SUPPORTED_DECODER_TYPES, config_from_hf

    if isinstance(decoder_shape, str):
        if decoder_shape not in DECODER_SHAPES:
            raise ValueError(f"unknown decoder shape {decoder_shape!r}; presets: "
                             f"{', '.join(DECODER_SHAPES)}")
        decoder_shape = DECODER_SHAPES[decoder_shape]
    if decoder_shape is None and cfg.model == "tiny-random-qwen3":  # the trainer's smoke model
        from jaxembed.train.trainer import TINY_QWEN3

        decoder_shape = TINY_QWEN3
    if decoder_shape is not None:
        return config_from_hf(dict(decoder_shape))
    path = pathlib.Path(cfg.model or ".").expanduser() / "config.json"
    if path.is_file():
        d = json.loads(path.read_text())
        if d.get("model_type") in SUPPORTED_DECODER_TYPES:
            return config_from_hf(d)
    return None


def decoder_step_flops(n_total: int, config, *, seq_len: int, sequences: int) -> float:
    """``6 N`` per token over the non-embedding parameters plus the ``12 L T d_attn`` of
    attention scores and values (as :func:`jaxembed.train.flops.encoder_train_flops`, with
    ``d_attn = heads x head_dim``; the causal half is not subtracted: XLA computes it)."""
    from jaxembed.train.flops import encoder_train_flops

    n = n_total - config.vocab_size * config.hidden_size
    return encoder_train_flops(n_params=n, layers=config.num_hidden_layers,
                               hidden=config.num_attention_heads * config.head_dim,
                               seq_len=seq_len, sequences=sequences)


def abstract_decoder_step(cfg, devices, config, *, remat: bool = False,
                          scan_layers: bool = True):
    """:class:`jaxembed.train.plan.AbstractStep` of the embedder step described above."""
    import jax
    import jax.numpy as jnp

    from jaxembed.losses.contrastive import info_nce
    from jaxembed.models.decoder.model import Decoder
    from jaxembed.models.decoder.pooling import last_token
    from jaxembed.train import sharding as shd
    from jaxembed.train.objectives import Objective
    from jaxembed.train.plan import AbstractStep, abstract_state, check_batch
    from jaxembed.train.step import make_train_step

    mesh = shd.make_mesh(data=cfg.mesh_data, fsdp=cfg.mesh_fsdp, devices=devices)
    check_batch(cfg, devices)
    dtype = jnp.bfloat16 if cfg.mixed_precision else jnp.float32
    model = Decoder(config, dtype=dtype, param_dtype=jnp.float32, remat=remat,
                    scan_layers=scan_layers)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda i: model.init(jax.random.key(0), i, i), ids)["params"]
    params, logical = shd._unbox(boxed)

    def loss(params, batch, key):
        del key  # no dropout in these decoders
        B, C, T = batch["input_ids"].shape
        flat = lambda x: x.reshape(B * C, T)  # noqa: E731
        mask = flat(batch["attention_mask"])
        h = model.apply({"params": params["encoder"]}, flat(batch["input_ids"]),
                        mask).last_hidden_state
        z = last_token(h, mask).reshape(B, C, -1)
        value = info_nce(z[:, 0], z[:, 1], temperature=cfg.temperature)
        return value, {}

    # the trainer's {"encoder", "head"} params (no heads), so that cfg.lora applies as there
    objective = Objective(name="decoder_info_nce", text_columns=(2,), views=1,
                          init_heads=lambda key: {}, loss=loss)
    objective, tx, schedule, shardings, state = abstract_state(
        cfg, objective, {"encoder": params, "head": {}}, mesh,
        logical={"encoder": logical, "head": {}})
    tokens = jax.ShapeDtypeStruct((cfg.batch_size, 2, cfg.max_length), jnp.int32,
                                  sharding=shd.batch_sharding(mesh))
    batch = {"input_ids": tokens, "attention_mask": tokens}
    step = make_train_step(objective.loss, tx, schedule, shardings, mesh,
                           value_and_grad=objective.value_and_grad)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    flops = decoder_step_flops(n_params, config, seq_len=cfg.max_length,
                               sequences=2 * cfg.batch_size)
    return AbstractStep(step, state, batch, mesh, config, 2 * cfg.batch_size, flops,
                        f"{config.model_type} decoder, last token, InfoNCE")
