"""The forward pass as pure functions of ``(module, params, batch)``, for encoders and
decoders alike.

``Encoder.apply`` / ``Encoder.embed`` and the jitted inference step all call these, so
training and ``encode`` compute the same thing. The architecture family (``backbone.py``)
runs the module: a BERT-family encoder takes token types and dropout; a decoder takes
position ids built from the mask (so left and right padding agree), an ``output_layer``
(early exit) and Token Prepending.

    apply_module(module, params, ids, mask, types, ...)  -> EncoderOutput / DecoderOutput
    embed_batch(module, spec, params, batch)             -> [B, D] float32
        = l2_normalize(pool(apply_module(...), mask, spec.pooling,
                            prompt_lengths=None if spec.include_prompt
                                           else batch["prompt_length"]))

An :class:`EmbedSpec` says how hidden states become an embedding; it is hashable, so the
compiled ``encode`` steps are keyed by it.

Example::

    spec = EmbedSpec("mean", normalize=True)
    z = embed_batch(enc.module, spec, enc.params, enc.tokenize(texts))   # [N, H]
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from jaxembed.losses.normalize import l2_normalize
from jaxembed.models.backbone import backbone_for
from jaxembed.models.pooling import pool


@dataclasses.dataclass(frozen=True)
class EmbedSpec:
    """``pooling`` (``pooling.POOLING_METHODS``), ``normalize`` (L2), ``include_prompt``
    (False: prompt tokens left out of mean/max pooling), ``output_layer`` (decoders: which
    ``hidden_states[k]`` is read; None = the last) and ``token_prepending``
    (decoders: ``(placeholder_id, start_layer, end_layer)`` or None)."""

    pooling: str
    normalize: bool = False
    include_prompt: bool = True
    output_layer: Optional[int] = None
    token_prepending: Optional[tuple] = None


def apply_module(
    module,
    params,
    input_ids,
    attention_mask,
    token_type_ids=None,
    *,
    deterministic: bool = True,
    dropout_rng: Optional[jax.Array] = None,
    output_hidden_states: bool = False,
    output_layer: Optional[int] = None,
    token_prepending: Optional[tuple] = None,
):
    """Run ``module`` on ``[B, L]`` int inputs; ``deterministic=False`` (dropout on) needs
    ``dropout_rng``. ``output_layer`` / ``token_prepending`` are decoder options (see
    :class:`EmbedSpec`). Returns the module's ``EncoderOutput`` / ``DecoderOutput``."""
    rngs = None
    if not deterministic:
        if dropout_rng is None:
            raise ValueError("deterministic=False needs a dropout_rng")
        rngs = {"dropout": dropout_rng}
    return backbone_for(module.config.model_type).forward(
        module,
        params,
        jnp.asarray(input_ids),
        jnp.asarray(attention_mask),
        None if token_type_ids is None else jnp.asarray(token_type_ids),
        deterministic=deterministic,
        rngs=rngs,
        output_hidden_states=output_hidden_states,
        output_layer=output_layer,
        token_prepending=token_prepending,
    )


def embed_batch(
    module,
    spec: EmbedSpec,
    params,
    batch: dict,
    *,
    deterministic: bool = True,
    dropout_rng: Optional[jax.Array] = None,
) -> jax.Array:
    """``batch`` (``input_ids``, ``attention_mask``, optional ``token_type_ids``, [B, L],
    optional ``prompt_length`` [B]) -> [B, D] float32 pooled rows as ``spec`` says."""
    mask = jnp.asarray(batch["attention_mask"])
    out = apply_module(
        module,
        params,
        batch["input_ids"],
        mask,
        batch.get("token_type_ids"),
        deterministic=deterministic,
        dropout_rng=dropout_rng,
        output_hidden_states=spec.pooling == "last4_mean",
        output_layer=spec.output_layer,
        token_prepending=spec.token_prepending,
    )
    prompt_lengths = None if spec.include_prompt else batch.get("prompt_length")
    z = pool(out, mask, spec.pooling, prompt_lengths=prompt_lengths)
    return l2_normalize(z) if spec.normalize else z
