"""Sentence pooling over encoder outputs (L2 normalisation is
:func:`jaxembed.losses.l2_normalize`, shared with the losses).

Methods (``mask`` [B, L] with 1 on real tokens, ``h`` [B, L, H]):

* ``cls``               HF ``pooler_output`` (dense+tanh over [CLS]) when the model has a
                        pooler, else the raw [CLS] row ``h[:, 0]``.
* ``cls_before_pooler`` raw last-layer [CLS] row ``h[:, 0]`` (SimCSE evaluation).
* ``mean``              ``sum_t mask_t h_t / max(sum_t mask_t, 1e-9)`` (sentence-transformers).
* ``max``               ``max_t`` over real tokens (pad rows set to -1e9 first, as ST).
* ``last4_mean``        DSE ``concat_top_mean``: the last four hidden states concatenated
                        on features, ``[h_{L-3} | h_{L-2} | h_{L-1} | h_L]`` -> [B, L, 4H],
                        then the masked mean over real tokens *excluding* [CLS] (position 0).
                        Needs ``output_hidden_states=True``.

All results are float32 (pooling sums run in float32 even for bf16 activations).

Example::

    out = enc.apply(params, ids, mask, output_hidden_states=True)
    z = pool(out, mask, "last4_mean")      # [B, 4H]

References: Reimers & Gurevych 2019 (sentence-transformers pooling); Gao et al.
2021 (SimCSE ``cls_before_pooler``); Barkan et al. 2020 (DSE, arXiv 1908.05161).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLING_METHODS = ("cls", "cls_before_pooler", "mean", "max", "last4_mean")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]``: mean over positions where ``mask`` is 1 (float32)."""
    if x.shape[:2] != mask.shape:
        raise ValueError(f"hidden states {x.shape} and mask {mask.shape} disagree on [B, L]")
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]``: max over positions where ``mask`` is 1 (float32)."""
    if x.shape[:2] != mask.shape:
        raise ValueError(f"hidden states {x.shape} and mask {mask.shape} disagree on [B, L]")
    x = jnp.where(mask[..., None].astype(bool), x.astype(jnp.float32), -1e9)
    return jnp.max(x, axis=1)


def pool(outputs, attention_mask: jax.Array, method: str) -> jax.Array:
    """Pool an ``EncoderOutput`` to ``[B, H']`` float32 (``H' = 4H`` for ``last4_mean``)."""
    h = outputs.last_hidden_state
    if method == "cls":
        pooled = outputs.pooler_output if outputs.pooler_output is not None else h[:, 0]
        return pooled.astype(jnp.float32)
    if method == "cls_before_pooler":
        return h[:, 0].astype(jnp.float32)
    if method == "mean":
        return masked_mean(h, attention_mask)
    if method == "max":
        return masked_max(h, attention_mask)
    if method == "last4_mean":
        hs = outputs.hidden_states
        if hs is None or len(hs) < 5:
            raise ValueError("last4_mean needs output_hidden_states=True and at least 4 layers")
        top = jnp.concatenate([x.astype(jnp.float32) for x in hs[-4:]], axis=-1)
        no_cls = attention_mask.at[:, 0].set(0)
        return masked_mean(top, no_cls)
    raise ValueError(f"unknown pooling {method!r}; choose from {POOLING_METHODS}")
