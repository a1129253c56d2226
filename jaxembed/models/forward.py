"""The encoder's forward pass as pure functions of ``(module, params, batch)``.

``Encoder.apply`` / ``Encoder.embed`` and the jitted inference step all call
these, so training and ``encode`` compute the same thing.

    apply_module(module, params, ids, mask, types)   -> EncoderOutput ([B, L, H] states)
    embed_batch(module, pooling, normalize, params, batch) -> [B, D] float32
        = l2_normalize(pool(apply_module(...), mask, pooling))   (normalise if asked)

Example::

    z = embed_batch(enc.module, "mean", True, enc.params, enc.tokenize(texts))   # [N, H]
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxembed.losses.normalize import l2_normalize
from jaxembed.models.pooling import pool


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
):
    """``module.apply`` on ``[B, L]`` int inputs; ``deterministic=False`` (dropout on)
    needs ``dropout_rng``. Returns the module's ``EncoderOutput``."""
    rngs = None
    if not deterministic:
        if dropout_rng is None:
            raise ValueError("deterministic=False needs a dropout_rng")
        rngs = {"dropout": dropout_rng}
    return module.apply(
        {"params": params},
        jnp.asarray(input_ids),
        jnp.asarray(attention_mask),
        None if token_type_ids is None else jnp.asarray(token_type_ids),
        deterministic=deterministic,
        output_hidden_states=output_hidden_states,
        rngs=rngs,
    )


def embed_batch(
    module,
    pooling: str,
    normalize: bool,
    params,
    batch: dict,
    *,
    deterministic: bool = True,
    dropout_rng: Optional[jax.Array] = None,
) -> jax.Array:
    """``batch`` (``input_ids``, ``attention_mask``, optional ``token_type_ids``, [B, L])
    -> [B, D] float32 pooled rows, L2-normalised if ``normalize``."""
    out = apply_module(
        module,
        params,
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("token_type_ids"),
        deterministic=deterministic,
        dropout_rng=dropout_rng,
        output_hidden_states=pooling == "last4_mean",
    )
    z = pool(out, jnp.asarray(batch["attention_mask"]), pooling)
    return l2_normalize(z) if normalize else z
