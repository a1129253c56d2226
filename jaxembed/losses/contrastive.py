"""InfoNCE with in-batch (and optionally hard) negatives: SimCSE's objective.

The loss for anchor row ``i`` is the cross-entropy of picking candidate ``i``
among all candidates (every positive of the batch, then every hard negative).
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import (
    HIGHEST,
    as_float32,
    check_choice,
    check_ndim,
    check_positive,
    check_positive_int,
    check_same_shape,
    replicate_explicit,
)
from jaxembed.losses.normalize import l2_normalize

__all__ = ["info_nce"]


def _masked_scores(queries, block, labels):
    """``[M, K]`` scores ``q · c`` of one block of candidates; the row's own positive
    column and padding columns are ``-inf``. ``block = (keys [K, D], column ids, valid)``."""
    keys, cols, valid = block
    keep = valid[None, :] & (cols[None, :] != labels[:, None])
    return jnp.where(keep, jnp.dot(queries, keys.T, precision=HIGHEST), -jnp.inf)


def _fold(carry, scores):
    """One online-logsumexp step: ``carry = (m, s)`` with ``m`` [M] a stop-gradient
    running max and ``s = Σ exp(z_j - m)`` over the columns folded so far. Rows whose
    max is still ``-inf`` (nothing but masked columns) keep ``s = 0``."""
    run_max, run_sum = carry
    new_max = jnp.maximum(run_max, jax.lax.stop_gradient(jnp.max(scores, axis=-1)))
    safe = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    decay = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max - safe, -jnp.inf))
    return new_max, run_sum * decay + jnp.sum(jnp.exp(scores - safe[:, None]), axis=-1)


def _blocks(candidates, chunk):
    """``[N, D]`` -> (keys ``[K, chunk, D]`` zero-padded, column ids, valid mask)."""
    n, d = candidates.shape
    num_blocks = -(-n // chunk)
    total = num_blocks * chunk
    return (
        jnp.pad(candidates, ((0, total - n), (0, 0))).reshape(num_blocks, chunk, d),
        jnp.arange(total).reshape(num_blocks, chunk),
        (jnp.arange(total) < n).reshape(num_blocks, chunk),
    )


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _negatives_logsumexp(queries, candidates, labels, chunk):
    """``[M]``: ``log Σ_{j≠label_i} exp(q_i · c_j)``, streamed over blocks of ``chunk``
    candidates (``-inf`` for a row with no negative). Its VJP re-streams the blocks,
    so neither pass keeps more than one ``[M, chunk]`` block of scores."""
    return _negatives_logsumexp_fwd(queries, candidates, labels, chunk)[0]


def _negatives_logsumexp_fwd(queries, candidates, labels, chunk):
    def step(carry, block):
        return _fold(carry, _masked_scores(queries, block, labels)), None

    row = queries[:, 0]  # *_like keeps the rows' shard_map (varying) type for the carry
    init = (jnp.full_like(row, -jnp.inf), jnp.zeros_like(row))
    (run_max, run_sum), _ = jax.lax.scan(step, init, _blocks(candidates, chunk))
    lse = jnp.where(run_sum > 0, run_max + jnp.log(run_sum), -jnp.inf)
    return lse, (queries, candidates, labels, lse)


def _negatives_logsumexp_bwd(chunk, res, g):
    queries, candidates, labels, lse = res
    finite = jnp.isfinite(lse)
    lse_safe = jnp.where(finite, lse, 0.0)
    g = jnp.where(finite, g, 0.0)

    def step(d_queries, block):
        # w_ij = g_i softmax_ij over the row's negatives (masked columns: exp(-inf) = 0)
        w = g[:, None] * jnp.exp(_masked_scores(queries, block, labels) - lse_safe[:, None])
        d_queries = d_queries + jnp.dot(w, block[0], precision=HIGHEST)
        return d_queries, jnp.dot(w.T, queries, precision=HIGHEST)

    d_queries, d_keys = jax.lax.scan(step, jnp.zeros_like(queries), _blocks(candidates, chunk))
    d_candidates = d_keys.reshape(-1, candidates.shape[1])[: candidates.shape[0]]
    return d_queries, d_candidates, None


_negatives_logsumexp.defvjp(_negatives_logsumexp_fwd, _negatives_logsumexp_bwd)


def _cross_entropy_rows(queries, candidates, positive_logit, labels, *, scale, chunk_size):
    r"""Per-row ``logsumexp_j(scale · q cᵀ)_j - positive_logit``, accurately.

    With ``m`` a stop-gradient max (at least the positive logit ``z⁺``) and
    ``s = Σ_{j≠label} e^{z_j - m}``, the row loss is
    ``(m - z⁺) + log1p(expm1(z⁺ - m) + s)``, which keeps full relative
    precision when the loss is tiny (``m = z⁺``: ``log1p(s)``) instead of
    cancelling ``logsumexp - z⁺``; the expression does not depend on ``m``, so
    stopping its gradient is exact.

    ``chunk_size=None`` folds all candidates as one block of scores (plain
    autodiff). An integer streams over blocks of ``chunk_size`` candidates
    (tail masked) through :func:`_negatives_logsumexp`, whose custom VJP
    recomputes each block in the backward pass: at most one [M, chunk_size]
    block of scores is alive at a time and nothing of size [M, B/chunk_size]
    is saved.
    """
    queries = scale * queries
    if chunk_size is None:
        n = candidates.shape[0]
        scores = _masked_scores(queries, (candidates, jnp.arange(n), jnp.ones((n,), bool)), labels)
        init = (jax.lax.stop_gradient(positive_logit), jnp.zeros_like(positive_logit))
        m, s = _fold(init, scores)
    else:
        chunk = check_positive_int(chunk_size, "chunk_size")
        lse_neg = _negatives_logsumexp(queries, candidates, labels, chunk)
        m = jax.lax.stop_gradient(jnp.maximum(positive_logit, lse_neg))
        s = jnp.exp(lse_neg - m)
    return (m - positive_logit) + jnp.log1p(jnp.expm1(positive_logit - m) + s)


def _gather(x, axis_name):
    if axis_name is None:
        return replicate_explicit(x)
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def info_nce(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike | None = None,
    *,
    temperature: ArrayLike = 0.05,
    similarity: str = "cosine",
    axis_name: Hashable | tuple[Hashable, ...] | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""InfoNCE / NT-Xent with in-batch negatives and optional hard negatives.

    Args:
      anchors: [B, D] any float dtype.
      positives: [B, D]; row ``i`` is the positive of anchor ``i`` and a
        negative of every other anchor.
      negatives: optional [B, D] hard negatives (SimCSE supervised): every
        anchor sees all ``B`` of them as extra negatives.
      temperature: ``tau > 0`` (SimCSE: 0.05). May be a traced scalar.
      similarity: ``"cosine"`` (rows L2-normalised first) or ``"dot"``.
      axis_name: inside ``shard_map`` / ``pmap`` with the batch split over this
        mesh axis (or tuple of axes): positives and negatives are all-gathered
        so every anchor sees the *global* batch, and the local mean is
        ``pmean``-ed, so the value is the global-batch loss on every device.
        Not needed under plain ``jax.jit`` with sharded inputs (XLA inserts the
        collectives itself).
      chunk_size: ``None`` builds the [B, B(+B)] logits at once; an integer
        streams over blocks of ``chunk_size`` candidates with an online
        logsumexp, so the full logits never materialise, forward or backward
        (a custom VJP re-streams the blocks: memory O(B·chunk_size + B·D)).
        Same value and gradient.

    Returns:
      scalar float32: the mean over the (global) batch of

      .. math::
         \ell_i = -\log \frac{e^{s(a_i, p_i)/\tau}}
                  {\sum_j e^{s(a_i, p_j)/\tau} + \sum_j e^{s(a_i, n_j)/\tau}}
               = \operatorname{logsumexp}_j [a_i P^\top | a_i N^\top]_j / \tau - s(a_i, p_i)/\tau,

      the cross-entropy of SimCSE's ``[a·pᵀ | a·nᵀ] / tau`` logits with labels
      ``arange(B)`` (offset by ``axis_index * B_local`` under ``axis_name``).
      The positive logit is taken from the row's own pair and left out of
      the running sum, so a near-zero loss keeps its relative precision
      (``log1p`` of the negatives' mass) instead of cancelling.

    Example:
      >>> a = jax.random.normal(jax.random.key(0), (8, 16))
      >>> p = a + 0.1 * jax.random.normal(jax.random.key(1), (8, 16))
      >>> float(info_nce(a, p)) < float(info_nce(a, jnp.roll(p, 1, axis=0)))
      True

    References:
      van den Oord et al. 2018, "Representation Learning with Contrastive
      Predictive Coding" (arXiv 1807.03748); Gao et al. 2021, "SimCSE"
      (arXiv 2104.08821), Eq. 1 and Eq. 5 (hard negatives, alpha = 1).
    """
    check_choice(similarity, {"cosine", "dot"}, "similarity")
    check_positive(temperature, "temperature")
    a = as_float32(anchors, "anchors")
    check_ndim(a, 2, "anchors", "[B, D]")
    p = as_float32(positives, "positives")
    check_same_shape(a, "anchors", p, "positives")
    n = None
    if negatives is not None:
        n = as_float32(negatives, "negatives")
        check_same_shape(a, "anchors", n, "negatives")
    if similarity == "cosine":
        a, p = l2_normalize(a), l2_normalize(p)
        n = None if n is None else l2_normalize(n)
    scale = 1.0 / jnp.asarray(temperature, jnp.float32)
    local_batch = a.shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
    labels = offset + jnp.arange(local_batch)
    candidates = _gather(p, axis_name)
    if n is not None:
        candidates = jnp.concatenate([candidates, _gather(n, axis_name)], axis=0)
    positive_logit = scale * jnp.sum(a * p, axis=-1)
    rows = _cross_entropy_rows(
        a, candidates, positive_logit, labels, scale=scale, chunk_size=chunk_size
    )
    loss = jnp.mean(rows)
    if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
    return loss
