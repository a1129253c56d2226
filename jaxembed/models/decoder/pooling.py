"""Pooling and position helpers for decoder embedders, correct under left and right padding.

``mask`` [B, L] has 1 on real tokens (contiguous per row, padded on either side),
``h`` [B, L, H]:

* ``last_token``   ``h[b, last(b)]``, ``last(b)`` the index of the row's last real token
  (``L - 1`` under left padding); an all-pad row gives zeros (sentence-transformers'
  ``lasttoken``).
* ``mean``         masked mean over real tokens, optionally without the first
  ``prompt_lengths[b]`` real tokens of each row (an instruction prefix), as
  sentence-transformers' ``include_prompt=False``; float32 sums, denominator >= 1e-9.
* ``position_ids_from_mask`` ``cumsum(mask) - 1`` with pads set to 1 (transformers'
  ``generate``): positions that do not depend on the padding side. The model's default,
  like a transformers forward without ``position_ids`` (and sentence-transformers), is
  ``0..L-1`` whatever the padding.

Example::

    z = last_token(out.last_hidden_state, mask)                  # Qwen3-Embedding
    z = mean(out.last_hidden_state, mask, prompt_lengths=n_instr) # LLM2Vec-style

Reference: ``sentence_transformers/sentence_transformer/modules/pooling.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.models.pooling import masked_mean


def _check(h: jax.Array, mask: jax.Array) -> None:
    if h.ndim != 3 or h.shape[:2] != mask.shape:
        raise ValueError(f"hidden states {h.shape} and mask {mask.shape} disagree on [B, L]")


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
    """Zero the first ``prompt_lengths`` (int or [B]) real tokens of every row of ``mask``."""
    rank = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # rank among the row's real tokens
    p = jnp.asarray(prompt_lengths, jnp.int32)
    if p.ndim == 1 and p.shape[0] != mask.shape[0]:
        raise ValueError(f"prompt_lengths has {p.shape[0]} entries for {mask.shape[0]} rows")
    if p.ndim > 1:
        raise ValueError(f"prompt_lengths must be an int or [B], got shape {p.shape}")
    p = jnp.broadcast_to(p, mask.shape[:1])[:, None]
    return jnp.where(rank >= p, mask, jnp.zeros_like(mask))


def mean(h: jax.Array, mask: jax.Array, *, prompt_lengths=None) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]`` float32 masked mean (prompt tokens optionally left out)."""
    _check(h, mask)
    if prompt_lengths is not None:
        mask = exclude_prompt(mask, prompt_lengths)
    return masked_mean(h, mask)


def position_ids_from_mask(mask: jax.Array) -> jax.Array:
    """[B, L] -> [B, L] int32 ``cumsum(mask) - 1`` on real tokens, 1 on pads."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    return jnp.where(mask.astype(bool), pos, 1)
