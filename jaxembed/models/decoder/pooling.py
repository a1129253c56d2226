"""Pooling and position helpers for decoder embedders, correct under left and right padding.

``mask`` [B, L] has 1 on real tokens (contiguous per row, padded on either side),
``h`` [B, L, H]:

* ``last_token``   ``h[b, last(b)]``, ``last(b)`` the index of the row's last real token
  (``L - 1`` under left padding); an all-pad row gives zeros (sentence-transformers'
  ``lasttoken``). The shared implementation in :mod:`jaxembed.models.pooling`.
* ``mean``         masked mean over real tokens, optionally without the first
  ``prompt_lengths[b]`` real tokens of each row (an instruction prefix), as
  sentence-transformers' ``include_prompt=False``; float32 sums, denominator >= 1e-9.
* ``position_ids_from_mask`` ``cumsum(mask) - 1`` with pads set to 1 (transformers'
  ``generate``): positions that do not depend on the padding side, what
  ``Encoder`` feeds a decoder. The model's own default, like a transformers forward without
  ``position_ids`` (and sentence-transformers), is ``0..L-1`` whatever the padding; RoPE
  only sees position differences, so the two agree up to float rounding.

Example::

    z = last_token(out.last_hidden_state, mask)                  # Qwen3-Embedding
    z = mean(out.last_hidden_state, mask, prompt_lengths=n_instr) # LLM2Vec-style

Reference: ``sentence_transformers/sentence_transformer/modules/pooling.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.models.pooling import exclude_prompt, last_token, last_token_index, masked_mean

__all__ = ["exclude_prompt", "last_token", "last_token_index", "mean", "position_ids_from_mask"]


def mean(h: jax.Array, mask: jax.Array, *, prompt_lengths=None) -> jax.Array:
    """``[B, L, H], [B, L] -> [B, H]`` float32 masked mean (prompt tokens optionally left out)."""
    if prompt_lengths is not None:
        mask = exclude_prompt(mask, prompt_lengths)
    return masked_mean(h, mask)


def position_ids_from_mask(mask: jax.Array) -> jax.Array:
    """[B, L] -> [B, L] int32 ``cumsum(mask) - 1`` on real tokens, 1 on pads."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    return jnp.where(mask.astype(bool), pos, 1)
