"""InfoNCE with in-batch (and optionally hard) negatives: SimCSE's objective.

The loss for anchor row ``i`` is the cross-entropy of picking candidate ``i``
among all candidates (every positive of the batch, then every hard negative).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import (
    HIGHEST,
    as_float32,
    check_choice,
    check_ndim,
    check_positive,
    check_positive_int,
    check_same_shape,
    l2_normalize,
    replicate_explicit,
)

__all__ = ["info_nce"]


def _accumulate(carry, block, *, queries, labels, scale):
    """Online logsumexp over one block of candidates, the positive column left out.

    ``carry = (m, s)`` with ``m`` [M] a stop-gradient running max (initialised
    with the positive logit) and ``s`` [M] ``= sum_{j != label} exp(z_j - m)``.
    """
    run_max, run_sum = carry
    keys, cols, valid = block
    scores = scale * jnp.dot(queries, keys.T, precision=HIGHEST)
    keep = valid[None, :] & (cols[None, :] != labels[:, None])
    scores = jnp.where(keep, scores, -jnp.inf)
    new_max = jnp.maximum(run_max, jax.lax.stop_gradient(jnp.max(scores, axis=-1)))
    run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(
        jnp.exp(scores - new_max[:, None]), axis=-1
    )
    return (new_max, run_sum), None


def _cross_entropy_rows(queries, candidates, positive_logit, labels, *, scale, chunk_size):
    r"""Per-row ``logsumexp_j(scale · q cᵀ)_j - positive_logit``, accurately.

    With ``m`` the running max (at least the positive logit ``z⁺``) and
    ``s = Σ_{j≠label} e^{z_j - m}``, the row loss is
    ``(m - z⁺) + log1p(expm1(z⁺ - m) + s)``, which keeps full relative
    precision when the loss is tiny (``m = z⁺``: ``log1p(s)``) instead of
    cancelling ``logsumexp - z⁺``. ``m`` is stop-gradient, which is exact since
    the expression does not depend on ``m``.

    ``chunk_size=None`` handles all candidates as one block; an integer scans
    over blocks of ``chunk_size`` candidates (tail masked) with the block body
    rematerialised (``jax.checkpoint``), so at most [M, chunk_size] scores are
    alive at once. The scan still saves its running-logsumexp carry ([M]) per
    block for the backward pass: B·B/chunk_size floats in all (measured with
    ``benchmarks/grad_cache.py``), so choose chunk_size ≈ sqrt(B/2).
    """
    n, d = candidates.shape
    step = partial(_accumulate, queries=queries, labels=labels, scale=scale)
    init = (jax.lax.stop_gradient(positive_logit), jnp.zeros_like(positive_logit))
    cols = jnp.arange(n)
    if chunk_size is None:
        (run_max, run_sum), _ = step(init, (candidates, cols, jnp.ones((n,), bool)))
    else:
        chunk = check_positive_int(chunk_size, "chunk_size")
        num_blocks = -(-n // chunk)
        total = num_blocks * chunk
        blocks = (
            jnp.pad(candidates, ((0, total - n), (0, 0))).reshape(num_blocks, chunk, d),
            jnp.arange(total).reshape(num_blocks, chunk),
            (jnp.arange(total) < n).reshape(num_blocks, chunk),
        )
        (run_max, run_sum), _ = jax.lax.scan(jax.checkpoint(step), init, blocks)
    return (run_max - positive_logit) + jnp.log1p(jnp.expm1(positive_logit - run_max) + run_sum)


def _gather(x, axis_name):
    if axis_name is None:
        return replicate_explicit(x)
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def info_nce(
    anchors,
    positives,
    negatives=None,
    *,
    temperature=0.05,
    similarity: str = "cosine",
    axis_name=None,
    chunk_size=None,
):
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
        (blocks are rematerialised; the per-block carries kept for the
        backward pass cost B·B/chunk_size floats). Same value and gradient.

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
