"""Alignment and uniformity of embeddings (Wang & Isola 2020), as metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import (
    HIGHEST,
    as_float32,
    check_ndim,
    check_positive,
    check_same_shape,
)

__all__ = ["alignment", "uniformity"]


def alignment(x: ArrayLike, y: ArrayLike, *, alpha: float = 2) -> jax.Array:
    r"""Alignment of positive pairs, :math:`\mathbb{E}_i \|x_i - y_i\|_2^{\alpha}` (lower: better).

    Args:
      x: [B, D] embeddings, L2-normalised by the caller (as in the paper).
      y: [B, D] their positives.
      alpha: exponent ``> 0`` (paper: 2).

    Returns:
      scalar float32.

    Example:
      >>> round(float(alignment(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]))), 5)
      2.0

    References:
      Wang & Isola 2020, "Understanding Contrastive Representation Learning
      through Alignment and Uniformity on the Hypersphere" (arXiv 2005.10242).
    """
    check_positive(alpha, "alpha")
    x = as_float32(x, "x")
    check_ndim(x, 2, "x", "[B, D]")
    y = as_float32(y, "y")
    check_same_shape(x, "x", y, "y")
    sq = jnp.sum((x - y) ** 2, axis=-1)
    return jnp.mean(jnp.where(sq > 0, jnp.maximum(sq, 1e-30) ** (0.5 * alpha), 0.0))


def uniformity(x: ArrayLike, *, t: float = 2) -> jax.Array:
    r"""Uniformity, :math:`\log \frac{2}{B(B-1)} \sum_{i<j} e^{-t \|x_i - x_j\|_2^2}`.

    Lower is better.

    Args:
      x: [B, D] L2-normalised embeddings, ``B >= 2``.
      t: ``> 0`` (paper: 2).

    Returns:
      scalar float32, computed as a logsumexp over the ``i < j`` pairs.

    Example:
      >>> float(uniformity(jnp.array([[1.0, 0.0], [-1.0, 0.0]])))
      -8.0

    References:
      Wang & Isola 2020 (arXiv 2005.10242), Eq. 2 / ``lunif``.
    """
    check_positive(t, "t")
    x = as_float32(x, "x")
    check_ndim(x, 2, "x", "[B, D]")
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got x of shape {tuple(x.shape)}")
    sq_norm = jnp.sum(x * x, axis=-1)
    sq_dist = sq_norm[:, None] + sq_norm[None, :] - 2.0 * jnp.dot(x, x.T, precision=HIGHEST)
    sq_dist = jnp.maximum(sq_dist, 0.0)
    upper = jnp.triu(jnp.ones((b, b), bool), k=1)
    logits = jnp.where(upper, -t * sq_dist, -jnp.inf)
    return jax.nn.logsumexp(logits) - jnp.log(b * (b - 1) / 2)
