r"""Group whitening and WhitenedCSE's shuffled group whitening (SGW).

Channels are split into ``num_groups`` contiguous groups of ``c = D / G``;
each group is whitened over the batch with its own ``c × c`` matrix. All
``G`` decompositions run as ONE batched float32 call (on CPU, a loop of
one-matrix LAPACK calls: see :mod:`jaxembed.losses.whitening_matrices`).
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import (
    HIGHEST,
    as_float32,
    check_ndim,
    check_positive_int,
    explicit_replicated_sharding,
)
from jaxembed.losses.whitening_matrices import METHODS, whitening_matrix

__all__ = ["group_whitening", "shuffled_group_whitening", "group_covariance"]


def _check_groups(x, num_groups) -> int:
    d = x.shape[-1]
    g = check_positive_int(num_groups, "num_groups")
    if d % g:
        raise ValueError(
            f"x has shape {tuple(x.shape)}: its {d} channels do not split "
            f"into num_groups={g} equal groups"
        )
    return g


def _batch_sum(x, axis, axis_name):
    s = jnp.sum(x, axis=axis, keepdims=True)
    return s if axis_name is None else jax.lax.psum(s, axis_name)


def group_covariance(xt: ArrayLike, *, axis_name: Hashable | None = None) -> jax.Array:
    """Centred inputs and biased covariances of channel groups, channels first.

    Args:
      xt: [G, c, B] float32 (group, channel within group, batch row). This
        layout makes both products plain batched matmuls (``A Aᵀ``, ``Wᵀ A``).
      axis_name: batch split over this mapped axis: sums are ``psum``-ed so the
        mean and covariance are those of the global batch.

    Returns:
      ``(xc, cov)``: ``xc`` [G, c, B] centred over the (global) batch and
      ``cov`` [G, c, c] ``= xc xcᵀ / B`` (divided by B, not B - 1).
    """
    n = _batch_sum(jnp.ones((xt.shape[-1],), jnp.float32), 0, axis_name)[0]
    xc = xt - _batch_sum(xt, -1, axis_name) / n
    replicated = explicit_replicated_sharding(xc)
    extra = {} if replicated is None else {"out_sharding": replicated}
    cov = jnp.einsum("gib,gjb->gij", xc, xc, precision=HIGHEST, **extra)
    if axis_name is not None:
        cov = jax.lax.psum(cov, axis_name)
    return xc, cov / n


def _whiten_channels_first(xt, *, num_groups, eps, method, stop_gradient, iterations, axis_name):
    """[D, B] -> [D, B]: the whole algorithm on the transposed batch."""
    d, b = xt.shape
    xc, cov = group_covariance(xt.reshape(num_groups, d // num_groups, b), axis_name=axis_name)
    if stop_gradient:
        cov = jax.lax.stop_gradient(cov)
    w = whitening_matrix(cov, eps=eps, method=method, iterations=iterations)
    return jnp.einsum("gij,gib->gjb", w, xc, precision=HIGHEST).reshape(d, b)


@jax.custom_vjp
def _take_rows(x, index, inverse):
    """``x[index]`` for a permutation ``index``; its VJP is the gather ``g[inverse]``."""
    return x[index]


def _take_rows_fwd(x, index, inverse):
    return x[index], (index, inverse)


def _take_rows_bwd(res, g):
    index, inverse = res
    return g[inverse], None, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def group_whitening(
    x: ArrayLike,
    *,
    num_groups: int,
    eps: float = 0.0,
    method: str = "eigh",
    stop_gradient: bool = True,
    iterations: int = 5,
    axis_name: Hashable | None = None,
) -> jax.Array:
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
    g = _check_groups(x, num_groups)
    out = _whiten_channels_first(
        x.T,
        num_groups=g,
        eps=eps,
        method=method,
        stop_gradient=stop_gradient,
        iterations=iterations,
        axis_name=axis_name,
    )
    return out.T


def shuffled_group_whitening(
    x: ArrayLike,
    key: jax.Array,
    *,
    num_groups: int,
    eps: float = 0.0,
    method: str = "eigh",
    stop_gradient: bool = True,
    iterations: int = 5,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""Shuffled group whitening (SGW): whiten a random channel grouping.

    ``perm = jax.random.permutation(key, D)``; ``z = group_whitening(x[:, perm])``;
    returns ``z[:, argsort(perm)]`` (the inverse permutation, built by a
    scatter) so channel ``j`` of the output belongs to
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    x = as_float32(x, "x")
    check_ndim(x, 2, "x", "[B, D]")
    g = _check_groups(x, num_groups)
    perm = jax.random.permutation(key, x.shape[-1])
    inverse = (
        jnp.zeros_like(perm)
        .at[perm]
        .set(jnp.arange(perm.shape[0], dtype=perm.dtype), unique_indices=True)
    )
    out = _whiten_channels_first(
        _take_rows(x.T, perm, inverse),
        num_groups=g,
        eps=eps,
        method=method,
        stop_gradient=stop_gradient,
        iterations=iterations,
        axis_name=axis_name,
    )
    return _take_rows(out, inverse, perm).T
