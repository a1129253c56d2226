"""Sentence pooling over encoder and decoder outputs (L2 normalisation is
:func:`jaxembed.losses.l2_normalize`, shared with the losses).

Methods (``mask`` [B, L] with 1 on real tokens, contiguous per row and padded on either
side; ``h`` [B, L, H]):

* ``cls``               HF ``pooler_output`` (dense+tanh over [CLS]) when the model has a
                        pooler, else the raw [CLS] row ``h[:, 0]``.
* ``cls_before_pooler`` raw last-layer [CLS] row ``h[:, 0]`` (SimCSE evaluation).
* ``mean``              ``sum_t mask_t h_t / max(sum_t mask_t, 1e-9)`` (sentence-transformers).
* ``max``               ``max_t`` over real tokens (pad rows set to -1e9 first, as ST).
* ``last4_mean``        DSE ``concat_top_mean``: the last four hidden states concatenated
                        on features, ``[h_{L-3} | h_{L-2} | h_{L-1} | h_L]`` -> [B, L, 4H],
                        then the masked mean over real tokens *excluding* [CLS] (position 0).
                        Needs ``output_hidden_states=True``.
* ``last_token``        ``h[b, last(b)]``, ``last(b)`` the index of row ``b``'s last real token
                        (``L - 1`` under left padding); an all-pad row gives zeros (as
                        sentence-transformers' ``lasttoken``). Decoder embedders
                        (Qwen3-Embedding, PromptEOL, Token Prepending) read this token.

``prompt_lengths`` (int or [B]) leaves the first ``prompt_lengths[b]`` real tokens of each
row out of ``mean``, ``max`` and ``last4_mean`` -- sentence-transformers'
``include_prompt=False`` (which counts them the same way under left padding:
sentence-transformers issue #3598). It cannot change ``last_token``.

All results are float32 (pooling sums run in float32 even for bf16 activations).

Example::

    out = enc.apply(params, ids, mask, output_hidden_states=True)
    z = pool(out, mask, "last4_mean")                        # [B, 4H]
    z = pool(out, mask, "mean", prompt_lengths=[3, 3])       # an instruction left out

References: Reimers & Gurevych 2019 (sentence-transformers pooling); Gao et al.
2021 (SimCSE ``cls_before_pooler``); Barkan et al. 2020 (DSE, arXiv 1908.05161);
``sentence_transformers/sentence_transformer/modules/pooling.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLING_METHODS = ("cls", "cls_before_pooler", "mean", "max", "last4_mean", "last_token")


def _check(x: jax.Array, mask: jax.Array) -> None:
    if x.ndim != 3 or x.shape[:2] != mask.shape:
        raise ValueError(f"hidden states {x.shape} and mask {mask.shape} disagree on [B, L]")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]``: mean over positions where ``mask`` is 1 (float32)."""
    _check(x, mask)
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]``: max over positions where ``mask`` is 1 (float32)."""
    _check(x, mask)
    x = jnp.where(mask[..., None].astype(bool), x.astype(jnp.float32), -1e9)
    return jnp.max(x, axis=1)


def last_token_index(mask: jax.Array) -> jax.Array:
    """[B, L] -> [B] int32: index of each row's last real token (0 for an all-pad row)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, L], got shape {mask.shape}")
    L = mask.shape[1]
    real = mask.astype(bool)
    from_end = jnp.argmax(real[:, ::-1], axis=1)
    return jnp.where(real.any(axis=1), L - 1 - from_end, 0).astype(jnp.int32)


def last_token(h: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]`` float32: the last real token's hidden state."""
    _check(h, mask)
    idx = last_token_index(mask)
    rows = jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]
    keep = jnp.take_along_axis(mask, idx[:, None], axis=1).astype(jnp.float32)
    return rows.astype(jnp.float32) * keep


def exclude_prompt(mask: jax.Array, prompt_lengths) -> jax.Array:
    """Zero the first ``prompt_lengths`` (int or [B]) real tokens of every row of ``mask``
    (counted among the row's real tokens, so left and right padding agree)."""
    rank = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # rank among the row's real tokens
    p = jnp.asarray(prompt_lengths, jnp.int32)
    if p.ndim == 1 and p.shape[0] != mask.shape[0]:
        raise ValueError(f"prompt_lengths has {p.shape[0]} entries for {mask.shape[0]} rows")
    if p.ndim > 1:
        raise ValueError(f"prompt_lengths must be an int or [B], got shape {p.shape}")
    p = jnp.broadcast_to(p, mask.shape[:1])[:, None]
    return jnp.where(rank >= p, mask, jnp.zeros_like(mask))


def pool(outputs, attention_mask: jax.Array, method: str, *, prompt_lengths=None) -> jax.Array:
    """Pool an ``EncoderOutput`` / ``DecoderOutput`` to ``[B, H']`` float32 (``H' = 4H`` for
    ``last4_mean``); ``prompt_lengths`` as in the module docstring."""
    h = outputs.last_hidden_state
    mask = attention_mask
    if prompt_lengths is not None and method in ("mean", "max", "last4_mean"):
        mask = exclude_prompt(attention_mask, prompt_lengths)
    if method == "cls":
        pooled = outputs.pooler_output if outputs.pooler_output is not None else h[:, 0]
        return pooled.astype(jnp.float32)
    if method == "cls_before_pooler":
        return h[:, 0].astype(jnp.float32)
    if method == "mean":
        return masked_mean(h, mask)
    if method == "max":
        return masked_max(h, mask)
    if method == "last_token":
        return last_token(h, attention_mask)
    if method == "last4_mean":
        hs = outputs.hidden_states
        if hs is None or len(hs) < 5:
            raise ValueError("last4_mean needs output_hidden_states=True and at least 4 layers")
        top = jnp.concatenate([x.astype(jnp.float32) for x in hs[-4:]], axis=-1)
        return masked_mean(top, mask.at[:, 0].set(0))
    raise ValueError(f"unknown pooling {method!r}; choose from {POOLING_METHODS}")
