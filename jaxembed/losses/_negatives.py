r"""The negatives' log-partition of a contrastive loss: whole, or streamed over blocks.

A contrastive row ``i`` sums ``e^{z_ij}`` over the candidates ``j`` that are its
negatives. One *term* of that sum pairs row vectors (queries, or positives for
document–document negatives; already scaled by ``1/tau``) with a set of
candidate keys; :func:`term_logits` gives its ``[M, N]`` logits with the dropped
columns at ``-inf``:

* the row's *own* columns (``owner == label``: its positive, itself among the
  queries, its own documents) are dropped, or shifted by ``own_logit``
  (SimCSE's hard-negative weight);
* false negatives: columns whose logit exceeds the row's ``threshold``, and
  columns whose id equals the row's id;
* padding columns of a streamed block.

:func:`streamed_logsumexp` folds one term block by block with an online
logsumexp; its custom VJP re-streams the blocks, so neither pass holds more than
one ``[M, chunk]`` block of logits. :func:`fold` is the online-logsumexp step
both paths share.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import HIGHEST


class Rows(NamedTuple):
    """The rows of one term: ``vectors`` [M, D] (scaled by ``1/tau``); ``labels`` [M]
    int, each row's global index; ``threshold`` [M] or ``None``: drop columns whose
    logit (before ``own_logit``) exceeds it; ``ids`` [M] int or ``None``: drop columns
    with the row's id."""

    vectors: jax.Array
    labels: jax.Array
    threshold: jax.Array | None = None
    ids: jax.Array | None = None


class Candidates(NamedTuple):
    """The columns of one term: ``keys`` [N, D]; ``owners`` [N] int, the global index
    of the row whose tuple the column belongs to; ``ids`` [N] int or ``None``;
    ``valid`` [N] bool (``False`` for padding)."""

    keys: jax.Array
    owners: jax.Array
    ids: jax.Array | None = None
    valid: jax.Array | None = None


def term_logits(rows: Rows, cands: Candidates, own_logit: float | None) -> jax.Array:
    """``[M, N]`` logits ``rows.vectors · keysᵀ`` with dropped columns at ``-inf``.

    ``own_logit=None`` drops each row's own columns; a float adds it to them.
    """
    logits = jnp.dot(rows.vectors, cands.keys.T, precision=HIGHEST)
    own = cands.owners[None, :] == rows.labels[:, None]
    keep = []
    if cands.valid is not None:
        keep.append(cands.valid[None, :])
    if own_logit is None:
        keep.append(~own)
    if rows.threshold is not None:
        keep.append(logits <= rows.threshold[:, None])
    if rows.ids is not None and cands.ids is not None:
        keep.append(cands.ids[None, :] != rows.ids[:, None])
    if own_logit:
        logits = logits + jnp.where(own, jnp.float32(own_logit), 0.0)
    if not keep:
        return logits
    return jnp.where(functools.reduce(jnp.logical_and, keep), logits, -jnp.inf)


def fold(carry, logits):
    """One online-logsumexp step: ``carry = (m, s)`` with ``m`` [M] a stop-gradient
    running max and ``s = Σ exp(z_j - m)`` over the columns folded so far. Rows whose
    max is still ``-inf`` (nothing but dropped columns) keep ``s = 0``."""
    run_max, run_sum = carry
    new_max = jnp.maximum(run_max, jax.lax.stop_gradient(jnp.max(logits, axis=-1)))
    safe = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    decay = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max - safe, -jnp.inf))
    return new_max, run_sum * decay + jnp.sum(jnp.exp(logits - safe[:, None]), axis=-1)


def _blocks(cands: Candidates, chunk: int) -> Candidates:
    """Candidates with a leading block axis: ``[num_blocks, chunk, ...]``, tail padded
    (``valid=False``)."""
    n = cands.keys.shape[0]
    num_blocks = -(-n // chunk)
    pad = num_blocks * chunk - n

    def split(x, fill):
        if x is None:
            return None
        x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
        return x.reshape((num_blocks, chunk) + x.shape[1:])

    valid = jnp.ones((n,), bool) if cands.valid is None else cands.valid
    return Candidates(
        split(cands.keys, 0), split(cands.owners, -1), split(cands.ids, 0), split(valid, False)
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def streamed_logsumexp(
    rows: Rows, cands: Candidates, own_logit: float | None, chunk: int
) -> jax.Array:
    """``[M]``: ``log Σ_j exp(term_logits_ij)`` streamed over blocks of ``chunk``
    candidates (``-inf`` for a row with no column left). Only ``rows.vectors`` and
    ``cands.keys`` get gradients; the masks are stop-gradient."""
    return _streamed_fwd(rows, cands, own_logit, chunk)[0]


def _streamed_fwd(rows, cands, own_logit, chunk):
    def step(carry, block):
        return fold(carry, term_logits(rows, block, own_logit)), None

    row = rows.vectors[:, 0]  # *_like keeps the rows' shard_map (varying) type for the carry
    init = (jnp.full_like(row, -jnp.inf), jnp.zeros_like(row))
    (run_max, run_sum), _ = jax.lax.scan(step, init, _blocks(cands, chunk))
    lse = jnp.where(run_sum > 0, run_max + jnp.log(jnp.where(run_sum > 0, run_sum, 1.0)), -jnp.inf)
    return lse, (rows, cands, lse)


def _streamed_bwd(own_logit, chunk, res, g):
    rows, cands, lse = res
    finite = jnp.isfinite(lse)
    lse_safe = jnp.where(finite, lse, 0.0)
    g = jnp.where(finite, g, 0.0)

    def step(d_vectors, block):
        # w_ij = g_i softmax_ij over the row's kept columns (dropped ones: exp(-inf) = 0)
        w = g[:, None] * jnp.exp(term_logits(rows, block, own_logit) - lse_safe[:, None])
        d_vectors = d_vectors + jnp.dot(w, block.keys, precision=HIGHEST)
        return d_vectors, jnp.dot(w.T, rows.vectors, precision=HIGHEST)

    blocks = _blocks(cands, chunk)
    d_vectors, d_keys = jax.lax.scan(step, jnp.zeros_like(rows.vectors), blocks)
    n, d = cands.keys.shape
    d_keys = d_keys.reshape(-1, d)[:n]
    return Rows(d_vectors, None, None, None), Candidates(d_keys, None, None, None)


streamed_logsumexp.defvjp(_streamed_fwd, _streamed_bwd)
