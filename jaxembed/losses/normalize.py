"""L2 normalisation with a finite gradient everywhere: the one implementation that
the losses, the encoders (``Encoder(normalize=True)``) and user code share.

    l2_normalize(x) = x / max(||x||_2, eps) = x * rsqrt(max(sum x^2, eps^2))

The second form is what is computed. The first, written with ``jnp.linalg.norm``,
has a NaN gradient at a zero row: ``d||x||/dx = x / ||x|| = 0 / 0``, and the
``max`` cannot mask it because ``0 * NaN = NaN``. Squaring first keeps every
derivative finite: at ``x = 0`` the Jacobian is ``I / eps``, which is exactly
what ``torch.nn.functional.normalize`` back-propagates there.

Example::

    >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))      # doctest: +SKIP
    Array([[0.6, 0.8], [0. , 0. ]], dtype=float32)

Reference: ``torch.nn.functional.normalize`` (same values and same ``eps``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import as_float32

__all__ = ["l2_normalize"]


def l2_normalize(x, *, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Rows of ``x`` scaled to unit L2 norm along ``axis``, in float32.

    Args:
      x: float array of any shape, e.g. embeddings ``[B, D]``; any float dtype.
      axis: the axis whose norm becomes 1.
      eps: norms below ``eps`` are replaced by ``eps`` (a zero row stays zero).

    Returns:
      float32 array of ``x``'s shape, ``x / max(||x||, eps)``; its gradient is
      finite everywhere (``I / eps`` at a zero row, as PyTorch).
    """
    x = as_float32(x, "x")
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
