r"""Group whitening and WhitenedCSE's shuffled group whitening (SGW).

Channels are split into ``num_groups`` contiguous groups of ``c = D / G``;
each group is whitened over the batch with its own ``c × c`` matrix. All
``G`` decompositions run as ONE batched float32 call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import (
    HIGHEST,
    as_float32,
    check_ndim,
    check_positive_int,
    explicit_replicated_sharding,
)
from jaxembed.losses.whitening_matrices import METHODS, whitening_matrix

__all__ = ["group_whitening", "shuffled_group_whitening", "group_covariance"]


def _split_groups(x, num_groups):
    b, d = x.shape
    g = check_positive_int(num_groups, "num_groups")
    if d % g:
        raise ValueError(f"x has shape {tuple(x.shape)}: its {d} channels do not split into num_groups={g} equal groups")
    return x.reshape(b, g, d // g)


def _batch_sum(x, axis_name):
    s = jnp.sum(x, axis=0)
    return s if axis_name is None else jax.lax.psum(s, axis_name)


def group_covariance(xg, *, axis_name=None):
    """Centred inputs and biased covariances of grouped rows.

    Args:
      xg: [B, G, c] float32.
      axis_name: batch split over this mapped axis: sums are ``psum``-ed so the
        mean and covariance are those of the global batch.

    Returns:
      ``(xc, cov)``: ``xc`` [B, G, c] centred over the (global) batch and
      ``cov`` [G, c, c] ``= xcᵀ xc / B`` (divided by B, not B - 1).
    """
    n = _batch_sum(jnp.ones((xg.shape[0],), jnp.float32), axis_name)
    xc = xg - _batch_sum(xg, axis_name) / n
    replicated = explicit_replicated_sharding(xc)
    extra = {} if replicated is None else {"out_sharding": replicated}
    cov = jnp.einsum("bgi,bgj->gij", xc, xc, precision=HIGHEST, **extra)
    if axis_name is not None:
        cov = jax.lax.psum(cov, axis_name)
    cov = cov / n
    return xc, cov


def group_whitening(
    x,
    *,
    num_groups,
    eps=0.0,
    method: str = "eigh",
    stop_gradient: bool = True,
    iterations: int = 5,
    axis_name=None,
):
    r"""Whiten each contiguous channel group of ``x`` over the batch.

    Args:
      x: [B, D] any float dtype; ``D % num_groups == 0``.
      num_groups: ``G``; group size ``c = D / G`` (WhitenedCSE: 128 groups of 6).
      eps: ``>= 0`` added to the eigenvalues (diagonal). ``0`` is the official
        setting; see :mod:`jaxembed.losses.whitening_matrices` for what
        rank-deficient groups give then (inf/NaN for eigh, by design).
      method: ``"eigh"`` (ZCA, exact), ``"cholesky"`` (exact whitening, but a
        rotated one, not ZCA) or ``"newton_schulz"`` (approximate, matmuls only).
      stop_gradient: treat ``W`` as a constant (the official code detaches the
        covariance): gradients flow through the centring and ``X_c W`` only.
        ``False`` also differentiates ``W(Σ)``; for eigh this uses a custom
        Daleckii-Krein JVP that is finite for repeated eigenvalues but scales
        like ``(λ + eps)^{-3/2}``, so it is large/unstable on near-singular
        groups (small batches, ``eps = 0``).
      iterations: Newton-Schulz steps (``method="newton_schulz"`` only).
      axis_name: inside ``shard_map`` with the batch split over this axis:
        centre and whiten with the global-batch statistics (``psum``).

    Returns:
      [B, D] float32: per group ``g``, ``X_c^{(g)} W_g`` with
      ``X_c = X - mean_batch(X)``, ``Σ_g = X_c^{(g)ᵀ} X_c^{(g)} / B`` and, for eigh,
      ``W_g = U diag((λ + eps)^{-1/2}) Uᵀ``. The output of each group has
      identity covariance (``B > c``, ``eps = 0``).

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (64, 12))
      >>> z = group_whitening(x, num_groups=2)
      >>> bool(jnp.allclose(z[:, :6].T @ z[:, :6] / 64, jnp.eye(6), atol=1e-4))
      True

    References:
      Huang et al. 2018, "Decorrelated Batch Normalization" (arXiv 1804.08450);
      Zhuo et al. 2023, "WhitenedCSE" (ACL 2023, arXiv 2305.17746).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    x = as_float32(x, "x")
    check_ndim(x, 2, "x", "[B, D]")
    xg = _split_groups(x, num_groups)
    xc, cov = group_covariance(xg, axis_name=axis_name)
    if stop_gradient:
        cov = jax.lax.stop_gradient(cov)
    w = whitening_matrix(cov, eps=eps, method=method, iterations=iterations)
    out = jnp.einsum("bgi,gij->bgj", xc, w, precision=HIGHEST)
    return out.reshape(x.shape)


def shuffled_group_whitening(
    x,
    key,
    *,
    num_groups,
    eps=0.0,
    method: str = "eigh",
    stop_gradient: bool = True,
    iterations: int = 5,
    axis_name=None,
):
    r"""Shuffled group whitening (SGW): whiten a random channel grouping.

    ``perm = jax.random.permutation(key, D)``; ``z = group_whitening(x[:, perm])``;
    returns ``z[:, argsort(perm)]`` so channel ``j`` of the output belongs to
    channel ``j`` of the input. Arguments as :func:`group_whitening`; ``key`` is
    a PRNG key (under ``shard_map`` it must be the same on every device).

    Returns:
      [B, D] float32.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (32, 12))
      >>> shuffled_group_whitening(x, jax.random.key(1), num_groups=4).shape
      (32, 12)

    References:
      Zhuo et al. 2023, "WhitenedCSE", Sec. 3 (shuffled group whitening).
    """
    x = as_float32(x, "x")
    check_ndim(x, 2, "x", "[B, D]")
    perm = jax.random.permutation(key, x.shape[-1])
    z = group_whitening(
        x[:, perm],
        num_groups=num_groups,
        eps=eps,
        method=method,
        stop_gradient=stop_gradient,
        iterations=iterations,
        axis_name=axis_name,
    )
    return z[:, jnp.argsort(perm)]
